"""Deterministic selection primitives shared by the algorithms.

``torch.topk`` does not specify which of several equal scores it returns; topology choices must be
reproducible (resume, data-parallel ranks), so every selection here breaks ties by the lower index.
"""
from __future__ import annotations

import torch

from redr.sparse.index_ops import isin_sorted, merge_sorted


def smallest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` smallest entries of a 1-D tensor (ties: lower index first), ascending index order;
    int32 when they fit (a removal may be half a layer, and the plan holds it until it is applied)."""
    n = scores.numel()
    k = max(0, min(int(k), n))
    dtype = torch.int32 if n < 2**31 - 1 else torch.int64
    if k == 0:
        return torch.empty(0, dtype=dtype, device=scores.device)
    if k == n:
        return torch.arange(n, dtype=dtype, device=scores.device)
    threshold = torch.kthvalue(scores, k).values
    below = (scores < threshold).nonzero().squeeze(1).to(dtype)
    equal = (scores == threshold).nonzero().squeeze(1)[: k - below.numel()].to(dtype)
    return merge_sorted(below, equal)[0]  # both ascending and disjoint


def largest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest entries (ties: lower index first), ascending index order."""
    return smallest_k(-scores, k)


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


def random_inactive_keys(active_keys: torch.Tensor, n_positions: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` distinct positions in ``[0, n_positions)`` drawn uniformly among those not in ``active_keys``.

    ``active_keys`` must be sorted. Sparse layers draw candidates, drop active ones and repeats, and
    subsample a surplus at random (each round leaves a uniform random set of free positions; memory
    O(k), no dense mask); nearly dense layers enumerate the free positions instead. The generator is a
    CPU generator so that every device and every data-parallel rank draws the same. Returns sorted
    int64 keys; fewer than ``k`` only when fewer positions are free.
    """
    device = active_keys.device
    free = n_positions - active_keys.numel()
    k = max(0, min(int(k), free))
    if k == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    active = active_keys.cpu()
    if free < 4 * k or free < n_positions // 4:
        mask = torch.ones(n_positions, dtype=torch.bool)
        mask[active] = False
        candidates = mask.nonzero().squeeze(1)
        pick = torch.randperm(candidates.numel(), generator=generator)[:k]
        return torch.sort(candidates[pick]).values.to(device)
    chosen = torch.empty(0, dtype=torch.int64)
    while chosen.numel() < k:
        need = k - chosen.numel()
        draw = torch.unique(torch.randint(0, n_positions, (need + need // 4 + 16,), generator=generator))
        draw = draw[~isin_sorted(draw, active) & ~isin_sorted(draw, chosen)]
        if draw.numel() > need:
            draw = draw[torch.sort(torch.randperm(draw.numel(), generator=generator)[:need]).values]
        chosen = torch.sort(torch.cat([chosen, draw])).values
    return chosen.to(device)
