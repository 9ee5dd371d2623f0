"""``Redistributor``: the object a training loop talks to (two added lines).

    redistributor = Redistributor(model, optimizer, "random", total_epochs=epochs)
    ...
    for epoch in range(1, epochs + 1):
        train_one_epoch(...)
        redistributor.step(epoch)            # gradient-based algorithms: step(epoch, batches=[(x, y)])

It owns the schedule, the algorithm, the seeded generator and the history, and applies every plan
through :func:`~redr.redistribution.mechanism.apply_plan`. Algorithms that need a per-step hook (Woodfisher
accumulates its Fisher) get one through ``optimizer.register_step_post_hook``; others cost nothing.
It joins the mechanism with the algorithms' registry (the mechanism itself knows no algorithm).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from redr.redistribution.algorithms.registry import make_algorithm
from redr.redistribution.mechanism import (RedistributionAlgorithm, RedistributionContext, RedistributionSchedule,
                                           apply_plan, identity, release_free_heap)
from redr.sparse.convert import sparse_layers


@dataclass
class RedistributionReport:
    epoch: int
    alpha: float
    removed: list[int]
    grown: list[int]
    nnz: list[int]
    seconds: float
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class Redistributor:
    """Redistributes the sparse layers of ``model`` on a schedule.

    Args:
        model: any module; its sparse layers (SparseLinear, SparseConv2d) are redistributed.
        optimizer: one optimizer or a list; their per-weight state follows every topology change.
        algorithm: a name (see :data:`~redr.redistribution.algorithms.registry.ALGORITHMS`) or an instance.
        total_epochs / schedule: the schedule, or just the epoch count for the paper's default one.
        seed: seeds the generator behind every random choice (identical on all data-parallel ranks).
        loss_fn: ``loss_fn(output, target)``, needed by gradient-based algorithms.
        check_invariants: verify the invariants after every step (cheap; on by default).
        all_reduce: sums a tensor across data-parallel processes (identity for one process).
        algorithm_options: passed to the algorithm when given by name.
    """

    def __init__(self, model: nn.Module, optimizer, algorithm: str | RedistributionAlgorithm = "random", *,
                 total_epochs: int | None = None, schedule: RedistributionSchedule | None = None, seed: int = 0,
                 loss_fn: Callable | None = None, check_invariants: bool = True,
                 all_reduce: Callable[[torch.Tensor], torch.Tensor] = identity, **algorithm_options):
        if schedule is None:
            if total_epochs is None:
                raise ValueError("give total_epochs (for the paper's schedule) or a RedistributionSchedule")
            schedule = RedistributionSchedule(total_epochs)
        self.model = model
        self.optimizers = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
        self.algorithm = make_algorithm(algorithm, **algorithm_options) if isinstance(algorithm, str) else algorithm
        self.schedule = schedule
        self.loss_fn = loss_fn
        self.check = check_invariants
        self.all_reduce = all_reduce
        self.generator = torch.Generator().manual_seed(seed)
        self.named_layers = sparse_layers(model)
        if not self.named_layers:
            raise ValueError("the model has no SparseLinear or SparseConv2d layer to redistribute (see redr.sparsify)")
        self.history: list[RedistributionReport] = []
        self._hooks = []
        if self.algorithm.needs_step_hook:
            for opt in self.optimizers[:1]:
                self._hooks.append(opt.register_step_post_hook(lambda *_: self.algorithm.after_step(self.layers)))

    @property
    def layers(self) -> list:
        return [layer for _, layer in self.named_layers]

    def will_redistribute(self, epoch: int) -> bool:
        return self.schedule.should_redistribute(epoch)

    def step(self, epoch: int, batches: Sequence | None = None) -> RedistributionReport | None:
        """Call at the end of epoch ``epoch`` (1-based). Redistributes if the schedule says so.

        Call it when no autograd graph of the model is alive (after ``backward``, not between a forward
        and its backward): a layer's nnz may change, and a graph saved with the old values would fail.
        """
        if not self.schedule.should_redistribute(epoch):
            return None
        if self.algorithm.needs_batches and (not batches or self.loss_fn is None):
            raise ValueError(f"algorithm {self.algorithm.name!r} needs batches=[(x, y), ...] in step() and loss_fn")
        alpha = self.schedule.alpha(epoch)
        layers = self.layers
        sync = layers[0].values.device.type == "cuda"
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        old_nnz = [layer.nnz for layer in layers]
        # The values' gradients are stale once the optimizer has stepped and invalid after a topology change
        # (change_topology drops them too); dropping them first lowers the step's peak memory by as much.
        for layer in layers:
            layer.values.grad = None
        ctx = RedistributionContext(self.model, layers, alpha, self.generator, self.loss_fn, batches, self.all_reduce,
                                    optimizers=self.optimizers)
        was_training = self.model.training
        plan = self.algorithm.plan(ctx)
        self.model.train(was_training)
        changes = apply_plan(layers, plan, self.optimizers, check=self.check)
        if layers[0].values.device.type == "cpu":
            release_free_heap()  # before the algorithm re-allocates its statistics
        self.algorithm.on_topology_changed(layers, changes)
        if sync:
            torch.cuda.synchronize()
        report = RedistributionReport(
            epoch=epoch, alpha=alpha,
            removed=[lp.remove.numel() for lp in plan.layers], grown=[lp.grow.shape[1] for lp in plan.layers],
            nnz=[layer.nnz for layer in layers], seconds=time.perf_counter() - start, info=plan.info)
        assert [o - r + g for o, r, g in zip(old_nnz, report.removed, report.grown)] == report.nnz
        self.history.append(report)
        return report

    def close(self) -> None:
        """Remove the per-step hook (if any)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "algorithm": self.algorithm.state_dict(),
                "history": [r.to_dict() for r in self.history], "schedule": self.schedule.to_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.algorithm.load_state_dict(state["algorithm"])
        self.history = [RedistributionReport(**r) for r in state["history"]]
