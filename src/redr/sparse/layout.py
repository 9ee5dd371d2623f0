"""Index structure of a sparse weight matrix: CSR plus its transposed companion.

The canonical order of the active weights is *row-major* (sorted by ``row * in_features + col``),
the order of ``SparseLinear.values``. The transposed companion (CSR of ``W.T``) lets the backward
pass compute ``grad_input`` without atomics; ``perm_t`` maps its entries back to ``values``.
Indices are int32 whenever they fit (half the memory of int64), int64 otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

_INT32_MAX = 2**31 - 1


def index_dtype(out_features: int, in_features: int, nnz: int) -> torch.dtype:
    return torch.int32 if max(out_features, in_features, nnz) < _INT32_MAX else torch.int64


def _crow_from_sorted(rows: torch.Tensor, n_rows: int, dtype: torch.dtype) -> torch.Tensor:
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=rows.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), 0)
    return crow.to(dtype)


@dataclass
class CSRLayout:
    """The index tensors of one layer; built only through :meth:`from_sorted_coo`."""

    shape: tuple[int, int]  # (out_features, in_features)
    crow: torch.Tensor  # (out + 1,)
    col: torch.Tensor  # (nnz,)
    crow_t: torch.Tensor  # (in + 1,)   CSR of W.T
    row_t: torch.Tensor  # (nnz,)       column index of W.T entries (= row of W)
    perm_t: torch.Tensor  # (nnz,)       position in ``values`` of each W.T entry

    @classmethod
    def from_sorted_coo(cls, rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int]) -> "CSRLayout":
        """``rows``/``cols`` (int64) must already be in row-major order without duplicates."""
        from redr.sparse.index_ops import transpose_csr

        out_f, in_f = shape
        dtype = index_dtype(out_f, in_f, rows.numel())
        crow = _crow_from_sorted(rows, out_f, dtype)
        col = cols.to(dtype)
        crow_t, row_t, perm_t = transpose_csr(crow, col, in_f, dtype)
        return cls(shape=(out_f, in_f), crow=crow, col=col, crow_t=crow_t, row_t=row_t, perm_t=perm_t)

    @classmethod
    def from_keys(cls, keys: torch.Tensor, shape: tuple[int, int]) -> "CSRLayout":
        """From strictly increasing flat keys ``row * in_features + col``."""
        return cls.from_sorted_coo(keys // shape[1], keys % shape[1], shape)

    @property
    def nnz(self) -> int:
        return self.col.numel()

    def rows(self) -> torch.Tensor:
        """Row (output neuron) of every active weight, int64, in ``values`` order."""
        counts = (self.crow[1:] - self.crow[:-1]).long()
        return torch.repeat_interleave(torch.arange(self.shape[0], device=self.crow.device), counts)

    def keys(self) -> torch.Tensor:
        """``row * in_features + col`` (int64), strictly increasing in ``values`` order."""
        return self.rows() * self.shape[1] + self.col.long()

    def row_counts(self) -> torch.Tensor:
        return (self.crow[1:] - self.crow[:-1]).long()

    def to(self, device) -> "CSRLayout":
        return CSRLayout(self.shape, *(t.to(device) for t in (self.crow, self.col, self.crow_t, self.row_t, self.perm_t)))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.crow, self.col, self.crow_t, self.row_t, self.perm_t))
