"""Gradient growth without a dense gradient: score a seeded candidate set by SDDMM, grow at the best.

The exact path (:mod:`.growth`) streams every layer's whole dense gradient, ``O(batch x out x in)`` work.
The sampled path draws candidates among the inactive positions (:mod:`redr.redistribution.selection.candidates`,
from the context's generator, so resume and data-parallel ranks agree), computes ``dL/dW`` only there,
``sum_n g[n, row] * x[n, col]`` (:meth:`LayerGradient.entries`, chunked like a tile: ``O(batch x
candidates)``), and grows at the largest. Ties: lower position (lower layer first over layers), as on
the exact path; with the candidate set = all inactive positions both paths grow the same positions.

Options (validated here, shared by Redr-Gradient, -Global and -Loss; docs/algorithms-gradient.md):

* ``growth``: ``"exact"``, ``"sampled"`` or ``"auto"`` (default): exact when the largest sparse layer has
  at most :data:`EXACT_MAX_POSITIONS` positions (its dense gradient is a few hundred tiles), else sampled.
* ``candidates``: the candidate count as a multiple of the number of weights to grow (default 8; per
  layer; over all layers for -Global, spread in proportion to free positions; per neuron for -Loss);
  capped at the free positions, so ``math.inf`` means all of them.
"""
from __future__ import annotations

import math

import torch

from redr.redistribution.selection import keys_to_positions, largest_k, layer_offsets, random_inactive_keys, split_by_layer
from redr.redistribution.selection.candidates import candidate_count, global_candidate_counts, inactive_keys_in_rows

#: ``growth="auto"`` takes the exact path when no sparse layer has more positions (``out * in``) than this:
#: 2**26 is an 8192 x 8192 layer, 128 tiles of 512 rows (the paper's nets are far below it).
EXACT_MAX_POSITIONS = 2**26
GROWTH_PATHS = ("auto", "exact", "sampled")
DEFAULT_CANDIDATES = 8.0


class GrowthPath:
    """The ``growth`` and ``candidates`` options and the rule that picks the path."""

    def __init__(self, growth: str = "auto", candidates: float = DEFAULT_CANDIDATES):
        if growth not in GROWTH_PATHS:
            raise ValueError(f"growth must be one of {', '.join(GROWTH_PATHS)}, got {growth!r}")
        if isinstance(candidates, bool) or not isinstance(candidates, (int, float)) or math.isnan(candidates) \
                or candidates < 1:
            raise ValueError(f"candidates must be a number >= 1 (a multiple of the weights to grow; fewer candidates "
                             f"than weights to grow cannot be), got {candidates!r}")
        self.growth, self.candidates = growth, float(candidates)

    def options(self) -> dict:
        return {"growth": self.growth, "candidates": self.candidates}

    def sampled(self, layers) -> bool:
        """Whether this redistribution takes the sampled path."""
        if self.growth != "auto":
            return self.growth == "sampled"
        return max(layer.in_features * layer.out_features for layer in layers) > EXACT_MAX_POSITIONS


def score_candidates(lg, keys: torch.Tensor) -> torch.Tensor:
    """``|dL/dW|`` at the sorted flat keys ``row * in + col`` of a streamed layer gradient (SDDMM)."""
    return lg.entries_at_keys(keys).abs()


def layer_candidates(lg, k: int, multiple: float, generator: torch.Generator) -> torch.Tensor:
    """Sorted keys of ``candidate_count(k)`` inactive positions of the layer, uniformly drawn."""
    n_pos = lg.in_features * lg.out_features
    count = candidate_count(k, multiple, n_pos - lg.layer.nnz)
    return random_inactive_keys(lg.active_keys(), n_pos, count, generator)


def grow_sampled(lg, k: int, multiple: float, generator: torch.Generator) -> torch.Tensor:
    """``(2, k)`` positions: the ``k`` best of the layer's candidates."""
    keys = layer_candidates(lg, k, multiple, generator)
    best = largest_k(score_candidates(lg, keys), k)
    return keys_to_positions(keys[best.long()], lg.in_features)


def global_counts(layers, total: int, multiple: float) -> list[int]:
    """Candidates per layer for a global growth of ``total`` (:func:`global_candidate_counts`)."""
    return global_candidate_counts(total, multiple, [layer.in_features * layer.out_features - layer.nnz
                                                     for layer in layers])


def best_over_layers(keys: list[torch.Tensor], scores: list[torch.Tensor], total: int, layers) -> list[torch.Tensor]:
    """One top-``total`` over all layers' candidates (ties: lower layer, then lower position)."""
    best = largest_k(torch.cat(scores), total).long()
    per = split_by_layer(best, layer_offsets([s.numel() for s in scores]))
    return [keys_to_positions(kk[p], layer.in_features) for kk, p, layer in zip(keys, per, layers)]


def grow_sampled_rows(lg, rows: torch.Tensor, k: torch.Tensor, multiple: float,
                      generator: torch.Generator) -> torch.Tensor | None:
    """``(2, k.sum())`` positions: the ``k[i]`` best of ``ceil(multiple * k[i])`` candidates of row ``rows[i]``
    (ascending distinct rows; ties: lower column). None for no rows."""
    if rows.numel() == 0:
        return None
    free = lg.free_inputs()[rows]
    quota = torch.minimum(free, torch.ceil(k.double() * multiple).long()) if math.isfinite(multiple) else free
    keys = inactive_keys_in_rows(lg.active_keys(), rows, quota, lg.in_features, generator)
    scores = score_candidates(lg, keys)
    order = torch.argsort(-scores, stable=True)  # best first, ties: lower key
    row_of = torch.div(keys, lg.in_features, rounding_mode="floor")
    order = order[torch.sort(row_of[order], stable=True).indices]  # grouped by row, best first in each
    group = torch.searchsorted(rows.to(keys.device).long(), row_of[order])
    rank = torch.arange(order.numel(), device=keys.device) - torch.searchsorted(group, group)
    chosen = torch.sort(keys[order[rank < k.to(keys.device)[group]]]).values
    return keys_to_positions(chosen, lg.in_features)
