"""Validation of a sparse layer's stored structure (checkpoints, state dicts): say what is wrong."""
from __future__ import annotations

import torch

from redr.errors import RedrError


class CorruptSparseStateError(RedrError, ValueError):
    """A stored sparse structure is inconsistent; the message names the layer and the problem."""


def validate_csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int], name: str = "layer") -> None:
    out_f, in_f = shape
    def fail(msg):
        raise CorruptSparseStateError(f"{name}: {msg}")
    if crow.dim() != 1 or crow.numel() != out_f + 1:
        fail(f"crow has shape {tuple(crow.shape)}, expected ({out_f + 1},) for {out_f} output neurons")
    if col.dim() != 1 or values.dim() != 1 or col.numel() != values.numel():
        fail(f"col ({tuple(col.shape)}) and values ({tuple(values.shape)}) must be 1-D of equal length (nnz)")
    crow64, col64 = crow.long(), col.long()
    if int(crow64[0]) != 0 or int(crow64[-1]) != col.numel():
        fail(f"crow must start at 0 and end at nnz={col.numel()}, got {int(crow64[0])}..{int(crow64[-1])}")
    counts = crow64[1:] - crow64[:-1]
    if bool((counts < 0).any()):
        fail("crow is not non-decreasing")
    if col.numel():
        if int(col64.min()) < 0 or int(col64.max()) >= in_f:
            fail(f"column index out of range [0, {in_f}): min {int(col64.min())}, max {int(col64.max())}")
        rows = torch.repeat_interleave(torch.arange(out_f, device=crow.device), counts)
        keys = rows * in_f + col64
        if keys.numel() > 1 and bool((keys[1:] <= keys[:-1]).any()):
            fail("indices are duplicated or not sorted row-major")
    if not bool(torch.isfinite(values).all()):
        fail("values contain NaN or inf")
