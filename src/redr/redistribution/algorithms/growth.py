"""Growth rules shared by several algorithms: uniformly at random, and at the largest dense gradient.

Ties of the gradient rule: equal ``|grad|`` (e.g. exact zeros from inputs that are always 0) go to the
lower position, ``row * in_features + col``; over all layers to the lower layer index first (exactly the
order of the concatenation of all layers' flattened gradients). Results are exact and independent of
``tile_rows`` (which only bounds memory).
"""
from __future__ import annotations

from typing import Sequence

from redr.redistribution.algorithms.sampled_growth import (DEFAULT_CANDIDATES, GrowthPath, best_over_layers,
                                                           global_counts, grow_sampled, layer_candidates,
                                                           score_candidates)
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
    dense gradient is never held. With the sampled path (:mod:`.sampled_growth`) only candidates are scored.
    """

    def __init__(self, tile_rows: int = DEFAULT_TILE_ROWS, num_batches: int | None = None, growth: str = "auto",
                 candidates: float = DEFAULT_CANDIDATES):
        self.gradients = GradientPass(tile_rows, num_batches)
        self.path = GrowthPath(growth, candidates)

    def options(self) -> dict:
        return {**self.gradients.options(), **self.path.options()}

    def idle_info(self, n_layers: int) -> dict:
        return {"gradient": None}

    def grow(self, ctx: RedistributionContext, counts: Sequence[int]):
        grows = [no_growth(layer.values.device) for layer in ctx.layers]
        sampled = self.path.sampled(ctx.layers)

        def consume(lg):
            if counts[lg.index] == 0:
                return
            if sampled:
                grows[lg.index] = grow_sampled(lg, counts[lg.index], self.path.candidates, ctx.generator)
                return
            sel = StreamingTopK(counts[lg.index], id_limit=lg.in_features * lg.out_features)
            stream_layer_into(sel, lg)
            keys, _ = sel.result(lg.layer.values.device)
            grows[lg.index] = keys_to_positions(keys, lg.in_features)

        return grows, {"gradient": self.gradients.run(ctx, consume).to_dict(), "growth": _path_name(sampled)}

    def grow_global(self, ctx: RedistributionContext, total: int):
        layers = list(ctx.layers)
        if self.path.sampled(layers):
            return self._grow_global_sampled(ctx, layers, total)
        offsets = layer_offsets([layer.in_features * layer.out_features for layer in layers])
        sel = StreamingTopK(total, id_limit=offsets[-1])
        stats = self.gradients.run(ctx, lambda lg: stream_layer_into(sel, lg, id_offset=offsets[lg.index]))
        ids, _ = sel.result(layers[0].values.device)
        grows = [keys_to_positions(keys, layer.in_features) for layer, keys in zip(layers, split_by_layer(ids, offsets))]
        return grows, {"gradient": stats.to_dict(), "candidates_admitted": sel.admitted, "compactions": sel.compactions,
                       "growth": "exact"}

    def _grow_global_sampled(self, ctx: RedistributionContext, layers, total: int):
        """Per-layer candidate sets (in proportion to free positions), one top-``total`` over their scores."""
        counts = global_counts(layers, total, self.path.candidates)
        keys, scores = [None] * len(layers), [None] * len(layers)

        def consume(lg):
            keys[lg.index] = layer_candidates(lg, counts[lg.index], 1.0, ctx.generator)
            scores[lg.index] = score_candidates(lg, keys[lg.index])

        stats = self.gradients.run(ctx, consume)
        grows = best_over_layers(keys, scores, total, layers)
        return grows, {"gradient": stats.to_dict(), "growth": "sampled", "candidates": counts}


def _path_name(sampled: bool) -> str:
    return "sampled" if sampled else "exact"
