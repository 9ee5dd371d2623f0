"""Topology and value initialisation of the paper (section 3, after Ertl).

Topology: every output neuron gets the same number ``n`` of active inputs; its input range
``[0, in_features)`` is cut into ``n`` equal partitions and one active input is drawn uniformly in each.
This spreads each neuron's inputs evenly (no clumps, no duplicates) while staying random.

Values: uniform in ``+-1/k_i`` for weights and ``+-1/sqrt(k_i)`` for biases, where the paper's
``k_i`` ("the number of input features of neuron i") is read as the neuron's *active* fan-in ``n`` for
sparse layers; dense layers (the baselines) use the same rule with their full fan-in.
"""
from __future__ import annotations

import math

import torch


def fan_in_for_density(in_features: int, density: float) -> int:
    """Active inputs per neuron: ``round(density * in_features)``, at least 1."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    return max(1, min(in_features, int(round(density * in_features))))


def partitioned_topology(out_features: int, in_features: int, fan_in: int, generator: torch.Generator | None = None):
    """(rows, cols) int64 in row-major order: ``fan_in`` inputs per neuron, one per equal partition."""
    if not 1 <= fan_in <= in_features:
        raise ValueError(f"fan_in must be in [1, {in_features}], got {fan_in}")
    part = torch.arange(fan_in + 1, dtype=torch.int64)
    bounds = part * in_features // fan_in  # partition p is [bounds[p], bounds[p+1]), never empty
    starts, widths = bounds[:-1], bounds[1:] - bounds[:-1]
    u = torch.rand(out_features, fan_in, generator=generator, dtype=torch.float64)
    cols = starts + torch.clamp((u * widths).long(), max=widths - 1)
    rows = torch.arange(out_features, dtype=torch.int64).repeat_interleave(fan_in)
    return rows, cols.reshape(-1)


def uniform_(tensor: torch.Tensor, bound: float, generator: torch.Generator | None = None) -> torch.Tensor:
    with torch.no_grad():
        values = torch.rand(tensor.shape, generator=generator, dtype=torch.float64) * (2 * bound) - bound
        return tensor.copy_(values.to(tensor.dtype))


def paper_bounds(fan_in: int) -> tuple[float, float]:
    """(weight bound, bias bound) = (1/k, 1/sqrt(k))."""
    return 1.0 / fan_in, 1.0 / math.sqrt(fan_in)


def init_dense_linear_(layer: torch.nn.Linear, generator: torch.Generator | None = None) -> torch.nn.Linear:
    """The paper's init for a dense baseline layer, with its full fan-in."""
    w_bound, b_bound = paper_bounds(layer.in_features)
    uniform_(layer.weight, w_bound, generator)
    if layer.bias is not None:
        uniform_(layer.bias, b_bound, generator)
    return layer
