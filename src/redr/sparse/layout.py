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


def key_dtype(shape: tuple[int, int]) -> torch.dtype:
    """The narrowest integer type for flat keys ``row * in_features + col`` of a layer of this shape."""
    return torch.int32 if shape[0] * shape[1] <= _INT32_MAX else torch.int64


@dataclass
class CSRLayout:
    """The index tensors of one layer; built through :meth:`from_keys` (or :meth:`from_sorted_coo`)."""

    shape: tuple[int, int]  # (out_features, in_features)
    crow: torch.Tensor  # (out + 1,)
    col: torch.Tensor  # (nnz,)
    crow_t: torch.Tensor  # (in + 1,)   CSR of W.T
    row_t: torch.Tensor  # (nnz,)       column index of W.T entries (= row of W)
    perm_t: torch.Tensor  # (nnz,)       position in ``values`` of each W.T entry

    @classmethod
    def from_keys(cls, keys: torch.Tensor, shape: tuple[int, int]) -> "CSRLayout":
        """From strictly increasing flat keys ``row * in_features + col`` (any integer dtype)."""
        from redr.sparse.index_ops import csr_from_keys

        return cls.from_csr(*csr_from_keys(keys, shape, index_dtype(shape[0], shape[1], keys.numel())), shape)

    @classmethod
    def from_csr(cls, crow: torch.Tensor, col: torch.Tensor, shape: tuple[int, int]) -> "CSRLayout":
        """From a valid CSR structure (sorted, unique columns per row); adds the transposed companion."""
        from redr.sparse.index_ops import transpose_csr

        dtype = index_dtype(shape[0], shape[1], col.numel())
        crow, col = crow.to(dtype), col.to(dtype)
        return cls((shape[0], shape[1]), crow, col, *transpose_csr(crow, col, shape[1], dtype))

    @classmethod
    def from_sorted_coo(cls, rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int]) -> "CSRLayout":
        """``rows``/``cols`` must already be in row-major order without duplicates."""
        return cls.from_keys(rows.long() * shape[1] + cols.long(), shape)

    @property
    def nnz(self) -> int:
        return self.col.numel()

    def rows(self) -> torch.Tensor:
        """Row (output neuron) of every active weight, int64, in ``values`` order."""
        from redr.sparse.index_ops import csr_rows

        return csr_rows(self.crow)

    def keys(self, dtype: torch.dtype = torch.int64) -> torch.Tensor:
        """``row * in_features + col``, strictly increasing in ``values`` order (``dtype``: see :func:`key_dtype`)."""
        from redr.sparse.index_ops import csr_keys

        return csr_keys(self.crow, self.col, self.shape[1], dtype)

    def row_counts(self) -> torch.Tensor:
        return (self.crow[1:] - self.crow[:-1]).long()

    def to(self, device) -> "CSRLayout":
        return CSRLayout(self.shape, *(t.to(device) for t in (self.crow, self.col, self.crow_t, self.row_t, self.perm_t)))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.crow, self.col, self.crow_t, self.row_t, self.perm_t))
