"""Redr-Woodfisher and Redr-Woodtaylor (the paper's section 2.5): second-order removal, random growth.

Both keep the block-wise empirical Fisher ``F`` of the active weights (:mod:`redr.redistribution.signals.fisher`)
from the gradients of the training steps since the last redistribution (``after_step``; no extra passes).
At a redistribution (formulas: :mod:`redr.redistribution.signals.woodfisher_statistics`):

* **Redr-Woodfisher** (gradient assumed 0): ``rho_q = w_q^2 / (2 d_q)`` is the quadratic model's loss
  increase of removing weight ``q`` and moving the others optimally. The fraction ``alpha`` of *all*
  active weights with the smallest ``rho`` is removed (globally across layers; ties: lower layer, then
  lower position), and the kept weights of each affected block move by the optimal update.
* **Redr-Woodtaylor** (``g`` = mean of the collected gradients, ``a = F^-1 g``):
  ``rho_q = (w_q - a_q)^2 / (2 d_q)``, and the update has an extra ``-a`` term (a damped Newton step) that
  moves every active weight, also in blocks without removals.

Each removed weight's update is computed as if it were removed alone and the updates are summed (so the
removed weights themselves do not land exactly on 0; they are dropped anyway).

Growth: the same total number of weights at uniformly random inactive positions, spread over layers in
proportion to their dense size ``out * in`` (largest remainder; a layer gets at most its number of
inactive positions). New weights start at 0 like in every algorithm. Removal never takes a layer below
its collapse-guard floor (:mod:`redr.redistribution.selection.budget`; the same rule as
Redr-Gradient-Global).
"""
from __future__ import annotations

from typing import Sequence

import torch

from redr.redistribution.algorithms.growth import RandomGrowth
from redr.redistribution.mechanism import RedistributionAlgorithm, RedistributionContext, RemovalScore
from redr.redistribution.selection import CollapseGuard, GlobalRemovalBudget
from redr.redistribution.signals import (DEFAULT_BLOCK_SIZE, DEFAULT_DAMPENING, BlockFisher, optimal_update,
                                         removal_statistics)
from redr.sparse.layer import SparseLinear, TopologyChange

#: Default dampening of Redr-Woodtaylor: the paper's ablation (section 4.3.3) found lambda = 1 best on KMNIST.
WOODTAYLOR_DAMPENING = 1.0


class FisherRemoval(RemovalScore):
    """``rho`` from the inverse of the collected Fisher; once the removed weights are chosen, the optimal
    update of the kept ones. ``newton``: with the gradient term (WoodTaylor)."""

    def __init__(self, fisher: BlockFisher, newton: bool):
        self.fisher, self.newton = fisher, newton
        self._pending = None  # F^-1 and the statistics, from scores() to value_updates() of one plan

    @torch.no_grad()
    def scores(self, ctx: RedistributionContext) -> list[torch.Tensor]:
        layers = list(ctx.layers)
        self.fisher.ensure_layout([layer.nnz for layer in layers], layers[0].values.dtype, layers[0].values.device)
        inv = self.fisher.inverse(ctx.all_reduce)  # consumes the statistics (reset after the step anyway)
        w = inv.layout.to_blocks([layer.values.detach() for layer in layers], dtype=inv.packed.dtype,
                                 device=inv.packed.device)
        newton = inv.matvec(inv.mean_grad) if self.newton else None
        z, d, rho = removal_statistics(w, inv, newton)
        del w
        self._pending = (inv, z, d, rho, newton)
        return inv.layout.from_blocks(rho)

    @torch.no_grad()
    def value_updates(self, removes: Sequence[torch.Tensor]):
        inv, z, d, rho, newton = self._pending
        self._pending = None
        layout, device = inv.layout, inv.packed.device
        removed = layout.to_blocks([torch.zeros(n, dtype=torch.bool, device=device).index_fill_(0, r.long(), True)
                                    for n, r in zip(layout.nnz, removes)],
                                   out=torch.zeros(layout.n_blocks, layout.block_size, dtype=torch.bool, device=device))
        info = {"fisher_steps": inv.count, "block_size": self.fisher.block_size, "dampening": self.fisher.dampening,
                "sum_rho_removed": float(rho[removed].sum())}
        newton_term = float(-0.5 * (inv.mean_grad * newton).sum()) if newton is not None else None
        dw = optimal_update(inv, z, d, removed, newton, out=rho)  # rho's memory holds c (rho is done)
        del inv, z, d, rho, newton  # free F^-1 (and the rest) before the growth and the topology change
        info["update_norm"] = float(dw.norm())  # padding slots of dw are 0
        if newton_term is not None:
            info["newton_term"] = newton_term
        return layout.from_blocks(dw), info


class RedrWoodfisher(RedistributionAlgorithm):
    """Remove by the WoodFisher statistic (globally), update the kept weights optimally, grow randomly.

    Args:
        block_size: weights per Fisher block (``--block-size``; the paper's 34).
        dampening: ``lambda`` of ``F = lambda I + (1/m) sum g g^T`` (``--dampening``; default 1e-6, see
            :data:`~redr.redistribution.signals.fisher.DEFAULT_DAMPENING`).
        buffer_steps: gradients collected before one batched update of the Fisher (memory vs. time only;
            the result is the same).
        min_layer_fraction, min_weights_per_layer: the collapse guard; defaults 0.1 and None (= the
            layer's ``out_features``), as for Redr-Gradient-Global.
    """

    name = "woodfisher"
    needs_step_hook = True
    uses_gradient = False
    growth = RandomGrowth()

    def __init__(self, block_size: int = DEFAULT_BLOCK_SIZE, dampening: float = DEFAULT_DAMPENING, buffer_steps: int = 8,
                 min_layer_fraction: float = 0.1, min_weights_per_layer: int | None = None):
        self.budget = GlobalRemovalBudget(CollapseGuard(min_layer_fraction, min_weights_per_layer))
        self.fisher = BlockFisher(int(block_size), float(dampening), int(buffer_steps), track_mean=self.uses_gradient)
        self.removal = FisherRemoval(self.fisher, newton=self.uses_gradient)

    def options(self) -> dict:
        return {"block_size": self.fisher.block_size, "dampening": self.fisher.dampening,
                "buffer_steps": self.fisher.buffer_steps, **self.budget.guard.options()}

    def floors(self, layers: Sequence[SparseLinear]) -> list[int]:
        return self.budget.guard.floors(layers)

    def after_step(self, layers: Sequence[SparseLinear]) -> None:
        grads = [layer.values.grad for layer in layers]
        if all(g is None for g in grads):
            return
        self.fisher.ensure_layout([layer.nnz for layer in layers], layers[0].values.dtype, layers[0].values.device)
        self.fisher.add([g.detach() if g is not None else None for g in grads])

    def on_topology_changed(self, layers: Sequence[SparseLinear], changes: Sequence[TopologyChange]) -> None:
        self.fisher.reset([layer.nnz for layer in layers], dtype=layers[0].values.dtype, device=layers[0].values.device)

    def state_dict(self) -> dict:
        return {"fisher": self.fisher.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "fisher" in state:
            self.fisher.load_state_dict(state["fisher"])


class RedrWoodtaylor(RedrWoodfisher):
    """Redr-Woodfisher with the gradient term (WoodTaylor). ``dampening`` defaults to 1 (the paper's finding)."""

    name = "woodtaylor"
    uses_gradient = True

    def __init__(self, block_size: int = DEFAULT_BLOCK_SIZE, dampening: float = WOODTAYLOR_DAMPENING, buffer_steps: int = 8,
                 min_layer_fraction: float = 0.1, min_weights_per_layer: int | None = None):
        super().__init__(block_size, dampening, buffer_steps, min_layer_fraction, min_weights_per_layer)
