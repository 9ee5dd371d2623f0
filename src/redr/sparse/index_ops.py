"""Index operations of a topology change, linear-time on the CPU.

A topology change merges two sorted key lists and rebuilds the transposed structure. With torch ops
these are sorts and binary searches (on a 4096x4096 layer at d=0.1, 0.2-0.5 s each here); since every
input is already sorted, a merge and a counting sort do the same in one pass (a few ms). The numba
versions run on the CPU; the torch versions are the reference and run on other devices.
"""
from __future__ import annotations

import torch

from redr.sparse.kernels import HAVE_NUMBA

if HAVE_NUMBA:
    from numba import njit

    @njit(cache=True)
    def _merge_numba(a, b, merged, pos_a, pos_b):  # pragma: no cover - compiled
        """Merge sorted ``a`` and ``b`` into ``merged``; ``pos_a``/``pos_b``: where each element went.
        Returns False if an element of ``b`` equals one of ``a``."""
        i = j = 0
        na, nb = a.shape[0], b.shape[0]
        while i < na or j < nb:
            if j >= nb or (i < na and a[i] < b[j]):
                pos_a[i] = i + j
                merged[i + j] = a[i]
                i += 1
            else:
                if i < na and a[i] == b[j]:
                    return False
                pos_b[j] = i + j
                merged[i + j] = b[j]
                j += 1
        return True

    @njit(cache=True)
    def _intersects_numba(a, b):  # pragma: no cover - compiled
        i = j = 0
        while i < a.shape[0] and j < b.shape[0]:
            if a[i] == b[j]:
                return True
            if a[i] < b[j]:
                i += 1
            else:
                j += 1
        return False

    @njit(cache=True)
    def _member_numba(a, q, out):  # pragma: no cover - compiled
        """``out[j] = q[j] in a`` for ascending ``a`` and ``q``."""
        i = 0
        for j in range(q.shape[0]):
            while i < a.shape[0] and a[i] < q[j]:
                i += 1
            out[j] = i < a.shape[0] and a[i] == q[j]

    @njit(cache=True)
    def _keys_numba(crow, col, in_features, out):  # pragma: no cover - compiled
        for i in range(crow.shape[0] - 1):
            base = i * in_features
            for k in range(crow[i], crow[i + 1]):
                out[k] = base + col[k]

    @njit(cache=True)
    def _csr_from_keys_numba(keys, in_features, crow, col):  # pragma: no cover - compiled
        for k in range(keys.shape[0]):
            row = keys[k] // in_features
            crow[row + 1] += 1
            col[k] = keys[k] - row * in_features
        for i in range(crow.shape[0] - 1):
            crow[i + 1] += crow[i]

    @njit(cache=True)
    def _transpose_numba(crow, col, crow_t, row_t, perm_t):  # pragma: no cover - compiled
        """Counting sort of a CSR matrix's entries by column (stable: rows stay ascending)."""
        for k in range(col.shape[0]):
            crow_t[col[k] + 1] += 1
        for c in range(crow_t.shape[0] - 1):
            crow_t[c + 1] += crow_t[c]
        fill = crow_t[:-1].copy()
        for i in range(crow.shape[0] - 1):
            for k in range(crow[i], crow[i + 1]):
                c = col[k]
                p = fill[c]
                row_t[p] = i
                perm_t[p] = k
                fill[c] = p + 1


def _on_cpu(*tensors) -> bool:
    return HAVE_NUMBA and all(t.device.type == "cpu" for t in tensors)


def ascending(x: torch.Tensor) -> torch.Tensor:
    """``x`` sorted ascending; a linear check first, since the callers' keys usually already are."""
    if x.numel() < 2 or bool((x[1:] >= x[:-1]).all()):
        return x
    return torch.sort(x).values


def merge_sorted(a: torch.Tensor, b: torch.Tensor):
    """``(merged, pos_a, pos_b)`` for strictly increasing integer ``a`` and ``b``, or None if they share an element.
    ``merged`` has the wider of the two dtypes, ``pos_a``/``pos_b`` those of ``a``/``b`` (int32 keys give int32 positions)."""
    if _on_cpu(a, b):
        merged = torch.empty(a.numel() + b.numel(), dtype=torch.promote_types(a.dtype, b.dtype))
        pos_a, pos_b = torch.empty_like(a), torch.empty_like(b)
        if not _merge_numba(a.numpy(), b.numpy(), merged.numpy(), pos_a.numpy(), pos_b.numpy()):
            return None
        return merged, pos_a, pos_b
    b = b.to(a.dtype)
    if sorted_intersect(a, b):
        return None
    pos_a = torch.arange(a.numel(), device=a.device) + torch.searchsorted(b, a)
    pos_b = torch.arange(b.numel(), device=b.device) + torch.searchsorted(a, b)
    merged = torch.empty(a.numel() + b.numel(), dtype=a.dtype, device=a.device)
    merged[pos_a], merged[pos_b] = a, b
    return merged, pos_a, pos_b


def sorted_intersect(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two ascending int64 tensors share an element."""
    if a.numel() == 0 or b.numel() == 0:
        return False
    if _on_cpu(a, b):
        return bool(_intersects_numba(a.numpy(), b.numpy()))
    b = b.to(a.dtype)
    hit = torch.searchsorted(a, b).clamp(max=a.numel() - 1)
    return bool((a[hit] == b).any())


def isin_sorted(queries: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Bool mask: which of the ascending int64 ``queries`` are in the ascending ``a``."""
    if queries.numel() == 0 or a.numel() == 0:
        return torch.zeros(queries.shape, dtype=torch.bool, device=queries.device)
    if _on_cpu(a, queries):
        out = torch.empty(queries.shape, dtype=torch.bool)
        _member_numba(a.numpy(), queries.numpy(), out.numpy())
        return out
    queries = queries.to(a.dtype)
    hit = torch.searchsorted(a, queries).clamp(max=a.numel() - 1)
    return a[hit] == queries


def csr_rows(crow: torch.Tensor) -> torch.Tensor:
    """The row of every entry of a CSR matrix (int64, entry order), on ``crow``'s device."""
    counts = (crow[1:] - crow[:-1]).long()
    return torch.repeat_interleave(torch.arange(crow.numel() - 1, device=crow.device), counts)


def csr_keys(crow: torch.Tensor, col: torch.Tensor, in_features: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """``row * in_features + col`` of every entry, in ``dtype`` (no int64 temporaries on the CPU)."""
    if _on_cpu(crow, col):
        out = torch.empty(col.numel(), dtype=dtype)
        _keys_numba(crow.numpy(), col.numpy(), in_features, out.numpy())
        return out
    return (csr_rows(crow) * in_features + col.long()).to(dtype)


def csr_from_keys(keys: torch.Tensor, shape: tuple[int, int], dtype: torch.dtype):
    """``(crow, col)`` in ``dtype`` from strictly increasing flat keys."""
    out_f, in_f = shape
    if _on_cpu(keys):
        crow = torch.zeros(out_f + 1, dtype=dtype)
        col = torch.empty(keys.numel(), dtype=dtype)
        _csr_from_keys_numba(keys.numpy(), in_f, crow.numpy(), col.numpy())
        return crow, col
    rows = torch.div(keys, in_f, rounding_mode="floor").long()
    crow = torch.zeros(out_f + 1, dtype=torch.int64, device=keys.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=out_f), 0)
    return crow.to(dtype), (keys - rows * in_f).to(dtype)


def transpose_csr(crow: torch.Tensor, col: torch.Tensor, n_cols: int, dtype: torch.dtype):
    """``(crow_t, row_t, perm_t)``: the CSR of ``W.T`` and, per entry, its position in ``W``'s order."""
    nnz = col.numel()
    if _on_cpu(crow, col):
        crow_t = torch.zeros(n_cols + 1, dtype=dtype)
        row_t, perm_t = torch.empty(nnz, dtype=dtype), torch.empty(nnz, dtype=dtype)
        _transpose_numba(crow.numpy(), col.numpy(), crow_t.numpy(), row_t.numpy(), perm_t.numpy())
        return crow_t, row_t, perm_t
    rows = csr_rows(crow)
    cols = col.long()
    perm_t = torch.sort(cols, stable=True).indices  # rows stay ascending within a column
    crow_t = torch.zeros(n_cols + 1, dtype=torch.int64, device=col.device)
    crow_t[1:] = torch.cumsum(torch.bincount(cols, minlength=n_cols), 0)
    return crow_t.to(dtype), rows[perm_t].to(dtype), perm_t.to(dtype)


__all__ = ["ascending", "csr_from_keys", "csr_keys", "csr_rows", "isin_sorted", "merge_sorted", "sorted_intersect", "transpose_csr"]
