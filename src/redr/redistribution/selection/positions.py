"""Positions: flat keys ``row * in_features + col`` to ``(row, col)``, and ids over several layers back to layers."""
from __future__ import annotations

from typing import Sequence

import torch


def keys_to_positions(keys: torch.Tensor, in_features: int) -> torch.Tensor:
    """Flat keys ``row * in_features + col`` to a ``(2, k)`` (row, col) tensor, int32 where it fits (half the
    bytes of a plan that may hold half a layer's weights). Written in place into the result: a plan can
    be half a layer, and int64 temporaries of that size would set the peak memory of a redistribution."""
    if keys.numel() and int(keys.max()) >= 2**31 - 1:
        dtype = torch.int64
    else:
        dtype = torch.int32
        keys = keys.to(dtype)
    out = torch.empty(2, keys.numel(), dtype=dtype, device=keys.device)
    rows, cols = out[0], out[1]
    torch.div(keys, in_features, rounding_mode="floor", out=rows)
    torch.mul(rows, in_features, out=cols)
    torch.sub(keys, cols, out=cols)
    return out


def layer_offsets(sizes: Sequence[int]) -> list[int]:
    """``[0, s0, s0 + s1, ...]``: where each layer's ids start when layers of these sizes are concatenated."""
    out = [0]
    for s in sizes:
        out.append(out[-1] + int(s))
    return out


def split_by_layer(ids: torch.Tensor, offsets: Sequence[int]) -> list[torch.Tensor]:
    """Ids into the concatenation of layers (``offsets`` from :func:`layer_offsets`) back to per-layer ids,
    each layer's in the order they come in ``ids``."""
    return [ids[(ids >= offsets[i]) & (ids < offsets[i + 1])] - offsets[i] for i in range(len(offsets) - 1)]
