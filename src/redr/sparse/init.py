"""Value initialisation of the paper (section 3; the topology: :mod:`redr.sparse.topology`).

Values: uniform in ``+-1/k_i`` for weights and ``+-1/sqrt(k_i)`` for biases, where the paper's
``k_i`` ("the number of input features of neuron i") is read as the neuron's *active* fan-in ``n`` for
sparse layers; dense layers (the baselines) use the same rule with their full fan-in.
"""
from __future__ import annotations

import math

import torch


def uniform_(tensor: torch.Tensor, bound, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``tensor`` uniformly in ``+-bound`` (a float, or a float64 tensor of ``tensor``'s shape), drawn in float64."""
    with torch.no_grad():
        values = torch.rand(tensor.shape, generator=generator, dtype=torch.float64) * (2 * bound) - bound
        return tensor.copy_(values.to(tensor.dtype))


def paper_bounds(fan_in: int) -> tuple[float, float]:
    """(weight bound, bias bound) = (1/k, 1/sqrt(k))."""
    return 1.0 / fan_in, 1.0 / math.sqrt(fan_in)


def neuron_bounds(fan_ins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`paper_bounds` per neuron (float64), for rows of any fan-in; a neuron without inputs counts as one."""
    k = fan_ins.to(torch.float64).clamp_min(1.0)
    return 1.0 / k, 1.0 / torch.sqrt(k)


def init_dense_linear_(layer: torch.nn.Linear, generator: torch.Generator | None = None) -> torch.nn.Linear:
    """The paper's init for a dense baseline layer, with its full fan-in."""
    w_bound, b_bound = paper_bounds(layer.in_features)
    uniform_(layer.weight, w_bound, generator)
    if layer.bias is not None:
        uniform_(layer.bias, b_bound, generator)
    return layer
