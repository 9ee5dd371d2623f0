"""What an algorithm is: a removal score, a budget and a growth rule, put together by one :meth:`plan`.

* The **removal score** ranks the active weights of every layer; the smallest go (``|w|`` for most
  algorithms, the WoodFisher statistic for the second-order ones). It may also move the kept weights
  once the removed ones are known (Woodfisher's optimal update).
* The **budget** says how many weights each layer gives and gets: per layer, over all layers, with
  floors such as the collapse guard (:mod:`redr.redistribution.selection.budget`).
* The **growth rule** says where the removed weights come back among the inactive positions: at
  random, at the largest dense gradient, at the neurons with the largest error.

:meth:`RedistributionAlgorithm.plan` is the mechanism, the same for every algorithm: the budget picks
the removed weights by their scores, the removal score gives its value update, the budget says how
many each layer grows, the growth rule places them (it is not called when nothing grows, so a
gradient-based rule then makes no gradient pass), and the result is one plan. An algorithm is a short
class naming its three parts (see :mod:`redr.redistribution.algorithms`); one that does something else
entirely may still override :meth:`plan`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol, Sequence

import torch
from torch import nn

from redr.redistribution.mechanism.plan import LayerPlan, RedistributionPlan, no_growth
from redr.sparse.layer import SparseLinear, TopologyChange


def identity(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass
class RedistributionContext:
    """Everything an algorithm may use to make its plan.

    ``batches`` (``(x, y)`` pairs from the training data) and ``loss_fn(output, target)`` are given to
    algorithms that need gradients. ``all_reduce`` sums a tensor across data-parallel processes (the
    identity in one process): algorithms apply it to every data-dependent statistic so that all ranks
    make the same choices. ``generator`` is the only source of randomness. ``optimizers`` are the
    training's optimizers (their per-weight state, e.g. Adam's moments, may be scored with; read only).
    """

    model: nn.Module
    layers: Sequence[SparseLinear]
    alpha: float
    generator: torch.Generator
    loss_fn: Callable | None = None
    batches: Sequence | None = None
    all_reduce: Callable[[torch.Tensor], torch.Tensor] = identity
    options: dict = field(default_factory=dict)
    optimizers: Sequence[torch.optim.Optimizer] = ()


class RemovalScore:
    """Ranks the active weights: ``scores(ctx)`` gives one 1-D tensor per layer, aligned with its ``values``
    (smaller = removed first), in layer order; it may be a generator, so that a per-layer budget holds one
    layer's scores at a time."""

    def scores(self, ctx: RedistributionContext) -> Iterable[torch.Tensor]:
        raise NotImplementedError

    def value_updates(self, removes: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor] | None, dict]:
        """Called once after :meth:`scores` in the same plan, with the chosen positions: per-layer deltas for
        the ``values`` (or None) and numbers for the plan's ``info``."""
        return None, {}


class Budget(Protocol):
    """How many weights each layer gives and gets (implementations: :mod:`redr.redistribution.selection.budget`)."""

    def remove(self, scores: Iterable[torch.Tensor], layers: Sequence[SparseLinear],
               alpha: float) -> tuple[list[torch.Tensor], dict]:
        """Positions into ``values`` to remove, per layer (ascending), and numbers for the plan's ``info``."""

    def grow_counts(self, layers: Sequence[SparseLinear], removed: Sequence[int]) -> list[int] | None:
        """New weights per layer; None: the removed total grows wherever the growth rule scores best."""


class GrowthRule:
    """Where removed weights grow back. Both methods return ``(grows, info)``: ``(2, k)`` (row, col)
    positions per layer, inactive before the step, and numbers for the plan's ``info``."""

    def grow(self, ctx: RedistributionContext, counts: Sequence[int]) -> tuple[list[torch.Tensor], dict]:
        """``counts[l]`` new weights in layer ``l``."""
        raise NotImplementedError

    def grow_global(self, ctx: RedistributionContext, total: int) -> tuple[list[torch.Tensor], dict]:
        """``total`` new weights wherever this rule scores best over all layers."""
        raise TypeError(f"{type(self).__name__} grows per layer: pair it with a budget that gives per-layer counts")

    def idle_info(self, n_layers: int) -> dict:
        """The ``info`` of a plan in which nothing grows (the rule is not called then)."""
        return {}


class RedistributionAlgorithm:
    """Decides what to remove and where to grow: names ``removal``, ``budget`` and ``growth``; :meth:`plan`
    (the mechanism) puts them together.

    ``needs_step_hook``: :meth:`after_step` is called after every optimizer step (only then is a hook
    registered at all, so algorithms without it cost nothing per step). ``needs_batches``: :meth:`plan`
    needs training batches and a loss function in the context.
    """

    name = "base"
    needs_step_hook = False
    needs_batches = False
    removal: RemovalScore
    budget: Budget
    growth: GrowthRule

    def plan(self, ctx: RedistributionContext) -> RedistributionPlan:
        layers = list(ctx.layers)
        removes, info = self.budget.remove(self.removal.scores(ctx), layers, ctx.alpha)  # scores die here
        updates, more = self.removal.value_updates(removes)
        info.update(more)
        removed = [r.numel() for r in removes]
        counts = self.budget.grow_counts(layers, removed)
        total = sum(removed) if counts is None else sum(counts)
        if total == 0:
            grows, more = [no_growth(layer.values.device) for layer in layers], self.growth.idle_info(len(layers))
        elif counts is None:
            grows, more = self.growth.grow_global(ctx, total)
        else:
            grows, more = self.growth.grow(ctx, counts)
        info.update(more)
        updates = updates if updates is not None else [None] * len(layers)
        plans = [LayerPlan(r.to(layer.values.device), g.to(layer.values.device),
                           None if u is None else u.to(layer.values.device))
                 for layer, r, g, u in zip(layers, removes, grows, updates)]
        return RedistributionPlan(plans, info)

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
