"""Deterministic smallest / largest selection: per layer, over all layers, per row.

``torch.topk`` does not specify which of several equal scores it returns; topology choices must be
reproducible (resume, data-parallel ranks), so every selection here breaks ties by the lower index
(over several layers: the earlier layer, then the lower position).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

from redr.redistribution.selection.positions import layer_offsets, split_by_layer
from redr.sparse.index_ops import merge_sorted
from redr.sparse.layout import key_dtype


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


def smallest_per_layer(scores: Iterable[torch.Tensor], counts: Sequence[int]) -> list[torch.Tensor]:
    """:func:`smallest_k` of every layer's scores; ``scores`` may be a generator, and only one layer's scores
    are alive at a time."""
    out = []
    for s, k in zip(scores, counts):
        out.append(smallest_k(s, k))
        del s
    return out


def global_smallest(scores: Sequence[torch.Tensor], k: int, allowance: Sequence[int]):
    """Positions (per layer, ascending) of the ``k`` smallest scores over all layers, taking at most
    ``allowance[l]`` from layer ``l``. Ties: earlier layer, then lower position. Water-filling: a layer
    whose share of the unconstrained choice exceeds its allowance is saturated, the rest re-chosen.
    Returns ``(positions per layer, sorted indices of the saturated layers)``."""
    n = len(scores)
    k = min(int(k), sum(int(a) for a in allowance))
    fixed: dict[int, int] = {}
    while True:
        free = [i for i in range(n) if i not in fixed]
        rest = k - sum(fixed.values())
        chosen = smallest_k(torch.cat([scores[i].reshape(-1) for i in free]), rest) if free else torch.empty(0, dtype=torch.int64)
        per = split_by_layer(chosen, layer_offsets([scores[i].numel() for i in free]))
        over = [i for i, p in zip(free, per) if p.numel() > allowance[i]]
        if not over:
            out: list[torch.Tensor] = [None] * n
            for i, p in zip(free, per):
                out[i] = p
            for i, a in fixed.items():
                out[i] = smallest_k(scores[i].reshape(-1), a)
            return out, sorted(fixed)
        for i in over:
            fixed[i] = int(allowance[i])


def largest_per_row(scores: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(row, col)`` of the ``k[i]`` largest entries of every row ``i`` of ``scores`` (ties: lower column).

    Every ``k[i]`` must be >= 1 and at most the number of entries ``>= 0`` in row ``i``.
    """
    kmax = int(k.max())
    v = torch.topk(scores, kmax, dim=1, sorted=True).values.gather(1, (k - 1).unsqueeze(1))  # k-th largest per row
    chosen = scores > v
    eq = scores == v
    need = k - chosen.sum(1)
    # Rows with more entries equal to their k-th value than places left keep the lowest columns among them;
    # only those rows pay for the running count (a tile-sized int32 temporary otherwise).
    tied = (eq.sum(1) > need).nonzero().squeeze(1)
    if tied.numel():
        sub = eq[tied]
        sub &= torch.cumsum(sub, 1, dtype=torch.int32) <= need[tied].unsqueeze(1)
        eq[tied] = sub
        del sub
    chosen |= eq
    del eq
    return chosen.nonzero(as_tuple=True)



def largest_inactive_per_row(lg, rows: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    """``(2, k.sum())`` (row, col) of the ``k[i]`` largest ``|dL/dW|`` inactive entries of row ``rows[i]`` of a
    streamed layer gradient (:class:`~redr.redistribution.signals.dense_gradient.LayerGradient`), ``tile_rows``
    rows at a time (ties: lower column); None for no rows. Ascending ``rows`` give sorted keys."""
    index_dtype = key_dtype(lg.layer.layout.shape)  # rows and columns fit wherever flat keys do
    picked = []
    for s in range(0, rows.numel(), lg.tile_rows):
        rr, kk = rows[s:s + lg.tile_rows], k[s:s + lg.tile_rows]
        scores = lg.inactive_rows(rr)
        r_idx, c_idx = largest_per_row(scores, kk)
        picked.append(torch.stack([rr[r_idx], c_idx]).to(index_dtype))  # narrow: the plan may be half a layer
        del scores
    return torch.cat(picked, 1) if picked else None
