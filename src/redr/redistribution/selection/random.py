"""Uniformly random growth among a layer's inactive positions, without a dense mask for sparse layers."""
from __future__ import annotations

import torch

from redr.redistribution.selection.positions import keys_to_positions
from redr.sparse.index_ops import isin_sorted
from redr.sparse.layer import SparseLinear
from redr.sparse.layout import key_dtype


def random_growth(layer: SparseLinear, k: int, generator: torch.Generator) -> torch.Tensor:
    """``(2, k)`` positions drawn uniformly among the layer's currently inactive ones."""
    active = layer.layout.keys(key_dtype(layer.layout.shape))
    keys = random_inactive_keys(active, layer.in_features * layer.out_features, k, generator)
    return keys_to_positions(keys, layer.in_features)


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
