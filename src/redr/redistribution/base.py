"""The interface every redistribution algorithm implements, and magnitude removal shared by most."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from redr.redistribution.plan import LayerPlan, RedistributionPlan, keys_to_positions
from redr.redistribution.select import random_inactive_keys, smallest_k
from redr.sparse.layer import SparseLinear, TopologyChange
from redr.sparse.layout import key_dtype


def identity(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass
class RedistributionContext:
    """Everything an algorithm may use to make its plan.

    ``batches`` (``(x, y)`` pairs from the training data) and ``loss_fn(output, target)`` are given to
    algorithms that need gradients. ``all_reduce`` sums a tensor across data-parallel processes (the
    identity in one process): algorithms apply it to every data-dependent statistic so that all ranks
    make the same choices. ``generator`` is the only source of randomness.
    """

    model: nn.Module
    layers: Sequence[SparseLinear]
    alpha: float
    generator: torch.Generator
    loss_fn: Callable | None = None
    batches: Sequence | None = None
    all_reduce: Callable[[torch.Tensor], torch.Tensor] = identity
    options: dict = field(default_factory=dict)


class RedistributionAlgorithm:
    """Decides what to remove and where to grow. Subclasses implement :meth:`plan`.

    ``needs_step_hook``: :meth:`after_step` is called after every optimizer step (only then is a hook
    registered at all, so algorithms without it cost nothing per step). ``needs_batches``: :meth:`plan`
    needs training batches and a loss function in the context.
    """

    name = "base"
    needs_step_hook = False
    needs_batches = False

    def plan(self, ctx: RedistributionContext) -> RedistributionPlan:
        raise NotImplementedError

    def after_step(self, layers: Sequence[SparseLinear]) -> None:
        """Called after every optimizer step when ``needs_step_hook``; gradients are still in ``.grad``."""

    def on_topology_changed(self, layers: Sequence[SparseLinear], changes: Sequence[TopologyChange]) -> None:
        """Called after a plan was applied (e.g. to reset statistics that depend on the topology)."""

    def options(self) -> dict:
        """The algorithm's options, for config files and reports."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def removal_count(nnz: int, alpha: float) -> int:
    """How many of ``nnz`` active weights a step with fraction ``alpha`` moves: ``floor(alpha * nnz)``."""
    return int(alpha * nnz)


def magnitude_removal(layer: SparseLinear, alpha: float) -> torch.Tensor:
    """Positions of the ``floor(alpha * nnz)`` active weights of smallest ``|w|`` (ties: lower position)."""
    return smallest_k(layer.values.detach().abs(), removal_count(layer.nnz, alpha))


def random_growth(layer: SparseLinear, k: int, generator: torch.Generator) -> torch.Tensor:
    """``(2, k)`` positions drawn uniformly among the layer's currently inactive ones."""
    active = layer.layout.keys(key_dtype(layer.layout.shape))
    keys = random_inactive_keys(active, layer.in_features * layer.out_features, k, generator)
    return keys_to_positions(keys, layer.in_features)


class StaticSparse(RedistributionAlgorithm):
    """No redistribution: the topology stays as initialised (the paper's "sparse, no redistribution")."""

    name = "none"

    def plan(self, ctx: RedistributionContext) -> RedistributionPlan:
        return RedistributionPlan([LayerPlan.empty(layer.values.device) for layer in ctx.layers])
