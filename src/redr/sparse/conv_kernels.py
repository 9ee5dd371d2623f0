"""Compute path of :class:`~redr.sparse.conv.SparseConv2d`: unfold, then the sparse linear kernels.

``F.unfold`` turns the input ``(N, C, H, W)`` into columns ``(C * kh * kw, N * L)`` (``L`` output
positions), feature-major like the activations of :mod:`redr.sparse.kernels`, and the convolution is the
sparse matrix ``W`` times those columns:

* forward        ``yT = W @ colsT (+ b)``                 (SpMM, ``(out, N * L)``)
* grad input     ``fold(W.T @ gT)``                        (SpMM with the transposed CSR, then ``F.fold``)
* grad values    ``<gT[o, :], colsT[c, :]>`` at the active ``(o, c)`` only   (SDDMM)

so the numba kernels (CPU) and torch's CSR ops (CUDA) of the linear layer serve both layers. The unfolded
columns are saved for the backward: ``kh * kw`` times the input's memory, the price of this path.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from redr.sparse import kernels


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

    def unfold(self, x: torch.Tensor) -> torch.Tensor:
        """``(C * kh * kw, N * L)`` columns of ``x`` (contiguous, feature-major)."""
        cols = F.unfold(x, self.kernel, self.dilation, self.padding, self.stride)  # (N, K, L)
        return cols.transpose(0, 1).reshape(cols.shape[1], -1)

    def fold(self, colsT: torch.Tensor, batch: int, size: tuple[int, int]) -> torch.Tensor:
        """The adjoint of :meth:`unfold`: ``(K, N * L)`` columns summed back into ``(N, C, H, W)``."""
        cols = colsT.view(colsT.shape[0], batch, -1).transpose(0, 1)
        return F.fold(cols, size, self.kernel, self.dilation, self.padding, self.stride)


def channel_major(y: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` as ``(C, N * H * W)``, contiguous: a conv output (gradient) in the kernels' layout."""
    return y.transpose(0, 1).reshape(y.shape[1], -1)


class SparseConv2dFunction(torch.autograd.Function):
    """``conv2d(x, W, b)`` for a CSR weight matrix; backward gives grads of ``x``, of the values only, and of ``b``."""

    @staticmethod
    def forward(ctx, x, values, bias, layout, backend, geometry):
        batch, _, height, width = x.shape
        out_h, out_w = geometry.output_size(height, width)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"input {tuple(x.shape)} is smaller than the kernel ({geometry})")
        colsT = geometry.unfold(x)
        yT = kernels.spmm(layout.crow, layout.col, values, colsT, layout.shape, bias, backend)
        ctx.save_for_backward(colsT, values)
        ctx.layout, ctx.backend, ctx.geometry, ctx.has_bias = layout, backend, geometry, bias is not None
        ctx.input_size = (batch, (height, width))
        return yT.view(-1, batch, out_h, out_w).transpose(0, 1).contiguous()

    @staticmethod
    def backward(ctx, grad_out):
        colsT, values = ctx.saved_tensors
        layout, backend = ctx.layout, ctx.backend
        gT = channel_major(grad_out)
        grad_x = grad_values = grad_bias = None
        if ctx.needs_input_grad[0]:
            out_f, in_f = layout.shape
            gcolsT = kernels.spmm(layout.crow_t, layout.row_t, values[layout.perm_t], gT, (in_f, out_f), None, backend)
            grad_x = ctx.geometry.fold(gcolsT, *ctx.input_size)
        if ctx.needs_input_grad[1]:
            grad_values = kernels.sddmm(layout.crow, layout.col, gT, colsT, layout.shape, backend)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = gT.sum(1)
        return grad_x, grad_values, grad_bias, None, None, None
