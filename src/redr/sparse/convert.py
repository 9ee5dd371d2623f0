"""Build the paper's MLPs and convert a user's ``nn.Linear`` model into a sparse one."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from redr.sparse.init import init_dense_linear_
from redr.sparse.layer import SparseLinear


def sparse_layers(model: nn.Module) -> list[tuple[str, SparseLinear]]:
    """The model's sparse layers with their names, in definition order (the order of every algorithm)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SparseLinear)]


def sparsify(model: nn.Module, density: float, keep_dense: Iterable[str] = (), generator: torch.Generator | None = None,
             copy_weights: bool = False, backend: str = "auto") -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (in place) by a :class:`SparseLinear` of the same shape.

    ``keep_dense`` names modules (as in ``model.named_modules()``) that stay dense, e.g. the paper's
    HIGGS output layer. With ``copy_weights`` the sparse values are taken from the dense weights at
    the drawn positions (and the bias is copied); otherwise the paper's init is used.
    """
    keep = set(keep_dense)
    names = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    unknown = keep - names
    if unknown:
        raise ValueError(f"keep_dense names no nn.Linear of the model: {sorted(unknown)}; linear layers are {sorted(names)}")
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or name in keep:
            continue
        sparse = SparseLinear(module.in_features, module.out_features, density, bias=module.bias is not None,
                              generator=generator, backend=backend, device=module.weight.device, dtype=module.weight.dtype)
        if copy_weights:
            with torch.no_grad():
                rows, cols = sparse.indices
                sparse.values.copy_(module.weight[rows, cols])
                if module.bias is not None:
                    sparse.bias.copy_(module.bias)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, sparse)
    return model


def build_mlp(sizes: Sequence[int], density: float | None = None, dense_last: bool = False,
              generator: torch.Generator | None = None, backend: str = "auto", device=None) -> nn.Sequential:
    """An MLP ``sizes[0] - ... - sizes[-1]`` with ReLU after every hidden layer (logits out).

    ``density=None`` builds the dense baseline (``nn.Linear`` with the paper's init); otherwise every
    layer is a :class:`SparseLinear` at that density, except the last when ``dense_last``.
    """
    if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
        raise ValueError(f"an MLP needs at least two positive layer sizes, got {list(sizes)}")
    layers: list[nn.Module] = []
    n = len(sizes) - 1
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if density is None or (dense_last and i == n - 1):
            layer = init_dense_linear_(nn.Linear(fan_in, fan_out, device=device), generator)
        else:
            layer = SparseLinear(fan_in, fan_out, density, generator=generator, backend=backend, device=device)
        layers.append(layer)
        if i < n - 1:
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
        if isinstance(module, SparseLinear):
            total += module.nnz
        elif isinstance(module, nn.Linear):
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
