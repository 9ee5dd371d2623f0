"""Convert a user's model in place: every ``nn.Linear`` and ``nn.Conv2d`` becomes a truly sparse layer.

The topology is decided first, over all the layers that become sparse at once (so ``erk`` counts each
convolution's kernel, as RigL's ERK does), then each layer is built on it. :func:`sparsify` logs what it
converted (logger ``redr.sparsify``); :func:`sparsity_summary` gives the same text for any model.
"""
from __future__ import annotations

import logging
from typing import Iterable

import torch
from torch import nn

from redr.errors import UsageError
from redr.sparse.conv import SparseConv2d, check_convertible_conv
from redr.sparse.distribution import LayerShape, make_distribution
from redr.sparse.layer import SparseLinear
from redr.sparse.matrix import SparseMatrixModule
from redr.sparse.topology import partitioned_csr

__all__ = ["sparsify", "sparsity_summary"]

_log = logging.getLogger("redr.sparsify")

#: The dense modules sparsify looks at (a transposed conv is refused unless kept dense).
_CANDIDATES = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def _shape(name: str, module: nn.Module) -> LayerShape:
    if isinstance(module, nn.Linear):
        return LayerShape(name, module.out_features, module.in_features)
    return LayerShape(name, module.out_channels, module.in_channels, tuple(module.kernel_size))


def _sparse_twin(name: str, module: nn.Module, shape: LayerShape, fan_in: int, generator, backend: str,
                 init: str = "paper") -> SparseMatrixModule:
    """The sparse layer of the same shape: topology (``fan_in`` per output, partitioned, as CSR) first, then the values."""
    topology = partitioned_csr(shape.out_features, shape.inputs, fan_in, generator)
    options = dict(bias=module.bias is not None, generator=generator, backend=backend, device=module.weight.device,
                   dtype=module.weight.dtype, init=init)
    if isinstance(module, nn.Linear):
        return SparseLinear(shape.in_features, shape.out_features, topology=topology, **options)
    return SparseConv2d(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                        padding=module.padding, dilation=module.dilation, topology=topology, name=name, **options)


def sparsify(model: nn.Module, density: float | None = None, keep_dense: Iterable[str] = (),
             generator: torch.Generator | None = None, copy_weights: bool = False, backend: str = "auto", *,
             distribution=None, fan_in: int | None = None, init: str = "paper") -> nn.Module:
    """Replace every ``nn.Linear`` and ``nn.Conv2d`` of ``model`` (in place) by a sparse layer of the same shape.

    The topology: ``density`` (uniform), ``distribution`` (``"uniform"`` or ``"erk"`` with ``density``, a
    :class:`~redr.sparse.distribution.Distribution`, or ``{layer name: density or fan-in}``) or
    ``fan_in=K`` (K inputs per output neuron / channel); see :func:`~redr.sparse.distribution.make_distribution`.
    ``keep_dense`` names modules (as in ``model.named_modules()``) that stay dense, e.g. a first convolution or
    a classifier; they are outside the distribution's budget. With ``copy_weights`` the sparse values are
    taken from the dense weights at the drawn positions (and the bias is copied); otherwise they are drawn by
    ``init`` (``paper`` or ``kaiming``, on each output's active fan-in; :mod:`redr.sparse.init`).
    A convolution with ``groups != 1``, a non-zero padding mode or a transposed one must be kept dense.
    Returns ``model``; what was converted is logged (:func:`sparsity_summary`).
    """
    chosen = make_distribution(distribution, density, fan_in)
    if chosen is None:
        raise UsageError("sparsify needs a density, a fan_in or a distribution (none given)")
    keep = set(keep_dense)
    candidates = [(name, m) for name, m in model.named_modules() if isinstance(m, _CANDIDATES)]
    unknown = keep - {name for name, _ in candidates}
    if unknown:
        raise ValueError(f"keep_dense names no nn.Linear or nn.Conv2d of the model: {sorted(unknown)}; "
                         f"those layers are {sorted(name for name, _ in candidates)}")
    targets = [(name, m) for name, m in candidates if name not in keep]
    for name, m in targets:
        if not isinstance(m, nn.Linear):
            check_convertible_conv(name, m.groups, m.padding_mode, m.padding, isinstance(m, nn.ConvTranspose2d))
    shapes = [_shape(name, m) for name, m in targets]
    for (name, module), shape, k in zip(targets, shapes, chosen.fan_ins(shapes)):
        sparse = _sparse_twin(name, module, shape, k, generator, backend, init)
        if copy_weights:
            with torch.no_grad():
                rows, cols = sparse.indices
                sparse.values.copy_(module.weight.reshape(shape.out_features, -1)[rows, cols])
                if module.bias is not None:
                    sparse.bias.copy_(module.bias)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, sparse)
    _log.info("sparsify (%s):\n%s", chosen.describe(), sparsity_summary(model))
    return model


def sparsity_summary(model: nn.Module) -> str:
    """One line per weight layer: its name, kind, shape, active weights and density (sparse ones marked)."""
    lines = []
    for name, m in model.named_modules():
        if isinstance(m, SparseMatrixModule):
            lines.append(f"  {name or '<root>'}: {type(m).__name__} {m.out_features}x{m.in_features} matrix, "
                         f"{m.nnz} of {m.out_features * m.in_features} weights (density {m.density:.4f})")
        elif isinstance(m, _CANDIDATES):
            lines.append(f"  {name or '<root>'}: {type(m).__name__} kept dense, {m.weight.numel()} weights")
    return "\n".join(lines) if lines else "  (no linear or convolution layer)"
