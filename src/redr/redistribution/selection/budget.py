"""Budgets: how many weights each layer gives and gets.

* :class:`LayerBudget`: every layer gives ``floor(alpha * nnz)`` (its smallest removal scores) and grows
  as many itself; per-layer density stays constant (Redr-Random, -Gradient, -Loss).
* :class:`GlobalGrowthBudget`: every layer gives ``floor(alpha * nnz)``, never going below its floor;
  the removed total grows wherever the growth rule scores best over all layers (Redr-Gradient-Global).
* :class:`GlobalRemovalBudget`: ``floor(alpha * total_nnz)`` weights go where the removal score is
  smallest over all layers (ties: lower layer, then lower position), no layer going below its floor;
  they grow back in proportion to each layer's dense size ``out * in`` (largest remainder; a layer gets
  at most its number of inactive positions) (Redr-Woodfisher, -Woodtaylor).

Collapse guard (:class:`CollapseGuard`, both global budgets): a layer whose weights all look cheap, or
whose gradients stay small, would lose ``alpha`` of its weights at every step and gain too few, until it
disconnects the network. So removal never takes a layer below ``floor_l = min(positions_l,
max(min_weights_per_layer, ceil(min_layer_fraction * fair_l))))`` weights, ``fair_l = total_nnz *
positions_l / total_positions`` being its share at uniform density and ``min_weights_per_layer``
defaulting to the layer's ``out_features`` (on average one weight per neuron). A layer at or below its
floor loses nothing (it can still grow). Under a global removal a layer that the choice would take
more from gives exactly its allowance ``nnz_l - floor_l`` (its smallest scores) and the rest comes from
the other layers, again by smallest score; the total removed stays ``floor(alpha * total_nnz)`` unless
every layer is at its floor.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch

from redr.redistribution.selection.topk import global_smallest, smallest_per_layer
from redr.sparse.layer import SparseLinear


def removal_count(nnz: int, alpha: float) -> int:
    """How many of ``nnz`` active weights a step with fraction ``alpha`` moves: ``floor(alpha * nnz)``."""
    return int(alpha * nnz)


class CollapseGuard:
    """The floors of the collapse guard (module docstring); validates its two options."""

    def __init__(self, min_layer_fraction: float = 0.1, min_weights_per_layer: int | None = None):
        if not 0.0 <= min_layer_fraction <= 1.0:
            raise ValueError(f"min_layer_fraction must be in [0, 1], got {min_layer_fraction!r}")
        if min_weights_per_layer is not None and (int(min_weights_per_layer) != min_weights_per_layer
                                                  or min_weights_per_layer < 0):
            raise ValueError(f"min_weights_per_layer must be a non-negative integer or None, got {min_weights_per_layer!r}")
        self.min_layer_fraction = float(min_layer_fraction)
        self.min_weights_per_layer = None if min_weights_per_layer is None else int(min_weights_per_layer)

    def options(self) -> dict:
        return {"min_layer_fraction": self.min_layer_fraction, "min_weights_per_layer": self.min_weights_per_layer}

    def floors(self, layers: Sequence[SparseLinear]) -> list[int]:
        """The fewest active weights removal may leave in each layer."""
        total_nnz = sum(layer.nnz for layer in layers)
        positions = [layer.in_features * layer.out_features for layer in layers]
        total_pos = sum(positions)
        floors = []
        for layer, pos in zip(layers, positions):
            absolute = layer.out_features if self.min_weights_per_layer is None else self.min_weights_per_layer
            fair = total_nnz * pos / total_pos
            floors.append(min(pos, max(absolute, math.ceil(self.min_layer_fraction * fair - 1e-9))))
        return floors


def collapse_floors(layers: Sequence[SparseLinear], min_layer_fraction: float = 0.1,
                    min_weights_per_layer: int | None = None) -> list[int]:
    """:meth:`CollapseGuard.floors` with these options."""
    return CollapseGuard(min_layer_fraction, min_weights_per_layer).floors(layers)


class LayerBudget:
    """Every layer gives ``floor(alpha * nnz)`` and grows as many itself."""

    def remove(self, scores: Iterable[torch.Tensor], layers: Sequence[SparseLinear], alpha: float):
        return smallest_per_layer(scores, [removal_count(layer.nnz, alpha) for layer in layers]), {}

    def grow_counts(self, layers: Sequence[SparseLinear], removed: Sequence[int]) -> list[int]:
        return list(removed)


class GlobalGrowthBudget:
    """Every layer gives ``floor(alpha * nnz)`` down to its floor; the total grows where the growth scores best."""

    def __init__(self, guard: CollapseGuard):
        self.guard = guard

    def remove(self, scores: Iterable[torch.Tensor], layers: Sequence[SparseLinear], alpha: float):
        floors = self.guard.floors(layers)
        want = [removal_count(layer.nnz, alpha) for layer in layers]
        counts = [min(w, max(0, layer.nnz - f)) for layer, w, f in zip(layers, want, floors)]
        guarded = [i for i, (c, w) in enumerate(zip(counts, want)) if c < w]
        return smallest_per_layer(scores, counts), {"floors": floors, "guarded_layers": guarded}

    def grow_counts(self, layers: Sequence[SparseLinear], removed: Sequence[int]) -> None:
        return None


class GlobalRemovalBudget:
    """``floor(alpha * total_nnz)`` go by smallest score over all layers (none below its floor), regrown in
    proportion to the layers' dense sizes."""

    def __init__(self, guard: CollapseGuard):
        self.guard = guard

    def remove(self, scores: Iterable[torch.Tensor], layers: Sequence[SparseLinear], alpha: float):
        floors = self.guard.floors(layers)
        allowance = [max(0, layer.nnz - f) for layer, f in zip(layers, floors)]
        total = sum(layer.nnz for layer in layers)
        removes, guarded = global_smallest(list(scores), removal_count(total, alpha), allowance)
        return removes, {"floors": floors, "guarded_layers": guarded}

    def grow_counts(self, layers: Sequence[SparseLinear], removed: Sequence[int]) -> list[int]:
        dense = [layer.in_features * layer.out_features for layer in layers]
        return proportional_shares(sum(removed), dense, capacity=[s - layer.nnz for s, layer in zip(dense, layers)])


def proportional_shares(total: int, sizes: list[int], capacity: list[int] | None = None) -> list[int]:
    """Split ``total`` over items in proportion to ``sizes`` (largest remainder, ties to the earlier item).

    With ``capacity``, no item gets more than its capacity; what does not fit is passed on to the
    others in proportion again. The result sums to ``min(total, sum(capacity))``.
    """
    n = len(sizes)
    capacity = list(capacity) if capacity is not None else [total] * n
    shares = [0] * n
    remaining = min(total, sum(capacity))
    while remaining > 0:
        open_items = [i for i in range(n) if shares[i] < capacity[i] and sizes[i] > 0] or \
                     [i for i in range(n) if shares[i] < capacity[i]]
        weight = sum(sizes[i] for i in open_items) or len(open_items)
        exact = {i: remaining * (sizes[i] if sum(sizes[j] for j in open_items) else 1) / weight for i in open_items}
        give = {i: int(exact[i]) for i in open_items}
        left = remaining - sum(give.values())
        for i in sorted(open_items, key=lambda i: (-(exact[i] - give[i]), i))[:left]:
            give[i] += 1
        moved = 0
        for i in open_items:
            g = min(give[i], capacity[i] - shares[i])
            shares[i] += g
            moved += g
        remaining -= moved
    return shares


def water_fill(total: int, capacity: torch.Tensor) -> torch.Tensor:
    """Equal shares of ``total`` over items in priority order, each at most its capacity ("water filling").

    Every item gets ``min(cap, q)`` or ``q + 1``, ``q`` being the largest level at which the shares fit in
    ``total``; the ``+1``s go to the first items with ``cap > q``. So an item with too little room takes
    all it can and passes the rest of its share on to the others, equally: what handing out one at a time,
    round-robin in priority order, gives. Returns int64 shares summing to ``min(total, capacity.sum())``.
    """
    cap = capacity.to(torch.int64)
    total = min(int(total), int(cap.sum()))
    if total <= 0 or cap.numel() == 0:
        return torch.zeros_like(cap)
    lo, hi = 0, int(cap.max())
    while lo < hi:  # largest q with sum(min(cap, q)) <= total
        mid = (lo + hi + 1) // 2
        if int(torch.clamp(cap, max=mid).sum()) <= total:
            lo = mid
        else:
            hi = mid - 1
    shares = torch.clamp(cap, max=lo)
    rest = total - int(shares.sum())
    if rest:
        shares[(cap > lo).nonzero().squeeze(1)[:rest]] += 1
    return shares


def selected_count(out_features: int, fraction: float) -> int:
    """``round(fraction * out_features)`` (halves up), at least 1 and at most ``out_features``."""
    return max(1, min(out_features, int(fraction * out_features + 0.5 + 1e-9)))


def neuron_shares(total: int, capacity_ranked: torch.Tensor, n_selected: int) -> torch.Tensor:
    """Shares for neurons in rank order: water-filled over the first ``n_selected``, extended in rank
    order when those cannot take ``total`` between them. Returns a tensor aligned with ``capacity_ranked``."""
    n_all = capacity_ranked.numel()
    shares = torch.zeros(n_all, dtype=torch.int64, device=capacity_ranked.device)
    n = min(n_selected, n_all)
    cum = torch.cumsum(capacity_ranked.to(torch.int64), 0)
    if n < n_all and int(cum[n - 1]) < total:
        n = min(n_all, int(torch.searchsorted(cum, torch.tensor(total, device=cum.device))) + 1)
    shares[:n] = water_fill(total, capacity_ranked[:n])
    return shares
