"""Compute paths of :class:`~redr.sparse.layer.SparseLinear`.

All three products of a linear layer are written in the *feature-major* layout, where a batch of
activations is stored transposed, ``(features, batch)``, so that every active weight touches one
contiguous row of ``batch`` numbers:

* forward        ``yT[i, :] = b[i] + sum_{(i,j) active} w_ij * xT[j, :]``   (CSR SpMM)
* grad input     ``gxT[j, :] = sum_{(i,j) active} w_ij * gT[i, :]``        (SpMM with the transposed CSR)
* grad values    ``gw_ij = <gT[i, :], xT[j, :]>`` for active ``(i, j)`` only (SDDMM)

The output ``yT.t()`` is a transposed *view*, so the next sparse layer gets its ``xT`` for free and
elementwise activations in between keep the layout; only the first layer's input is transposed. When a
batch-major input wants a gradient (a user's leaf tensor, the layer benchmark), the numba kernel writes that
gradient batch-major directly instead of leaving autograd a transposing copy.

Three backends compute the same function:

* ``numba``: hand-written parallel CPU kernels (the CPU default; fastest measured here);
* ``torch``: torch's CSR ops (cuSPARSE on CUDA, MKL on the CPU); the CUDA default;
* ``dense``: scatter the values into a dense matrix and use BLAS, for layers so small that sparse
  bookkeeping costs more than the arithmetic it saves (autograd differentiates the scatter).
"""
from __future__ import annotations

import os
import warnings

# Activations of wide layers are gathered row by row at random (one row per active weight): on 4 KiB pages a
# 64 MiB activation spans 16,384 pages, far more than the TLB holds, so nearly every gather also walks the page
# table. torch backs allocations of 2 MiB and more with transparent huge pages when this is set (read at its
# first such allocation); measured 1.2-1.4x on the forward kernel at width 65536 (docs/scale.md). A user's own
# setting wins, ``THP_MEM_ALLOC_ENABLE=0`` turns it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402

# torch warns once per process that its CSR support is "beta"; we test the ops we use against dense math.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

try:  # numba is a dependency, but a user's exotic platform may lack it: fall back to torch ops.
    import numba
    import numpy as np
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    HAVE_NUMBA = False

BACKENDS = ("auto", "numba", "torch", "dense")

#: The numba backward computes both products in one sweep (:func:`backward_input_and_values`) when the output
#: gradient it gathers from, ``out_features x batch`` float32, is larger than this: about half the 32 MiB L3 of
#: the machine measured (docs/scale.md). Below, the two kernels run apart, as they did before (same sums, bit
#: for bit: the pinned metrics of small nets stay as they were).
FUSED_BACKWARD_MIN_BYTES = 16 * 2**20

#: Layers with at most this many dense positions use the dense backend under ``auto`` on the CPU.
#: Chosen from ``redr bench layer`` on a 2-core CPU (results in benchmarks/README.md).
DENSE_MAX_POSITIONS = 16 * 1024


if HAVE_NUMBA:

    # Both kernels take four active weights of a row at a time: the accumulator row (or the shared
    # gradient row) is then loaded once per four source rows instead of once per row, which measured
    # 1.2-2x faster than the one-at-a-time loop on a 4096x4096 layer (AVX2, 2 cores).

    @njit(fastmath=True, cache=True)
    def _accumulate_row(acc, crow, col, vals, xT, i):  # pragma: no cover - compiled
        """``acc += sum_k vals[k] * xT[col[k], :]`` over row ``i``'s entries (inlined into the kernels below)."""
        width = xT.shape[1]
        k, end = crow[i], crow[i + 1]
        while k + 4 <= end:
            w0, w1, w2, w3 = vals[k], vals[k + 1], vals[k + 2], vals[k + 3]
            s0, s1, s2, s3 = xT[col[k]], xT[col[k + 1]], xT[col[k + 2]], xT[col[k + 3]]
            for b in range(width):
                acc[b] += w0 * s0[b] + w1 * s1[b] + w2 * s2[b] + w3 * s3[b]
            k += 4
        while k < end:
            w, src = vals[k], xT[col[k]]
            for b in range(width):
                acc[b] += w * src[b]
            k += 1

    @njit(parallel=True, fastmath=True, cache=True)
    def _spmm_numba(crow, col, vals, xT, bias, out):  # pragma: no cover - compiled
        """``out[i, :] = bias[i] + sum_k vals[k] * xT[col[k], :]`` over row ``i``'s entries."""
        rows = crow.shape[0] - 1
        for i in prange(rows):
            acc = np.full(xT.shape[1], bias[i], dtype=out.dtype)
            _accumulate_row(acc, crow, col, vals, xT, i)
            out[i, :] = acc

    #: Rows per block of the batch-major kernel: 16 float32 = one 64-byte cache line per batch row written.
    _BLOCK_ROWS = 16

    @njit(parallel=True, fastmath=True, cache=True)
    def _spmm_batch_major_numba(crow, col, vals, xT, out):  # pragma: no cover - compiled
        """The same product written batch-major, ``out[:, i] = sum_k vals[k] * xT[col[k], :]`` (``out`` is
        ``(batch, rows)``): a block of rows is accumulated feature-major, then stored a cache line per batch row,
        which costs less than a separate transposing copy of the whole result."""
        rows, width = crow.shape[0] - 1, xT.shape[1]
        for blk in prange((rows + _BLOCK_ROWS - 1) // _BLOCK_ROWS):
            r0 = blk * _BLOCK_ROWS
            r1 = min(rows, r0 + _BLOCK_ROWS)
            acc = np.zeros((_BLOCK_ROWS, width), dtype=out.dtype)
            for i in range(r0, r1):
                _accumulate_row(acc[i - r0], crow, col, vals, xT, i)
            for b in range(width):
                for i in range(r0, r1):
                    out[b, i] = acc[i - r0, b]

    @njit(parallel=True, fastmath=True, cache=True)
    def _sddmm_numba(crow, col, gT, xT, out):  # pragma: no cover - compiled
        """``out[k] = <gT[i, :], xT[col[k], :]>`` for every entry ``k`` of row ``i``."""
        rows = crow.shape[0] - 1
        width = xT.shape[1]
        for i in prange(rows):
            g = gT[i]
            k, end = crow[i], crow[i + 1]
            while k + 4 <= end:
                x0, x1, x2, x3 = xT[col[k]], xT[col[k + 1]], xT[col[k + 2]], xT[col[k + 3]]
                a0 = a1 = a2 = a3 = numba.float32(0.0)
                for b in range(width):
                    gb = g[b]
                    a0 += gb * x0[b]
                    a1 += gb * x1[b]
                    a2 += gb * x2[b]
                    a3 += gb * x3[b]
                out[k], out[k + 1], out[k + 2], out[k + 3] = a0, a1, a2, a3
                k += 4
            while k < end:
                src = xT[col[k]]
                a = numba.float32(0.0)
                for b in range(width):
                    a += g[b] * src[b]
                out[k] = a
                k += 1


    @njit(parallel=True, fastmath=True, cache=True)
    def _backward_fused_numba(crow_t, row_t, perm_t, vals, gT, xT, gxT, gvals):  # pragma: no cover - compiled
        """Both backward products in one sweep over the transposed CSR: for input feature ``j``,
        ``gxT[j, :] = sum_k vals[perm_t[k]] * gT[row_t[k], :]`` and ``gvals[perm_t[k]] = <gT[row_t[k], :], xT[j, :]>``.
        Each gathered row ``gT[i, :]`` serves both, and ``xT[j, :]`` is read in order, so the backward gathers
        one operand at random instead of two (see :func:`backward_input_and_values`)."""
        width = gT.shape[1]
        for j in prange(crow_t.shape[0] - 1):
            x = xT[j]
            acc = np.zeros(width, dtype=gxT.dtype)
            k, end = crow_t[j], crow_t[j + 1]
            while k + 4 <= end:
                p0, p1, p2, p3 = perm_t[k], perm_t[k + 1], perm_t[k + 2], perm_t[k + 3]
                w0, w1, w2, w3 = vals[p0], vals[p1], vals[p2], vals[p3]
                s0, s1, s2, s3 = gT[row_t[k]], gT[row_t[k + 1]], gT[row_t[k + 2]], gT[row_t[k + 3]]
                a0 = a1 = a2 = a3 = numba.float32(0.0)
                for b in range(width):
                    xb = x[b]
                    acc[b] += w0 * s0[b] + w1 * s1[b] + w2 * s2[b] + w3 * s3[b]
                    a0 += s0[b] * xb
                    a1 += s1[b] * xb
                    a2 += s2[b] * xb
                    a3 += s3[b] * xb
                gvals[p0], gvals[p1], gvals[p2], gvals[p3] = a0, a1, a2, a3
                k += 4
            while k < end:
                p = perm_t[k]
                w, src = vals[p], gT[row_t[k]]
                a = numba.float32(0.0)
                for b in range(width):
                    acc[b] += w * src[b]
                    a += src[b] * x[b]
                gvals[p] = a
                k += 1
            gxT[j, :] = acc

    @njit(parallel=True, cache=True)
    def _gather_numba(vals, index, out):  # pragma: no cover - compiled
        """``out[k] = vals[index[k]]`` (the values in transposed order), on every core."""
        for k in prange(index.shape[0]):
            out[k] = vals[index[k]]


def gather_values(values: torch.Tensor, index: torch.Tensor, backend: str) -> torch.Tensor:
    """``values[index]`` (the values in the transposed companion's order); numba's parallel loop on the CPU."""
    if backend == "numba" and values.dtype == torch.float32 and not (torch.is_grad_enabled() and values.requires_grad):
        out = values.new_empty(index.shape[0])
        _gather_numba(_np(values), _np(index), _np(out))
        return out
    return values[index]


def _np(t: torch.Tensor):
    return t.detach().numpy()


def spmm(crow, col, vals, xT, shape, bias=None, backend="numba", batch_major=False):
    """``W @ xT (+ bias[:, None])`` for the CSR matrix ``W`` of ``shape`` with values ``vals``.

    ``batch_major=True`` returns the transpose, ``(W @ xT).T`` as a contiguous ``(batch, rows)`` tensor
    (no bias): the layout of an input gradient when the layer's input was itself batch-major."""
    rows = shape[0]
    if batch_major:
        if bias is not None:
            raise ValueError("batch_major output takes no bias")
        if backend == "numba" and vals.dtype == torch.float32:
            out = xT.new_empty(xT.shape[1], rows)  # every entry written by the kernel
            _spmm_batch_major_numba(_np(crow), _np(col), _np(vals), _np(xT), _np(out))
            return out
        return spmm(crow, col, vals, xT, shape, None, backend).t().contiguous()
    if backend == "numba" and vals.dtype == torch.float32:
        out = xT.new_empty(rows, xT.shape[1])  # every entry written by the kernel (bias included)
        _spmm_numba(_np(crow), _np(col), _np(vals), _np(xT), _np(bias if bias is not None else vals.new_zeros(rows)),
                    _np(out))
        return out
    csr = torch.sparse_csr_tensor(crow, col, vals, shape, check_invariants=False)
    out = torch.mm(csr, xT)
    if bias is not None:
        out += bias[:, None]
    return out


def backward_input_and_values(layout, values, gT, xT):
    """``(W.T @ gT, values gradient)`` of a numba layer in one sweep: ``(gxT (in, batch), grad_values (nnz,))``.

    The separate kernels each gather a row of a ``(features, batch)`` operand per active weight (``gT`` for the
    input gradient, ``xT`` for the values'); past the caches each gather is a trip to DRAM. Here every gathered
    ``gT`` row serves both products and ``xT`` is read in order, halving the backward's random traffic."""
    out_f, in_f = layout.shape
    gxT = gT.new_empty(in_f, gT.shape[1])
    grad_values = gT.new_empty(layout.nnz)
    _backward_fused_numba(_np(layout.crow_t), _np(layout.row_t), _np(layout.perm_t), _np(values), _np(gT), _np(xT),
                          _np(gxT), _np(grad_values))
    return gxT, grad_values


def sddmm(crow, col, gT, xT, shape, backend="numba"):
    """Entries of ``gT @ xT.T`` at the active positions of the CSR pattern, in CSR order."""
    if backend == "numba" and gT.dtype == torch.float32:
        out = gT.new_empty(col.shape[0])
        _sddmm_numba(_np(crow), _np(col), _np(gT), _np(xT), _np(out))
        return out
    pattern = torch.sparse_csr_tensor(crow, col, gT.new_zeros(col.shape[0]), shape, check_invariants=False)
    return torch.sparse.sampled_addmm(pattern, gT, xT.t(), beta=0.0).values()


class SparseLinearFunction(torch.autograd.Function):
    """``y = x @ W.T + b`` for a CSR weight; backward returns grads of ``x``, of the values only, and of ``b``.

    ``layout`` is the layer's :class:`~redr.sparse.layer.CSRLayout` (index tensors, not differentiated).
    """

    @staticmethod
    def forward(ctx, x, values, bias, layout, backend):
        xT = x.t().contiguous()  # free when x is itself a transposed view (any layer after the first)
        yT = spmm(layout.crow, layout.col, values, xT, layout.shape, bias, backend)
        ctx.save_for_backward(xT, values)
        ctx.layout, ctx.backend, ctx.has_bias = layout, backend, bias is not None
        # a batch-major input (the first layer's, or a user's leaf) gets its gradient batch-major too
        ctx.batch_major_input = x.is_contiguous() and not x.t().is_contiguous()
        return yT.t()

    @staticmethod
    def backward(ctx, grad_out):
        xT, values = ctx.saved_tensors
        layout, backend = ctx.layout, ctx.backend
        gT = grad_out.t().contiguous()
        grad_x = grad_values = grad_bias = None
        if (backend == "numba" and gT.dtype == torch.float32 and ctx.needs_input_grad[0] and ctx.needs_input_grad[1]
                and not ctx.batch_major_input and gT.numel() * 4 > FUSED_BACKWARD_MIN_BYTES):
            gxT, grad_values = backward_input_and_values(layout, values, gT, xT)
            grad_x = gxT.t()
        elif ctx.needs_input_grad[0]:
            out_f, in_f = layout.shape
            vals_t = gather_values(values, layout.perm_t, backend)
            if ctx.batch_major_input:
                grad_x = spmm(layout.crow_t, layout.row_t, vals_t, gT, (in_f, out_f), None, backend, batch_major=True)
            else:
                grad_x = spmm(layout.crow_t, layout.row_t, vals_t, gT, (in_f, out_f), None, backend).t()
        if ctx.needs_input_grad[1] and grad_values is None:
            grad_values = sddmm(layout.crow, layout.col, gT, xT, layout.shape, backend)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = gT.sum(1)
        return grad_x, grad_values, grad_bias, None, None


def dense_forward(x, values, bias, positions, shape):
    """Scatter the values into a dense matrix (differentiably) and call BLAS: for tiny layers.

    ``positions`` are the flat ``row * in + col`` of the values. The output is computed as ``W @ x.T`` and
    returned as a transposed view, the layout of the sparse kernels, so that elementwise ops between
    layers (ReLU and its backward) see one layout (mixed layouts made ReLU's backward 12x slower)."""
    out_f, in_f = shape
    weight = values.new_zeros(out_f * in_f).index_put((positions,), values).view(out_f, in_f)
    if bias is None:
        return torch.mm(weight, x.t()).t()
    return torch.addmm(bias[:, None], weight, x.t()).t()


def choose_backend(requested: str, device: torch.device, positions: int) -> str:
    """Resolve ``auto``: torch ops on accelerators, dense math for tiny CPU layers, numba otherwise."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown sparse backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    if requested == "numba" and (device.type != "cpu" or not HAVE_NUMBA):
        raise ValueError("the numba backend runs on the CPU only and needs numba installed; use backend='torch'")
    if requested != "auto":
        return requested
    if device.type != "cpu":
        return "torch"
    if positions <= DENSE_MAX_POSITIONS:
        return "dense"
    return "numba" if HAVE_NUMBA else "torch"
