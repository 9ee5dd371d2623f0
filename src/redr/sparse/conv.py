"""``SparseConv2d``: a 2-D convolution that stores and computes only its active weights.

The weight ``(out_channels, in_channels, kh, kw)`` is held as the sparse matrix
``(out_channels, in_channels * kh * kw)`` of :class:`~redr.sparse.matrix.SparseMatrixModule` (column
``c * kh * kw + i * kw + j`` is input channel ``c`` at kernel offset ``(i, j)``, the order of
``weight.reshape(out, -1)`` and of ``F.unfold``), so topology changes, optimizer state and state dicts are
those of :class:`~redr.sparse.SparseLinear`, and every redistribution algorithm sees a matrix.

Compute: unfold + SpMM (:mod:`redr.sparse.conv_kernels`): the input is unfolded once into
``(in_channels * kh * kw, batch * positions)`` and the three products of a sparse linear layer (forward
SpMM, input-gradient SpMM with the transposed CSR then fold, value-gradient SDDMM) run on it with the
numba kernels on the CPU or torch's CSR ops (cuSPARSE) on CUDA. A direct sparse convolution (numba, no
unfold) was measured slower; the numbers are in ``docs/conv.md``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from redr.errors import UsageError
from redr.sparse.conv_kernels import ConvGeometry, SparseConv2dFunction
from redr.sparse.distribution import LayerShape, check_density, layer_fan_in
from redr.sparse.matrix import SparseMatrixModule
from redr.sparse.topology import CSRTopology, partitioned_csr

__all__ = ["SparseConv2d", "check_convertible_conv"]


def check_convertible_conv(name: str, groups: int = 1, padding_mode: str = "zeros", padding=0, transposed: bool = False) -> None:
    """Refuse, naming the layer and the fix, a convolution that :class:`SparseConv2d` cannot stand in for."""
    fix = f"keep it dense (sparsify(..., keep_dense=[{name!r}]))"
    if transposed:
        raise UsageError(f"layer {name!r} is a transposed convolution, which redr has no sparse version of; {fix}")
    if groups != 1:
        raise UsageError(f"layer {name!r} has groups={groups}; SparseConv2d supports groups=1 only; {fix}")
    if padding_mode != "zeros":
        raise UsageError(f"layer {name!r} has padding_mode={padding_mode!r}; SparseConv2d pads with zeros only; {fix}")
    if isinstance(padding, str):
        raise UsageError(f"layer {name!r} has padding={padding!r}; SparseConv2d takes integer padding; "
                         f"give the padding as numbers or {fix}")


class SparseConv2d(SparseMatrixModule):
    """A drop-in for ``nn.Conv2d`` (``groups=1``, zero padding) holding only the active weights.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, bias: as for ``nn.Conv2d``.
        density: fraction of active weights: ``round(density * in_channels * kh * kw)`` inputs per output
            channel, placed by :func:`~redr.sparse.topology.partitioned_csr` (or give ``topology``).
        generator: the source of every random choice (topology and values).
        backend: ``auto`` (numba on the CPU, torch on CUDA, dense math for tiny layers), ``numba``, ``torch``
            or ``dense``, as for :class:`~redr.sparse.SparseLinear`.
        topology: ``(rows, cols)`` of active matrix entries (row-major, no duplicates) instead of ``density``.
        name: the layer's name in error messages.

    ``in_features``/``out_features`` are the matrix's dims (``in_channels * kh * kw``, ``out_channels``).
    Values start uniform in ``+-1/k`` and the bias in ``+-1/sqrt(k)``, ``k`` the channel's active fan-in
    (``init="kaiming"``: both ``+-1/sqrt(k)``, ``nn.Conv2d``'s rule on the active fan-in).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", density: float | None = None,
                 generator: torch.Generator | None = None, backend: str = "auto", device=None, dtype=None, *,
                 topology: tuple[torch.Tensor, torch.Tensor] | CSRTopology | None = None, name: str = "SparseConv2d",
                 init: str = "paper"):
        super().__init__()
        check_convertible_conv(name, groups, padding_mode, padding)
        kh, kw = _pair(kernel_size)
        geometry = ConvGeometry((kh, kw), _pair(stride), _pair(padding), _pair(dilation))
        if min(in_channels, out_channels, kh, kw) < 1 or min(geometry.stride + geometry.dilation) < 1 or min(geometry.padding) < 0:
            raise ValueError(f"layer {name!r}: channels, kernel, stride and dilation must be positive and padding >= 0, "
                             f"got in={in_channels}, out={out_channels}, {geometry}")
        if (density is None) == (topology is None):
            raise ValueError("give a SparseConv2d either a density or a topology (rows, cols)")
        self.in_channels, self.out_channels, self.geometry = in_channels, out_channels, geometry
        # nn.Conv2d's attribute names, for code that reads them
        self.kernel_size, self.stride, self.padding, self.dilation = geometry.kernel, geometry.stride, geometry.padding, geometry.dilation
        if topology is None:
            shape = LayerShape(name, out_channels, in_channels, (kh, kw))
            fan_in = layer_fan_in(shape, density=check_density(density, "density"), asked=f"density={density}",
                                  fix="raise the density or keep the layer dense")
            topology = partitioned_csr(out_channels, shape.inputs, fan_in, generator)
        self._init_matrix(out_channels, in_channels * kh * kw, topology, bias, generator, backend, device, dtype, init)

    @classmethod
    def from_topology(cls, in_channels: int, out_channels: int, kernel_size, rows: torch.Tensor, cols: torch.Tensor,
                      **options) -> "SparseConv2d":
        """A layer whose active matrix entries are exactly at ``(rows[i], cols[i])`` (options as for the constructor)."""
        return cls(in_channels, out_channels, kernel_size, topology=(rows, cols), **options)

    def to_dense(self) -> torch.Tensor:
        """The ``(out_channels, in_channels, kh, kw)`` weight, zeros at inactive positions."""
        return self.matrix_dense().view(self.out_channels, self.in_channels, *self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (batch, {self.in_channels}, height, width), got shape {tuple(x.shape)}")
        backend = self.resolved_backend()
        g = self.geometry
        if backend == "dense":
            shape = (self.out_features, self.in_features)
            weight = self.values.new_zeros(shape[0] * shape[1]).index_put((self.flat_positions(),), self.values)
            weight = weight.view(self.out_channels, self.in_channels, *g.kernel)
            return F.conv2d(x, weight, self.bias, g.stride, g.padding, g.dilation)
        return SparseConv2dFunction.apply(x, self.values, self.bias, self.layout, backend, g)

    def extra_repr(self) -> str:
        g = self.geometry
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={g.kernel}, stride={g.stride}, padding={g.padding}, "
                f"dilation={g.dilation}, nnz={self.nnz}, density={self.density:.4f}, bias={self.bias is not None}, "
                f"backend={self.backend}")
