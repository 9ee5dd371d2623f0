"""Redr-Gradient (section 2.2, after RigL) and Redr-Gradient-Global (section 2.3).

Both remove the ``floor(alpha * nnz)`` smallest-magnitude weights of every layer and grow where the
loss gradient ``|dL/dW|`` is largest among the *inactive* positions; new weights start at 0. The dense
gradient is computed only now, one layer and one row tile at a time (:mod:`.dense_grad`).

Choices shared by both (see docs/algorithms-gradient.md):

* Regrowth: every position active before the step, including those removed in this very step, is
  excluded from growth. RigL lets a just-removed weight regrow; the shared mechanism requires removed
  and grown sets to be disjoint (a removed-then-regrown weight would be a no-op that silently resets
  its value and optimizer state), and with it the number of weights actually moved is the planned one.
* Data: the batches in the context (the trainer passes ``--redistribution-batches``, default 1: RigL
  uses the current minibatch; one batch costs one extra forward and backward, under 1% of an epoch of
  the paper's nets, and the large-gradient positions it finds are the ones the next steps would move
  most). ``num_batches`` caps how many of the given batches are used (None: all).
* Ties: equal ``|grad|`` (e.g. exact zeros from inputs that are always 0) go to the lower position,
  ``row * in_features + col``; globally to the lower layer index first. Results are exact and
  independent of ``tile_rows`` (which only bounds memory).
"""
from __future__ import annotations

import math

import torch

from redr.redistribution.base import RedistributionAlgorithm, RedistributionContext, magnitude_removal, removal_count
from redr.redistribution.dense_grad import DEFAULT_TILE_ROWS, StreamingTopK, stream_layer_gradients, stream_layer_into
from redr.redistribution.plan import LayerPlan, RedistributionPlan, keys_to_positions
from redr.redistribution.select import smallest_k
from redr.sparse.layout import key_dtype


def _check_common(tile_rows: int, num_batches: int | None) -> None:
    if int(tile_rows) != tile_rows or tile_rows < 1:
        raise ValueError(f"tile_rows must be a positive integer, got {tile_rows!r}")
    if num_batches is not None and (int(num_batches) != num_batches or num_batches < 1):
        raise ValueError(f"num_batches must be a positive integer or None, got {num_batches!r}")


class RedrGradient(RedistributionAlgorithm):
    """Per layer: remove ``floor(alpha * nnz)`` by magnitude, grow as many at the largest ``|dL/dW|`` inactive
    positions of the same layer. Per-layer density stays constant (unless a layer has too few free positions).

    Options:
        tile_rows: rows of a layer's dense gradient computed at once; bounds the extra memory per layer
            to about ``tile_rows * in_features`` numbers (default 512).
        num_batches: how many of the context's batches to use (None, the default: all that are given;
            the trainer gives ``--redistribution-batches``, default 1).
    """

    name = "gradient"
    needs_batches = True

    def __init__(self, tile_rows: int = DEFAULT_TILE_ROWS, num_batches: int | None = None):
        _check_common(tile_rows, num_batches)
        self.tile_rows = int(tile_rows)
        self.num_batches = None if num_batches is None else int(num_batches)

    def options(self) -> dict:
        return {"tile_rows": self.tile_rows, "num_batches": self.num_batches}

    def plan(self, ctx: RedistributionContext) -> RedistributionPlan:
        layers = list(ctx.layers)
        removes = [magnitude_removal(layer, ctx.alpha) for layer in layers]
        grows = [torch.empty(2, 0, dtype=torch.int64, device=layer.values.device) for layer in layers]
        if sum(r.numel() for r in removes) == 0:
            return RedistributionPlan([LayerPlan(r, g) for r, g in zip(removes, grows)], {"gradient": None})

        def consume(lg):
            k = removes[lg.index].numel()
            if k == 0:
                return
            layer = lg.layer
            sel = StreamingTopK(k, id_limit=layer.in_features * layer.out_features)
            stream_layer_into(sel, lg, layer.layout.keys(key_dtype(layer.layout.shape)))
            keys, _ = sel.result(layer.values.device)
            grows[lg.index] = keys_to_positions(keys, layer.in_features)

        stats = stream_layer_gradients(ctx, consume, self.num_batches, self.tile_rows)
        return RedistributionPlan([LayerPlan(r, g) for r, g in zip(removes, grows)], {"gradient": stats.to_dict()})


class RedrGradientGlobal(RedistributionAlgorithm):
    """Remove ``floor(alpha * nnz)`` by magnitude in every layer, then grow the total removed count at the
    globally largest ``|dL/dW|`` inactive positions over all sparse layers. Per-layer nnz changes; the total
    stays constant.

    Streaming (the paper's section 2.3): layers are visited one at a time as the backward reaches them,
    each layer's dense gradient tile by tile; a running top-``K`` of ``(score, layer, position)`` keeps the
    candidates (:class:`~redr.redistribution.dense_grad.StreamingTopK`), the tile is dropped. The whole
    model's dense gradient is never held. Ties go to the lower layer index, then the lower position
    (exactly the order of the concatenation of all layers' flattened gradients).

    Collapse guard: a layer whose gradients stay small would lose ``alpha`` of its weights at every step
    and gain none, until it disconnects the network. So removal never takes a layer below
    ``floor_l = max(min_weights_per_layer, ceil(min_layer_fraction * fair_l))`` weights, where
    ``fair_l = total_nnz * positions_l / total_positions`` is the layer's share at uniform density and
    ``min_weights_per_layer`` defaults to the layer's ``out_features`` (on average one weight per
    neuron). A layer at or below its floor loses nothing (it can still grow); growth is unaffected.

    Options:
        tile_rows, num_batches: as for :class:`RedrGradient`.
        min_layer_fraction: fraction of the uniform-density share a layer always keeps (default 0.1).
        min_weights_per_layer: absolute floor; None (default) means the layer's ``out_features``.
    """

    name = "gradient-global"
    needs_batches = True

    def __init__(self, tile_rows: int = DEFAULT_TILE_ROWS, num_batches: int | None = None,
                 min_layer_fraction: float = 0.1, min_weights_per_layer: int | None = None):
        _check_common(tile_rows, num_batches)
        if not 0.0 <= min_layer_fraction <= 1.0:
            raise ValueError(f"min_layer_fraction must be in [0, 1], got {min_layer_fraction!r}")
        if min_weights_per_layer is not None and (int(min_weights_per_layer) != min_weights_per_layer
                                                  or min_weights_per_layer < 0):
            raise ValueError(f"min_weights_per_layer must be a non-negative integer or None, got {min_weights_per_layer!r}")
        self.tile_rows = int(tile_rows)
        self.num_batches = None if num_batches is None else int(num_batches)
        self.min_layer_fraction = float(min_layer_fraction)
        self.min_weights_per_layer = None if min_weights_per_layer is None else int(min_weights_per_layer)

    def options(self) -> dict:
        return {"tile_rows": self.tile_rows, "num_batches": self.num_batches,
                "min_layer_fraction": self.min_layer_fraction, "min_weights_per_layer": self.min_weights_per_layer}

    def floors(self, layers) -> list[int]:
        """The collapse guard: the fewest weights each layer keeps after removal."""
        total_nnz = sum(layer.nnz for layer in layers)
        positions = [layer.in_features * layer.out_features for layer in layers]
        total_pos = sum(positions)
        floors = []
        for layer, pos in zip(layers, positions):
            absolute = layer.out_features if self.min_weights_per_layer is None else self.min_weights_per_layer
            fair = total_nnz * pos / total_pos
            floors.append(min(pos, max(absolute, math.ceil(self.min_layer_fraction * fair - 1e-9))))
        return floors

    def plan(self, ctx: RedistributionContext) -> RedistributionPlan:
        layers = list(ctx.layers)
        floors = self.floors(layers)
        removes, guarded = [], []
        for i, (layer, floor) in enumerate(zip(layers, floors)):
            want = removal_count(layer.nnz, ctx.alpha)
            r = min(want, max(0, layer.nnz - floor))
            if r < want:
                guarded.append(i)
            removes.append(smallest_k(layer.values.detach().abs(), r))
        total = sum(r.numel() for r in removes)
        info = {"floors": floors, "guarded_layers": guarded, "gradient": None}
        grows = [torch.empty(2, 0, dtype=torch.int64, device=layer.values.device) for layer in layers]
        if total == 0:
            return RedistributionPlan([LayerPlan(r, g) for r, g in zip(removes, grows)], info)

        offsets = [0]
        for layer in layers:
            offsets.append(offsets[-1] + layer.in_features * layer.out_features)
        sel = StreamingTopK(total, id_limit=offsets[-1])

        def consume(lg):
            layout = lg.layer.layout
            stream_layer_into(sel, lg, layout.keys(key_dtype(layout.shape)), id_offset=offsets[lg.index])

        stats = stream_layer_gradients(ctx, consume, self.num_batches, self.tile_rows)
        device = layers[0].values.device
        ids, _ = sel.result(device)
        bounds = torch.tensor(offsets, dtype=ids.dtype, device=ids.device)
        which = torch.searchsorted(bounds, ids, right=True) - 1
        for i, layer in enumerate(layers):
            keys = ids[which == i] - offsets[i]
            grows[i] = keys_to_positions(keys, layer.in_features).to(layer.values.device)
        info["gradient"] = stats.to_dict()
        info["candidates_admitted"] = sel.admitted
        info["compactions"] = sel.compactions
        return RedistributionPlan([LayerPlan(r, g) for r, g in zip(removes, grows)], info)
