"""Compute paths of :class:`~redr.sparse.conv.SparseConv2d`: unfold, then the sparse linear kernels (the torch
path, and the numba path where :func:`redr.sparse.conv_direct.use_direct` does not take the direct kernels).

``F.unfold`` turns the input ``(N, C, H, W)`` into columns ``(C * kh * kw, N * L)`` (``L`` output
positions), feature-major like the activations of :mod:`redr.sparse.kernels`, and the convolution is the
sparse matrix ``W`` times those columns:

* forward        ``yT = W @ colsT (+ b)``                 (SpMM, ``(out, N * L)``)
* grad input     ``fold(W.T @ gT)``     (numba: the transposed CSR scattered straight into the image; torch:
                 SpMM with the transposed CSR, then ``F.fold``)
* grad values    ``<gT[o, :], colsT[c, :]>`` at the active ``(o, c)`` only   (SDDMM)

so the numba kernels (CPU) and torch's CSR ops (CUDA) of the linear layer serve both layers. The unfolded
columns are saved for the backward: ``kh * kw`` times the input's memory, the price of this path.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from redr.sparse import kernels
from redr.sparse.conv_direct import DirectConv, use_direct

if kernels.HAVE_NUMBA:
    from numba import njit, prange

    # torch's CPU unfold/fold plus the transposing copy into the kernels' layout measured 0.6 s / 0.2 s on the
    # issue's shape (128 x 64 x 14 x 14, 3x3) on 2 cores; im2col writes that layout directly, and the input
    # gradient never materialises the unfolded gradient (W.T @ gT is scattered straight into the image).

    @njit(cache=True)
    def _reach(n_in, n_out, s, p, d, t):  # pragma: no cover - compiled
        """Outputs ``o`` in ``[lo, hi)`` whose input ``o * s - p + t * d`` (kernel tap ``t``) lies in ``[0, n_in)``."""
        lo = max(0, (p - t * d + s - 1) // s)
        hi = min(n_out, (n_in - 1 + p - t * d) // s + 1)
        return lo, max(lo, hi)

    @njit(parallel=True, fastmath=True, cache=True)
    def _im2col_numba(x, kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w, colsT):  # pragma: no cover - compiled
        """``colsT[(c, i, j), (n, oh, ow)] = x[n, c, oh * sh - ph + i * dh, ow * sw - pw + j * dw]`` (0 outside)."""
        batch, channels, height, width = x.shape
        positions = out_h * out_w
        for row in prange(channels * kh * kw):
            c, i, j = row // (kh * kw), (row // kw) % kh, row % kw
            h_lo, h_hi = _reach(height, out_h, sh, ph, dh, i)
            w_lo, w_hi = _reach(width, out_w, sw, pw, dw, j)
            dst = colsT[row]
            for n in range(batch):
                for oh in range(out_h):
                    base = n * positions + oh * out_w
                    if oh < h_lo or oh >= h_hi:
                        dst[base:base + out_w] = 0.0
                        continue
                    dst[base:base + w_lo] = 0.0
                    dst[base + w_hi:base + out_w] = 0.0
                    ih = oh * sh - ph + i * dh
                    for ow in range(w_lo, w_hi):
                        dst[base + ow] = x[n, c, ih, ow * sw - pw + j * dw]

    @njit(parallel=True, fastmath=True, cache=True)
    def _grad_input_numba(crow_t, row_t, vals_t, gT, kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w, gx):  # pragma: no cover
        """``gx`` (zeroed) ``= fold(W.T @ gT)`` without the unfolded ``(K, N * L)`` intermediate; one channel per job."""
        batch, channels, height, width = gx.shape
        positions = out_h * out_w
        for c in prange(channels):
            for i in range(kh):
                h_lo, h_hi = _reach(height, out_h, sh, ph, dh, i)
                for j in range(kw):
                    w_lo, w_hi = _reach(width, out_w, sw, pw, dw, j)
                    r = (c * kh + i) * kw + j
                    for e in range(crow_t[r], crow_t[r + 1]):
                        w, src = vals_t[e], gT[row_t[e]]
                        for n in range(batch):
                            for oh in range(h_lo, h_hi):
                                ih = oh * sh - ph + i * dh
                                base = n * positions + oh * out_w
                                for ow in range(w_lo, w_hi):
                                    gx[n, c, ih, ow * sw - pw + j * dw] += w * src[base + ow]


@dataclass(frozen=True)
class ConvGeometry:
    """A convolution's ``kernel``, ``stride``, ``padding`` and ``dilation``, each ``(height, width)``."""

    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        sizes = []
        for n, k, s, p, d in zip((height, width), self.kernel, self.stride, self.padding, self.dilation):
            sizes.append((n + 2 * p - d * (k - 1) - 1) // s + 1)
        return sizes[0], sizes[1]

    def _numba_args(self, height: int, width: int) -> tuple:
        return (*self.kernel, *self.stride, *self.padding, *self.dilation, *self.output_size(height, width))

    def unfold(self, x: torch.Tensor, backend: str = "torch") -> torch.Tensor:
        """``(C * kh * kw, N * L)`` columns of ``x`` (contiguous, feature-major)."""
        if backend == "numba" and x.dtype == torch.float32:
            x = x.detach().contiguous()
            batch, channels, height, width = x.shape
            out_h, out_w = self.output_size(height, width)
            colsT = x.new_empty(channels * self.kernel[0] * self.kernel[1], batch * out_h * out_w)
            _im2col_numba(x.numpy(), *self._numba_args(height, width), colsT.numpy())
            return colsT
        cols = F.unfold(x, self.kernel, self.dilation, self.padding, self.stride)  # (N, K, L)
        return cols.transpose(0, 1).reshape(cols.shape[1], -1)

    def fold(self, colsT: torch.Tensor, batch: int, size: tuple[int, int]) -> torch.Tensor:
        """The adjoint of :meth:`unfold`: ``(K, N * L)`` columns summed back into ``(N, C, H, W)``."""
        cols = colsT.view(colsT.shape[0], batch, -1).transpose(0, 1)
        return F.fold(cols, size, self.kernel, self.dilation, self.padding, self.stride)

    def grad_input(self, layout, values: torch.Tensor, gT: torch.Tensor, batch: int, size: tuple[int, int],
                   backend: str) -> torch.Tensor:
        """``fold(W.T @ gT)``: the input gradient from the output gradient ``gT`` (``(out, N * L)``)."""
        out_f, in_f = layout.shape
        vals_t = values[layout.perm_t]
        if backend == "numba" and gT.dtype == torch.float32:
            gx = gT.new_zeros(batch, in_f // (self.kernel[0] * self.kernel[1]), *size)
            _grad_input_numba(layout.crow_t.numpy(), layout.row_t.numpy(), vals_t.detach().numpy(), gT.numpy(),
                              *self._numba_args(*size), gx.numpy())
            return gx
        gcolsT = kernels.spmm(layout.crow_t, layout.row_t, vals_t, gT, (in_f, out_f), None, backend)
        return self.fold(gcolsT, batch, size)


def channel_major(y: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` as ``(C, N * H * W)``, contiguous: a conv output (gradient) in the kernels' layout."""
    return y.transpose(0, 1).reshape(y.shape[1], -1)


class SparseConv2dFunction(torch.autograd.Function):
    """``conv2d(x, W, b)`` for a CSR weight matrix; backward gives grads of ``x``, of the values only, and of ``b``."""

    @staticmethod
    def forward(ctx, x, values, bias, layout, backend, geometry, algorithm="auto"):
        batch, _, height, width = x.shape
        out_h, out_w = geometry.output_size(height, width)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"input {tuple(x.shape)} is smaller than the kernel ({geometry})")
        ctx.layout, ctx.backend, ctx.geometry, ctx.has_bias = layout, backend, geometry, bias is not None
        ctx.input_size = (batch, (height, width))
        ctx.direct = use_direct(algorithm, geometry, backend, x.dtype, batch, out_w)
        if ctx.direct:  # the padded (C, H, W, n) input chunks are all the backward keeps
            ctx.xpads = DirectConv.pad_input(x, geometry)
            ctx.save_for_backward(values)
            return DirectConv.forward(layout, values, bias, ctx.xpads, geometry, (out_h, out_w))
        colsT = geometry.unfold(x, backend)
        yT = kernels.spmm(layout.crow, layout.col, values, colsT, layout.shape, bias, backend)
        ctx.save_for_backward(colsT, values)
        return yT.view(-1, batch, out_h, out_w).transpose(0, 1).contiguous()

    @staticmethod
    def backward(ctx, grad_out):
        layout, backend = ctx.layout, ctx.backend
        grad_x = grad_values = grad_bias = None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum((0, 2, 3))
        if ctx.direct:
            if ctx.xpads is None:
                raise RuntimeError("SparseConv2d(algorithm='direct') frees its saved input after the first backward; "
                                   "for a second backward through the same graph use algorithm='unfold'")
            (values,) = ctx.saved_tensors
            batch, (height, width) = ctx.input_size
            size = (batch, ctx.xpads[0].shape[0], height, width)
            grad_x, grad_values = DirectConv.backward(layout, values, grad_out, ctx.xpads, ctx.geometry, size,
                                                      ctx.needs_input_grad[0], ctx.needs_input_grad[1])
            ctx.xpads = None
            return grad_x, grad_values, grad_bias, None, None, None, None
        saved, values = ctx.saved_tensors
        gT = channel_major(grad_out)
        if ctx.needs_input_grad[0]:
            grad_x = ctx.geometry.grad_input(layout, values, gT, *ctx.input_size, backend)
        if ctx.needs_input_grad[1]:
            grad_values = kernels.sddmm(layout.crow, layout.col, gT, saved, layout.shape, backend)
        return grad_x, grad_values, grad_bias, None, None, None, None
