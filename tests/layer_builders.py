"""Small builders shared by the reference tests: a layer with a chosen topology, and its flat keys.

Public API only (``SparseLinear`` and its state dict), so the tests survive moves of internal modules.
"""
from __future__ import annotations

import torch

from redr.sparse import SparseLinear


def keys_of(layer: SparseLinear) -> list[int]:
    """Flat keys ``row * in_features + col`` of the active weights, in ``values`` order."""
    rows, cols = layer.indices
    return (rows * layer.in_features + cols).tolist()


def layer_with_keys(out_features: int, in_features: int, keys, values=None, bias=None, backend: str = "auto",
                    dtype=torch.float32) -> SparseLinear:
    """A layer whose active positions are exactly ``keys`` (flat, any order), with ``values`` in ascending key
    order (default: distinct, ``(i + 1) / nnz``) and ``bias`` (default 0)."""
    layer = SparseLinear(in_features, out_features, 1.0, backend=backend, dtype=dtype,
                         generator=torch.Generator().manual_seed(0))
    keys = torch.tensor(sorted(keys), dtype=torch.int64)
    rows = keys // in_features
    crow = torch.cat([torch.zeros(1, dtype=torch.int64), torch.bincount(rows, minlength=out_features).cumsum(0)])
    if values is None:
        values = (torch.arange(keys.numel(), dtype=dtype) + 1) / max(1, keys.numel())
    bias = torch.zeros(out_features, dtype=dtype) if bias is None else bias
    layer.load_state_dict({"values": torch.as_tensor(values, dtype=dtype), "crow": crow, "col": keys % in_features,
                           "bias": torch.as_tensor(bias, dtype=dtype)})
    return layer
