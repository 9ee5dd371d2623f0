"""Where the active weights sit in the Fisher's blocks, and the packed storage of a symmetric block.

Layout. The active weights of every sparse layer (its ``values``, in their row-major CSR order) are cut
into consecutive blocks of ``B`` weights; a layer's last block may be shorter and is padded to ``B``.
Layers never share a block. All blocks of all layers form one ``(n_blocks, B)`` array (:class:`BlockLayout`).
A symmetric ``B x B`` block is stored as its upper triangle, ``B (B+1) / 2`` numbers (:class:`TrianglePacking`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class BlockLayout:
    """Where each layer's active weights sit in the ``(n_blocks, B)`` block array."""

    block_size: int
    nnz: tuple[int, ...]

    def __post_init__(self):
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if any(n < 0 for n in self.nnz):
            raise ValueError(f"negative nnz in {self.nnz}")

    @property
    def blocks_per_layer(self) -> list[int]:
        return [math.ceil(n / self.block_size) for n in self.nnz]

    @property
    def block_offsets(self) -> list[int]:
        """First block of each layer."""
        out, acc = [], 0
        for nb in self.blocks_per_layer:
            out.append(acc)
            acc += nb
        return out

    @property
    def n_blocks(self) -> int:
        return sum(self.blocks_per_layer)

    def to_blocks(self, vectors: Sequence[torch.Tensor | None], out: torch.Tensor | None = None, dtype=None,
                  device=None) -> torch.Tensor:
        """Per-layer 1-D tensors (``None`` = zeros) to the zero-padded ``(n_blocks, B)`` array."""
        if len(vectors) != len(self.nnz):
            raise ValueError(f"{len(vectors)} vectors for {len(self.nnz)} layers")
        if out is None:
            out = torch.zeros(self.n_blocks, self.block_size, dtype=dtype, device=device)
        flat = out.view(-1)
        for v, off, n in zip(vectors, self.block_offsets, self.nnz):
            if v is None:
                continue
            if v.numel() != n:
                raise ValueError(f"vector of {v.numel()} entries for a layer with nnz {n}")
            flat[off * self.block_size: off * self.block_size + n].copy_(v.reshape(-1))
        return out

    def from_blocks(self, blocks: torch.Tensor) -> list[torch.Tensor]:
        """The ``(n_blocks, B)`` array back to per-layer 1-D views (padding dropped)."""
        flat = blocks.reshape(-1)
        return [flat[off * self.block_size: off * self.block_size + n] for off, n in zip(self.block_offsets, self.nnz)]

    def padding_mask(self, device=None) -> torch.Tensor:
        """``(n_blocks, B)`` bool, True at real (non-padding) slots."""
        mask = torch.zeros(self.n_blocks, self.block_size, dtype=torch.bool, device=device)
        return self.to_blocks([torch.ones(n, dtype=torch.bool, device=device) for n in self.nnz], out=mask)

    def write_rows(self, target: torch.Tensor, vectors: Sequence[torch.Tensor | None]) -> None:
        """Write per-layer vectors into a strided ``(n_blocks, B)`` view (e.g. one row of the gradient buffer).

        Only real slots are written; padding slots keep what they hold (zero in the buffer)."""
        B = self.block_size
        for v, off, n in zip(vectors, self.block_offsets, self.nnz):
            if v is None or n == 0:
                continue
            if v.numel() != n:
                raise ValueError(f"gradient of {v.numel()} entries for a layer with nnz {n}")
            v = v.reshape(-1)
            q, rem = divmod(n, B)
            if q:
                target[off:off + q].copy_(v[:q * B].view(q, B))
            if rem:
                target[off + q, :rem].copy_(v[q * B:])


class TrianglePacking:
    """Index maps between a symmetric ``B x B`` block and its packed upper triangle."""

    _cache: dict = {}

    def __init__(self, B: int, device):
        iu = torch.triu_indices(B, B, device=device)
        self.B = B
        self.upper = (iu[0] * B + iu[1]).contiguous()  # packed k -> flat (i, j), i <= j
        self.lower = (iu[1] * B + iu[0]).contiguous()  # packed k -> flat (j, i)
        self.diag = (iu[0] == iu[1]).nonzero().squeeze(1)  # packed positions of the diagonal, in order
        self.size = self.upper.numel()

    @classmethod
    def get(cls, B: int, device) -> "TrianglePacking":
        key = (B, str(device))
        if key not in cls._cache:
            cls._cache[key] = cls(B, device)
        return cls._cache[key]

    def unpack(self, packed: torch.Tensor, dtype=None) -> torch.Tensor:
        """``(n, P)`` packed to ``(n, B, B)`` symmetric."""
        n = packed.shape[0]
        full = torch.empty(n, self.B * self.B, dtype=dtype or packed.dtype, device=packed.device)
        src = packed.to(full.dtype)
        full.index_copy_(1, self.lower, src)
        full.index_copy_(1, self.upper, src)
        return full.view(n, self.B, self.B)

    def pack(self, full: torch.Tensor, out: torch.Tensor) -> None:
        """Upper triangle of ``(n, B, B)`` into ``out`` ``(n, P)``."""
        out.copy_(torch.index_select(full.reshape(full.shape[0], -1), 1, self.upper))


