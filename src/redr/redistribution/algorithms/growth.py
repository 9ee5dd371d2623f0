"""Growth rules shared by several algorithms: uniformly at random, and at the largest dense gradient.

Ties of the gradient rule: equal ``|grad|`` (e.g. exact zeros from inputs that are always 0) go to the
lower position, ``row * in_features + col``; over all layers to the lower layer index first (exactly the
order of the concatenation of all layers' flattened gradients). Results are exact and independent of
``tile_rows`` (which only bounds memory).
"""
from __future__ import annotations

from typing import Sequence

from redr.redistribution.mechanism import GrowthRule, RedistributionContext, no_growth
from redr.redistribution.selection import (StreamingTopK, keys_to_positions, layer_offsets, random_growth, split_by_layer,
                                           stream_layer_into)
from redr.redistribution.signals import DEFAULT_TILE_ROWS, GradientPass


class RandomGrowth(GrowthRule):
    """Uniformly random inactive positions of each layer (the context's generator, layer by layer in order)."""

    def grow(self, ctx: RedistributionContext, counts: Sequence[int]):
        return [random_growth(layer, k, ctx.generator) for layer, k in zip(ctx.layers, counts)], {}


class GradientGrowth(GrowthRule):
    """The inactive positions of largest ``|dL/dW|``, from one streamed dense-gradient pass.

    Per layer, a layer's dense gradient is streamed tile by tile into an exact running top-``k``. Over all
    layers (:meth:`grow_global`), layers are visited one at a time as the backward reaches them and one
    running top-``K`` of ``(score, layer, position)`` keeps the candidates of all
    (:class:`~redr.redistribution.selection.StreamingTopK`); the tile is dropped, so the whole model's
    dense gradient is never held.
    """

    def __init__(self, tile_rows: int = DEFAULT_TILE_ROWS, num_batches: int | None = None):
        self.gradients = GradientPass(tile_rows, num_batches)

    def options(self) -> dict:
        return self.gradients.options()

    def idle_info(self, n_layers: int) -> dict:
        return {"gradient": None}

    def grow(self, ctx: RedistributionContext, counts: Sequence[int]):
        grows = [no_growth(layer.values.device) for layer in ctx.layers]

        def consume(lg):
            if counts[lg.index] == 0:
                return
            sel = StreamingTopK(counts[lg.index], id_limit=lg.in_features * lg.out_features)
            stream_layer_into(sel, lg)
            keys, _ = sel.result(lg.layer.values.device)
            grows[lg.index] = keys_to_positions(keys, lg.in_features)

        return grows, {"gradient": self.gradients.run(ctx, consume).to_dict()}

    def grow_global(self, ctx: RedistributionContext, total: int):
        layers = list(ctx.layers)
        offsets = layer_offsets([layer.in_features * layer.out_features for layer in layers])
        sel = StreamingTopK(total, id_limit=offsets[-1])
        stats = self.gradients.run(ctx, lambda lg: stream_layer_into(sel, lg, id_offset=offsets[lg.index]))
        ids, _ = sel.result(layers[0].values.device)
        grows = [keys_to_positions(keys, layer.in_features) for layer, keys in zip(layers, split_by_layer(ids, offsets))]
        return grows, {"gradient": stats.to_dict(), "candidates_admitted": sel.admitted, "compactions": sel.compactions}
