"""Candidate positions for sampled gradient growth: seeded draws of inactive positions, never a dense mask.

Sampled growth (:mod:`redr.redistribution.algorithms.growth_path`) scores only a candidate set of inactive
positions and grows at the best of them. The candidates are drawn uniformly among the inactive positions
(of a layer, or of given rows of a layer) from the redistribution's generator, so a resumed run and every
data-parallel rank draw the same ones. Cost ``O(candidates)`` (plus ``O(in_features)`` per row for rows
that are nearly full); :func:`~redr.redistribution.selection.random.random_inactive_keys` does the
whole-layer case.
"""
from __future__ import annotations

import math

import torch

from redr.sparse.index_ops import isin_sorted

#: rejection rounds before the rows still short of candidates enumerate their free inputs
_REJECTION_ROUNDS = 4


def candidate_count(k: int, multiple: float, free: int) -> int:
    """``min(free, ceil(multiple * k))``: how many candidates a growth of ``k`` weights scores."""
    if k <= 0:
        return 0
    return int(min(free, math.ceil(multiple * k))) if math.isfinite(multiple) else int(free)


def global_candidate_counts(total: int, multiple: float, free: list[int]) -> list[int]:
    """Candidates per layer for a global growth of ``total``: ``multiple * total`` spread over the layers in
    proportion to their free positions (each ``ceil``, at most its free count), i.e. a uniform density of
    candidates over the whole net's inactive positions."""
    all_free = sum(free)
    if total <= 0 or all_free == 0:
        return [0] * len(free)
    if not math.isfinite(multiple):
        return list(free)
    return [min(f, math.ceil(multiple * total * f / all_free)) for f in free]


def inactive_keys_in_rows(active_keys: torch.Tensor, rows: torch.Tensor, quota: torch.Tensor, in_features: int,
                          generator: torch.Generator) -> torch.Tensor:
    """Sorted flat keys ``row * in_features + col``: ``quota[i]`` distinct inactive columns of row ``rows[i]``,
    drawn uniformly (``rows`` ascending and distinct; ``quota[i]`` at most the row's free inputs).

    A few rounds of rejection (draw columns, drop active ones and repeats, subsample a row's surplus at
    random); rows still short after that (nearly full rows) enumerate their free inputs, ``O(in_features)``
    each. All draws come from the CPU ``generator``.
    """
    device = active_keys.device
    rows, quota = rows.cpu().long(), quota.cpu().long()
    active = active_keys.cpu().long()
    chosen = torch.empty(0, dtype=torch.int64)
    have = torch.zeros_like(quota)
    for _ in range(_REJECTION_ROUNDS):
        need = quota - have
        if int(need.sum()) == 0:
            break
        draws = need + need // 4 + (need > 0).long() * 2
        r = torch.repeat_interleave(rows, draws)
        keys = torch.unique(r * in_features + torch.randint(0, in_features, (r.numel(),), generator=generator))
        keys = keys[~isin_sorted(keys, active) & ~isin_sorted(keys, chosen)]
        chosen = torch.sort(torch.cat([chosen, _at_most_per_row(keys, rows, need, in_features, generator)])).values
        have = _per_row(chosen, rows, in_features)
    short = (quota - have).nonzero().squeeze(1)
    if short.numel():
        chosen = torch.sort(torch.cat([chosen, _enumerate_rows(active, chosen, rows[short], (quota - have)[short],
                                                               in_features, generator)])).values
    return chosen.to(device)


def _per_row(keys: torch.Tensor, rows: torch.Tensor, in_features: int) -> torch.Tensor:
    """How many of the sorted ``keys`` fall into each of the ascending ``rows``."""
    lo = torch.searchsorted(keys, rows * in_features)
    hi = torch.searchsorted(keys, (rows + 1) * in_features)
    return hi - lo


def _at_most_per_row(keys: torch.Tensor, rows: torch.Tensor, need: torch.Tensor, in_features: int,
                     generator: torch.Generator) -> torch.Tensor:
    """A uniform random subset of the sorted ``keys`` with at most ``need[i]`` in row ``rows[i]``."""
    if keys.numel() == 0:
        return keys
    row_index = torch.searchsorted(rows, keys // in_features)
    priority = torch.randperm(keys.numel(), generator=generator)
    order = torch.argsort(priority)  # a random order ...
    order = order[torch.sort(row_index[order], stable=True).indices]  # ... grouped by row
    group = row_index[order]
    starts = torch.searchsorted(group, group, right=False)
    rank = torch.arange(group.numel()) - starts
    return torch.sort(keys[order[rank < need[group]]]).values


def _enumerate_rows(active: torch.Tensor, chosen: torch.Tensor, rows: torch.Tensor, need: torch.Tensor,
                    in_features: int, generator: torch.Generator) -> torch.Tensor:
    """``need[i]`` of row ``rows[i]``'s inputs that are neither active nor chosen, uniformly, by enumeration."""
    out = []
    for r, n in zip(rows.tolist(), need.tolist()):
        keys = torch.arange(r * in_features, (r + 1) * in_features)
        keys = keys[~isin_sorted(keys, active) & ~isin_sorted(keys, chosen)]
        out.append(keys[torch.randperm(keys.numel(), generator=generator)[:n]])
    return torch.cat(out)
