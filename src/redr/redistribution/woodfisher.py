"""Redr-Woodfisher and Redr-Woodtaylor (the paper's section 2.5): second-order removal, random growth.

Both keep the block-wise empirical Fisher ``F`` of the active weights (:mod:`redr.redistribution.fisher`)
from the gradients of the training steps since the last redistribution (``after_step``; no extra passes).
At a redistribution, with ``d_q = [F^-1]_qq``:

* **Redr-Woodfisher** (gradient assumed 0): ``rho_q = w_q^2 / (2 d_q)`` is the quadratic model's loss
  increase of removing weight ``q`` and moving the others optimally. The fraction ``alpha`` of *all*
  active weights with the smallest ``rho`` is removed (globally across layers; ties: lower layer, then
  lower position), and the kept weights of each affected block move by
  ``dw = - sum_{q removed in block} (w_q / d_q) F^-1 e_q``.
* **Redr-Woodtaylor** (``g`` = mean of the collected gradients, ``a = F^-1 g``):
  ``rho_q = (w_q - a_q)^2 / (2 d_q)`` and ``dw = -a - sum_{q removed} ((w_q - a_q) / d_q) F^-1 e_q``
  (derivation in docs/algorithms-woodfisher.md). The ``-a`` term (a damped Newton step) moves every
  active weight, also in blocks without removals.

Each removed weight's update is computed as if it were removed alone and the updates are summed:
interactions between weights removed together in one block are ignored, as in the WoodFisher reference
implementation (so the removed weights themselves do not land exactly on 0; they are dropped anyway).

Growth: the same total number of weights at uniformly random inactive positions, spread over layers in
proportion to their dense size ``out * in`` (largest remainder; a layer gets at most its number of
inactive positions). New weights start at 0 like in every algorithm.

Collapse guard (the same rule as Redr-Gradient-Global): a layer whose weights all look cheap would lose
``alpha`` of them at every step and, growing only in proportion to its size, could disconnect the
network. Removal never takes a layer below ``floor_l = min(positions_l, max(min_weights_per_layer,
ceil(min_layer_fraction * fair_l))))`` weights, ``fair_l = total_nnz * positions_l / total_positions``
being its share at uniform density and ``min_weights_per_layer`` defaulting to ``out_features`` (on
average one weight per neuron). When the global choice would take more from a layer, that layer gives
exactly its allowance ``nnz_l - floor_l`` (its smallest ``rho``) and the rest comes from the other layers,
again by smallest ``rho``; the total removed stays ``floor(alpha * total_nnz)`` unless every layer is at
its floor.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from redr.redistribution.base import RedistributionAlgorithm, RedistributionContext, random_growth, removal_count
from redr.redistribution.fisher import BlockFisher, BlockInverse
from redr.redistribution.plan import LayerPlan, RedistributionPlan
from redr.redistribution.select import proportional_shares, smallest_k
from redr.sparse.layer import SparseLinear, TopologyChange

#: Default dampening of Redr-Woodfisher. The WoodFisher reference implementation defaults to 1e-3 for a
#: Fisher of per-sample gradients; ours averages outer products of minibatch-mean gradients, whose noise
#: part is ~1/batch as large (batch 512 here), so the reference's setting corresponds to ~2e-6. Measured on
#: Fashion-MNIST (docs/algorithms-woodfisher.md): the induced loss falls steadily from 1e-1 to 1e-8; 1e-6
#: puts it 3-12x below magnitude removal's at every step of the sweeps, 1e-3 only 1.2-2.8x.
WOODFISHER_DAMPENING = 1e-6
#: Default dampening of Redr-Woodtaylor: the paper's ablation (section 4.3.3) found lambda = 1 best on KMNIST.
WOODTAYLOR_DAMPENING = 1.0
#: Default block size (the paper's, for both algorithms and both datasets).
BLOCK_SIZE = 34


def collapse_floors(layers: Sequence[SparseLinear], min_layer_fraction: float = 0.1,
                    min_weights_per_layer: int | None = None) -> list[int]:
    """The fewest active weights removal may leave in each layer (see the module docstring)."""
    total_nnz = sum(layer.nnz for layer in layers)
    positions = [layer.in_features * layer.out_features for layer in layers]
    total_pos = sum(positions)
    floors = []
    for layer, pos in zip(layers, positions):
        absolute = layer.out_features if min_weights_per_layer is None else min_weights_per_layer
        floors.append(min(pos, max(absolute, math.ceil(min_layer_fraction * total_nnz * pos / total_pos - 1e-9))))
    return floors


def removal_statistics(w: torch.Tensor, inv: BlockInverse, newton: torch.Tensor | None = None):
    """``(z, d, rho)`` per block slot: ``z = w - a`` (``a = F^-1 g``, or 0), ``d = [F^-1]_qq``,
    ``rho = z^2 / (2 d)``. All ``(n_blocks, B)``; ``z`` is ``w`` itself when ``newton`` is None."""
    d = inv.diag().to(w.dtype)
    z = w - newton if newton is not None else w
    return z, d, z.square().div_(d).mul_(0.5)


def optimal_update(inv: BlockInverse, z: torch.Tensor, d: torch.Tensor, removed: torch.Tensor,
                   newton: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """``dw = -a - F^-1 c`` with ``c_q = z_q / d_q`` at removed slots (``removed``: bool ``(n_blocks, B)``).

    ``out`` (not ``z`` nor ``d``) may receive ``c`` and then the result, to save a temporary."""
    c = torch.div(z, d, out=out) if out is not None else z / d
    c.mul_(removed)
    dw = inv.matvec(c, out=torch.empty_like(c) if out is None else d.new_empty(d.shape))
    dw.neg_()
    if newton is not None:
        dw -= newton
    return dw


def global_smallest(scores: Sequence[torch.Tensor], k: int, allowance: Sequence[int]):
    """Positions (per layer, ascending) of the ``k`` smallest scores over all layers, taking at most
    ``allowance[l]`` from layer ``l``. Ties: earlier layer, then lower position. Water-filling: a layer
    whose share of the unconstrained choice exceeds its allowance is saturated, the rest re-chosen.
    Returns ``(positions per layer, sorted indices of the saturated layers)``."""
    n = len(scores)
    k = min(int(k), sum(int(a) for a in allowance))
    fixed: dict[int, int] = {}
    while True:
        free = [i for i in range(n) if i not in fixed]
        rest = k - sum(fixed.values())
        sizes = [scores[i].numel() for i in free]
        chosen = smallest_k(torch.cat([scores[i].reshape(-1) for i in free]), rest) if free else torch.empty(0, dtype=torch.int64)
        bounds = torch.tensor([0] + sizes, device=chosen.device).cumsum(0)
        per = [chosen[(chosen >= bounds[j]) & (chosen < bounds[j + 1])] - bounds[j] for j in range(len(free))]
        over = [i for i, p in zip(free, per) if p.numel() > allowance[i]]
        if not over:
            out: list[torch.Tensor] = [None] * n
            for i, p in zip(free, per):
                out[i] = p
            for i, a in fixed.items():
                out[i] = smallest_k(scores[i].reshape(-1), a)
            return out, sorted(fixed)
        for i in over:
            fixed[i] = int(allowance[i])


class RedrWoodfisher(RedistributionAlgorithm):
    """Remove by the WoodFisher statistic (globally), update the kept weights optimally, grow randomly.

    Args:
        block_size: weights per Fisher block (``--block-size``; the paper's 34).
        dampening: ``lambda`` of ``F = lambda I + (1/m) sum g g^T`` (``--dampening``; default 1e-6, see
            :data:`WOODFISHER_DAMPENING`).
        buffer_steps: gradients collected before one batched update of the Fisher (memory vs. time only;
            the result is the same).
        min_layer_fraction, min_weights_per_layer: the collapse guard (module docstring); defaults 0.1
            and None (= the layer's ``out_features``), as for Redr-Gradient-Global.
    """

    name = "woodfisher"
    needs_step_hook = True
    uses_gradient = False

    def __init__(self, block_size: int = BLOCK_SIZE, dampening: float = WOODFISHER_DAMPENING, buffer_steps: int = 8,
                 min_layer_fraction: float = 0.1, min_weights_per_layer: int | None = None):
        if not 0.0 <= min_layer_fraction <= 1.0:
            raise ValueError(f"min_layer_fraction must be in [0, 1], got {min_layer_fraction!r}")
        if min_weights_per_layer is not None and (int(min_weights_per_layer) != min_weights_per_layer
                                                  or min_weights_per_layer < 0):
            raise ValueError(f"min_weights_per_layer must be a non-negative integer or None, got {min_weights_per_layer!r}")
        self.block_size = int(block_size)
        self.dampening = float(dampening)
        self.buffer_steps = int(buffer_steps)
        self.min_layer_fraction = float(min_layer_fraction)
        self.min_weights_per_layer = None if min_weights_per_layer is None else int(min_weights_per_layer)
        self.fisher = BlockFisher(self.block_size, self.dampening, self.buffer_steps, track_mean=self.uses_gradient)

    def options(self) -> dict:
        return {"block_size": self.block_size, "dampening": self.dampening, "buffer_steps": self.buffer_steps,
                "min_layer_fraction": self.min_layer_fraction, "min_weights_per_layer": self.min_weights_per_layer}

    def floors(self, layers: Sequence[SparseLinear]) -> list[int]:
        return collapse_floors(layers, self.min_layer_fraction, self.min_weights_per_layer)

    # ------------------------------------------------------------------ statistics
    def _ensure_layout(self, layers: Sequence[SparseLinear]) -> None:
        nnz = [layer.nnz for layer in layers]
        if not self.fisher.matches(nnz):
            self.fisher.reset(nnz, dtype=layers[0].values.dtype, device=layers[0].values.device)

    def after_step(self, layers: Sequence[SparseLinear]) -> None:
        grads = [layer.values.grad for layer in layers]
        if all(g is None for g in grads):
            return
        self._ensure_layout(layers)
        self.fisher.add([g.detach() if g is not None else None for g in grads])

    def on_topology_changed(self, layers: Sequence[SparseLinear], changes: Sequence[TopologyChange]) -> None:
        self.fisher.reset([layer.nnz for layer in layers], dtype=layers[0].values.dtype, device=layers[0].values.device)

    def state_dict(self) -> dict:
        return {"fisher": self.fisher.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "fisher" in state:
            self.fisher.load_state_dict(state["fisher"])

    # ------------------------------------------------------------------ plan
    @torch.no_grad()
    def plan(self, ctx: RedistributionContext) -> RedistributionPlan:
        layers = list(ctx.layers)
        self._ensure_layout(layers)
        inv = self.fisher.inverse(ctx.all_reduce)  # consumes the statistics (reset after the step anyway)
        layout = inv.layout
        dtype, device = inv.packed.dtype, inv.packed.device
        w = layout.to_blocks([layer.values.detach() for layer in layers], dtype=dtype, device=device)
        newton = inv.matvec(inv.mean_grad) if self.uses_gradient else None
        z, d, rho = removal_statistics(w, inv, newton)
        del w

        total = sum(layer.nnz for layer in layers)
        floors = self.floors(layers)
        allowance = [max(0, layer.nnz - f) for layer, f in zip(layers, floors)]
        removes, guarded = global_smallest(layout.from_blocks(rho), removal_count(total, ctx.alpha), allowance)
        removed = layout.to_blocks([torch.zeros(layer.nnz, dtype=torch.bool, device=device).index_fill_(0, r.long(), True)
                                    for layer, r in zip(layers, removes)],
                                   out=torch.zeros(layout.n_blocks, layout.block_size, dtype=torch.bool, device=device))
        sum_rho_removed = float(rho[removed].sum())
        newton_term = float(-0.5 * (inv.mean_grad * newton).sum()) if newton is not None else None
        dw = optimal_update(inv, z, d, removed, newton, out=rho)  # rho's memory holds c (rho is done)
        count = inv.count
        del inv, z, d, rho, newton  # free F^-1 (and the rest) before the growth and the topology change
        updates = layout.from_blocks(dw)

        n_removed = sum(r.numel() for r in removes)
        dense = [layer.in_features * layer.out_features for layer in layers]
        shares = proportional_shares(n_removed, dense, capacity=[s - layer.nnz for s, layer in zip(dense, layers)])
        plans = [LayerPlan(r.to(layer.values.device), random_growth(layer, share, ctx.generator),
                           value_update=u.to(layer.values.device))
                 for layer, r, share, u in zip(layers, removes, shares, updates)]
        info = {"fisher_steps": count, "floors": floors,
                "guarded_layers": guarded, "block_size": self.block_size, "dampening": self.dampening,
                "sum_rho_removed": sum_rho_removed, "update_norm": float(dw.norm())}  # padding slots of dw are 0
        if newton_term is not None:
            info["newton_term"] = newton_term
        return RedistributionPlan(plans, info)


class RedrWoodtaylor(RedrWoodfisher):
    """Redr-Woodfisher with the gradient term (WoodTaylor). ``dampening`` defaults to 1 (the paper's finding)."""

    name = "woodtaylor"
    uses_gradient = True

    def __init__(self, block_size: int = BLOCK_SIZE, dampening: float = WOODTAYLOR_DAMPENING, buffer_steps: int = 8,
                 min_layer_fraction: float = 0.1, min_weights_per_layer: int | None = None):
        super().__init__(block_size, dampening, buffer_steps, min_layer_fraction, min_weights_per_layer)
