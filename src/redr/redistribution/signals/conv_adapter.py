"""A sparse layer's input and output gradient as the rows of a matrix product, for linear and conv layers alike.

The dense weight gradient of a sparse layer is ``g.T @ x`` once ``x`` (``R x in_features``) and ``g``
(``R x out_features``) are written so that row ``r`` pairs one input with its output: for a linear layer a
row is a sample; for a convolution it is a (sample, output position) pair, ``x`` the unfolded input
(``F.unfold``, the ``in_channels * kh * kw`` columns of the layer's matrix) and ``g`` the output gradient at
that position. Then ``dL/dW[rows, :] = sum over batch and positions of g[:, rows, p] * unfold(x)[:, :, p]``,
which :class:`~redr.redistribution.signals.dense_gradient.LayerGradient` computes tile by tile, never the
whole dense gradient at once; the per-neuron error of Redr-Loss is then summed per output channel.
"""
from __future__ import annotations

import torch

from redr.sparse.conv import SparseConv2d


def layer_input_rows(layer, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as ``(R, in_features)`` rows (a conv's unfolded patches, one row per sample and position)."""
    if isinstance(layer, SparseConv2d):
        g = layer.geometry
        cols = torch.nn.functional.unfold(x, g.kernel, g.dilation, g.padding, g.stride)  # (N, K, L)
        return cols.transpose(1, 2).reshape(-1, layer.in_features)
    return x.reshape(-1, layer.in_features)


def layer_output_rows(layer, grad: torch.Tensor) -> torch.Tensor:
    """The gradient of the layer's output as ``(R, out_features)`` rows, in the order of :func:`layer_input_rows`."""
    if isinstance(layer, SparseConv2d):
        return grad.permute(0, 2, 3, 1).reshape(-1, layer.out_features)
    return grad.reshape(-1, layer.out_features)
