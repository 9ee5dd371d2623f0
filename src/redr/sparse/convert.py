"""Build the paper's MLPs; list and count a model's sparse layers (converting a user's model: :mod:`redr.sparse.sparsify`)."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from redr.errors import UsageError
from redr.sparse.distribution import LayerShape, make_distribution
from redr.sparse.init import init_dense_linear_
from redr.sparse.layer import SparseLinear
from redr.sparse.matrix import SparseMatrixModule
from redr.sparse.sparsify import sparsify  # noqa: F401  (its home before convolutions; kept importable here)
from redr.sparse.topology import partitioned_csr


def sparse_layers(model: nn.Module) -> list[tuple[str, SparseLinear]]:
    """The model's sparse layers with their names, in definition order (the order of every algorithm)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SparseMatrixModule)]


def _sparse_linear(shape: LayerShape, fan_in: int, generator, **options) -> SparseLinear:
    """The topology first (partitioned, ``fan_in`` per neuron, as CSR), then the layer built on it."""
    topology = partitioned_csr(shape.out_features, shape.in_features, fan_in, generator)
    return SparseLinear(shape.in_features, shape.out_features, topology=topology, generator=generator, **options)


def _mlp_layers(sizes: Sequence[int], dense_last: bool) -> list[tuple[LayerShape, bool]]:
    """Each linear layer of :func:`build_mlp` (named by its index in the ``nn.Sequential``) and whether it is sparse."""
    if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
        raise ValueError(f"an MLP needs at least two positive layer sizes, got {list(sizes)}")
    n = len(sizes) - 1
    return [(LayerShape(str(2 * i), int(sizes[i + 1]), int(sizes[i])), not (dense_last and i == n - 1)) for i in range(n)]


def mlp_layer_shapes(sizes: Sequence[int], dense_last: bool = False) -> list[LayerShape]:
    """The sparse layers :func:`build_mlp` would build, before building them (a run's options are checked on these)."""
    return [shape for shape, sparse in _mlp_layers(sizes, dense_last) if sparse]


#: Dense layers (of :func:`build_mlp`) with at least this many inputs are :class:`FeatureMajorLinear`; smaller
#: ones stay ``nn.Linear`` (the paper's nets: their results stay bit for bit what they were).
FEATURE_MAJOR_MIN_INPUTS = 2**16


class FeatureMajorLinear(nn.Linear):
    """``nn.Linear`` for a wide layer fed by a sparse one: the sparse kernels return a transposed (feature-major)
    view, and ``F.linear`` on such a view measured 22x slower than one BLAS call on the contiguous transpose,
    ``addmm(b, W, x.T).T`` (262,144 inputs, batch 128: 6.7 s against 0.3 s; at 1,048,576 inputs it was most of a
    training step). The same parameters and ``state_dict`` as ``nn.Linear``; other inputs take its path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.is_contiguous() or not x.t().is_contiguous():
            return super().forward(x)
        if self.bias is None:
            return torch.mm(self.weight, x.t()).t()
        return torch.addmm(self.bias[:, None], self.weight, x.t()).t()


def build_mlp(sizes: Sequence[int], density: float | None = None, dense_last: bool = False,
              generator: torch.Generator | None = None, backend: str = "auto", device=None, *,
              distribution=None, fan_in: int | None = None, init: str | None = None) -> nn.Sequential:
    """An MLP ``sizes[0] - ... - sizes[-1]`` with ReLU after every hidden layer (logits out).

    With no ``density``, ``distribution`` or ``fan_in`` it is the dense baseline (``nn.Linear``);
    otherwise every layer is a :class:`SparseLinear` with the fan-in the distribution gives it (as in
    :func:`sparsify`), except the last when ``dense_last`` (outside the budget). The layers are named
    ``"0"``, ``"2"``, ... (their index in the ``nn.Sequential``), also in a per-layer mapping. ``init``:
    the values rule of every layer (:mod:`redr.sparse.init`); by default ``paper`` for a sparse net (its
    dense last layer too) and ``kaiming`` (PyTorch's ``nn.Linear`` rule) for the dense baseline, as the
    paper's own baselines were plain PyTorch layers.
    """
    slots = _mlp_layers(sizes, dense_last)
    chosen = make_distribution(distribution, density, fan_in)
    sparse_shapes = [shape for shape, sparse in slots if sparse] if chosen is not None else []
    fan_ins = dict(zip((shape.name for shape in sparse_shapes), chosen.fan_ins(sparse_shapes) if chosen else []))
    init = init or ("paper" if chosen is not None else "kaiming")
    layers: list[nn.Module] = []
    for i, (shape, _) in enumerate(slots):
        if shape.name in fan_ins:
            layer = _sparse_linear(shape, fan_ins[shape.name], generator, backend=backend, device=device, init=init)
        else:
            kind = FeatureMajorLinear if shape.in_features >= FEATURE_MAJOR_MIN_INPUTS else nn.Linear
            layer = init_dense_linear_(kind(shape.in_features, shape.out_features, device=device), generator, init)
        layers.append(layer)
        if i < len(slots) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def count_parameters(model: nn.Module) -> int:
    """Trainable numbers: a sparse layer counts its nnz values plus bias, a dense one every entry."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_weights(model: nn.Module) -> int:
    """Connections only (biases excluded): active values of sparse layers, every weight of dense ones.

    This is the count the paper matches its parameter-equivalent baselines on (33 and 79 hidden units
    at d=0.1 come out only when biases are left out of both sides).
    """
    total = 0
    for module in model.modules():
        if isinstance(module, SparseMatrixModule):
            total += module.nnz
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            total += module.weight.numel()
    return total


def parameter_equivalent_sizes(sizes: Sequence[int], target_weights: int) -> list[int]:
    """Same depth, one shared hidden width: the smallest width with at least ``target_weights`` weights.

    The paper's dense baselines: 784-33-33-10 for the KMNIST net at d=0.1, 21-79-79-79-1 for HIGGS
    (targets from :func:`count_weights` of the sparse nets).
    """
    inputs, outputs, hidden = sizes[0], sizes[-1], len(sizes) - 2
    if hidden < 1:
        raise ValueError("a parameter-equivalent net needs at least one hidden layer")

    def weights(width: int) -> int:
        dims = [inputs] + [width] * hidden + [outputs]
        return sum(a * b for a, b in zip(dims[:-1], dims[1:]))

    width = 1
    while weights(width) < target_weights:
        width += 1
    return [inputs] + [width] * hidden + [outputs]
