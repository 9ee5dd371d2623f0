"""Value initialisation: the paper's rule and PyTorch's ``nn.Linear`` rule (the topology: :mod:`redr.sparse.topology`).

``paper`` (section 3): uniform in ``+-1/k_i`` for weights and ``+-1/sqrt(k_i)`` for biases, where the
paper's ``k_i`` ("the number of input features of neuron i") is read as the neuron's *active* fan-in
for sparse layers. ``kaiming``: PyTorch's ``nn.Linear`` default (``kaiming_uniform_(a=sqrt(5))`` for the
weights, i.e. ``+-1/sqrt(k)``, and ``+-1/sqrt(k)`` for the bias), with ``k`` the active fan-in of a
sparse neuron or the full fan-in of a dense layer. The paper's dense baselines were plain PyTorch
networks, so the dense baselines use ``kaiming``; the paper's rule on a dense 784-input layer would
shrink its weights to ``+-1/784`` and slow it down (issue 16). Every value is drawn from the given
generator (bit-reproducible), never from torch's global one.
"""
from __future__ import annotations

import torch

from redr.sparse.topology import on_this_thread, row_chunks

#: The value-initialisation rules, by name (``--init``).
INITS = ("paper", "kaiming")


def check_init(init: str) -> str:
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    return init


def uniform_(tensor: torch.Tensor, bound, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``tensor`` uniformly in ``+-bound`` (a float, or a float64 tensor of ``tensor``'s shape), drawn in float64."""
    with torch.no_grad():
        values = torch.rand(tensor.shape, generator=generator, dtype=torch.float64) * (2 * bound) - bound
        return tensor.copy_(values.to(tensor.dtype))


def uniform_rows_(values: torch.Tensor, crow: torch.Tensor, row_bound: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill a CSR layer's ``values`` uniformly in ``+-row_bound[row]`` of each entry's row, in chunks of rows.

    The same numbers as :func:`uniform_` with the bound gathered per entry (the generator's stream is read
    in the same order), without whole-layer float64 temporaries."""
    with torch.no_grad(), on_this_thread():
        for row, end_row, start, end in row_chunks(crow):
            bound = row_bound[row:end_row].repeat_interleave((crow[row + 1:end_row + 1] - crow[row:end_row]).long())
            uniform_(values[start:end], bound, generator)
    return values


def neuron_bounds(fan_ins: torch.Tensor, init: str = "paper") -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) bounds per neuron (float64) for rows of any fan-in; a neuron without inputs counts as one.

    ``paper``: ``(1/k, 1/sqrt(k))``; ``kaiming``: ``(1/sqrt(k), 1/sqrt(k))``.
    """
    k = fan_ins.to(torch.float64).clamp_min(1.0)
    bias = 1.0 / torch.sqrt(k)
    return (1.0 / k if check_init(init) == "paper" else bias), bias


def init_dense_linear_(layer: torch.nn.Linear, generator: torch.Generator | None = None,
                       init: str = "kaiming") -> torch.nn.Linear:
    """A dense layer's values by ``init`` with its full fan-in (default: ``nn.Linear``'s own rule, drawn from ``generator``)."""
    w_bound, b_bound = (float(b[0]) for b in neuron_bounds(torch.tensor([layer.in_features]), init))
    uniform_(layer.weight, w_bound, generator)
    if layer.bias is not None:
        uniform_(layer.bias, b_bound, generator)
    return layer
