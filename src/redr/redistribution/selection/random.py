"""Uniformly random growth among a layer's inactive positions, without a dense mask for sparse layers."""
from __future__ import annotations

import torch

from redr.redistribution.selection.positions import keys_to_positions
from redr.sparse.index_ops import isin_sorted
from redr.sparse.layer import SparseLinear
from redr.sparse.layout import key_dtype


#: From this many positions on (a layer at most half full), :func:`random_inactive_keys` draws sorted keys directly
#: (:func:`sorted_uniform_keys`, ``O(k)``); below it, rejection rounds of sorted ``randint`` draws (the older path,
#: kept so that every smaller net draws what it always drew). Measured at a 1M x 1M layer (133M candidates): the
#: older path spent ~4x longer in sort, unique and randperm than the direct one takes in all.
LARGE_DRAW = 2**22
#: Sorted draws are made in blocks of key space of about this many draws each (bounds the float64 temporaries).
_BLOCK_DRAWS = 2**22


def sorted_uniform_keys(lo: int, hi: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` independent uniform draws from ``[lo, hi)``, returned sorted (repeats possible), in ``O(count)``:
    the order statistics of uniforms are normalised cumulative sums of exponential spacings."""
    if count <= 0:
        return torch.empty(0, dtype=torch.int64)
    s = torch.empty(count + 1, dtype=torch.float64).exponential_(generator=generator)
    torch.cumsum(s, 0, out=s)
    keys = (s[:-1] * ((hi - lo) / float(s[-1]))).to(torch.int64)
    return keys.clamp_(0, hi - lo - 1).add_(lo)


def _block_counts(count: int, blocks: int, generator: torch.Generator) -> list[int]:
    """Multinomial split of ``count`` draws over ``blocks`` equal blocks (sequential binomials)."""
    out, left = [], count
    for b in range(blocks - 1):
        c = int(torch.binomial(torch.tensor([float(left)], dtype=torch.float64),
                               torch.tensor([1.0 / (blocks - b)], dtype=torch.float64), generator=generator))
        out.append(c)
        left -= c
    return out + [left]


def _free_sorted_draws(active: torch.Tensor, exclude: torch.Tensor, n_positions: int, count: int,
                       generator: torch.Generator) -> torch.Tensor:
    """Distinct sorted keys from ``count`` uniform draws over ``[0, n_positions)``, active and excluded ones dropped."""
    blocks = max(1, -(-count // _BLOCK_DRAWS))
    edges = [n_positions * b // blocks for b in range(blocks + 1)]
    out = []
    for b, c in enumerate(_block_counts(count, blocks, generator)):
        keys = torch.unique_consecutive(sorted_uniform_keys(edges[b], edges[b + 1], c, generator))
        keep = ~isin_sorted(keys, active)
        if exclude.numel():
            keep &= ~isin_sorted(keys, exclude)
        out.append(keys[keep])
    return torch.cat(out)


def _large_inactive_keys(active: torch.Tensor, n_positions: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """:func:`random_inactive_keys` for large ``k`` in a layer at most half full: sorted uniform draws
    (a little more than ``k`` over the free fraction), repeats and active positions dropped, then a uniform
    random surplus dropped, so the result is a uniform random set of ``k`` free positions."""
    active = active.long()
    free_fraction = (n_positions - active.numel()) / n_positions
    chosen = torch.empty(0, dtype=torch.int64)
    while chosen.numel() < k:
        need = k - chosen.numel()
        draw = int(need / free_fraction * 1.01) + 64
        fresh = _free_sorted_draws(active, chosen, n_positions, draw, generator)
        chosen = fresh if chosen.numel() == 0 else torch.sort(torch.cat([chosen, fresh])).values
    surplus = chosen.numel() - k
    if surplus:
        drop = torch.empty(0, dtype=torch.int64)
        while drop.numel() < surplus:  # distinct random indices to drop: a uniform subset of the draws is kept
            more = torch.randint(0, chosen.numel(), (surplus - drop.numel() + 16,), generator=generator)
            drop = torch.unique(torch.cat([drop, more]))
            drop = drop[torch.randperm(drop.numel(), generator=generator)[:surplus]] if drop.numel() > surplus else drop
        keep = torch.ones(chosen.numel(), dtype=torch.bool)
        keep[drop] = False
        chosen = chosen[keep]
    return chosen


def random_growth(layer: SparseLinear, k: int, generator: torch.Generator) -> torch.Tensor:
    """``(2, k)`` positions drawn uniformly among the layer's currently inactive ones."""
    active = layer.layout.keys(key_dtype(layer.layout.shape))
    keys = random_inactive_keys(active, layer.in_features * layer.out_features, k, generator)
    return keys_to_positions(keys, layer.in_features)


def random_inactive_keys(active_keys: torch.Tensor, n_positions: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` distinct positions in ``[0, n_positions)`` drawn uniformly among those not in ``active_keys``.

    ``active_keys`` must be sorted. Sparse layers draw candidates, drop active ones and repeats, and
    subsample a surplus at random (each round leaves a uniform random set of free positions; memory
    O(k), no dense mask); nearly dense layers enumerate the free positions instead; from :data:`LARGE_DRAW`
    positions on, in a layer at most half full, the draws are made sorted (no sort, no permutation). The generator is a
    CPU generator so that every device and every data-parallel rank draws the same. Returns sorted
    int64 keys; fewer than ``k`` only when fewer positions are free.
    """
    device = active_keys.device
    free = n_positions - active_keys.numel()
    k = max(0, min(int(k), free))
    if k == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    active = active_keys.cpu()
    if k >= LARGE_DRAW and free >= n_positions // 2:  # a very sparse layer: no sort, no permutation of the draws
        return _large_inactive_keys(active, n_positions, k, generator).to(device)
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
