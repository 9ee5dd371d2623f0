"""Redr-Loss (section 2.4, after Ertl): grow at the neurons with the largest backpropagated error.

Per layer: remove ``R = floor(alpha * nnz)`` weights by magnitude. Rank the layer's output neurons by
their error ``e_i = sum_n |dL/d pre-activation[n, i]|`` over the batch (ties: lower neuron index first)
and select the top ``neuron_fraction`` of them (``round(fraction * out_features)``, at least one).
Only the selected neurons' rows of the dense gradient ``dL/dW`` are computed (``tile_rows`` rows at a
time). Each selected neuron gets an equal share of ``R`` and grows it at its largest ``|dL/dW|`` inactive
inputs (ties: lower input index); new weights start at 0.

Shares ("water filling", :func:`~redr.redistribution.selection.water_fill`): every selected neuron gets
``min(free_i, q)`` or ``q + 1`` new weights, where ``free_i`` is the number of its inputs not active
before the step and ``q`` is the largest level for which the shares fit in ``R``; the ``+1``s go to the
highest-ranked neurons that can still take one. So a neuron with too few free inputs takes them all and
passes the rest of its share on to the others, equally. This is what handing out the weights one at a
time, round-robin in rank order, gives. Only if all selected neurons together have fewer than ``R`` free
inputs is the selection extended, in rank order, by as many neurons as needed (the layer's density
stays constant whenever it has room).

As for Redr-Gradient, positions active before the step (including those removed in it) never grow.
"""
from __future__ import annotations

from typing import Sequence

import torch

from redr.redistribution.algorithms.removal import Magnitude
from redr.redistribution.algorithms.sampled_growth import DEFAULT_CANDIDATES, GrowthPath, grow_sampled_rows
from redr.redistribution.mechanism import GrowthRule, RedistributionAlgorithm, RedistributionContext, no_growth
from redr.redistribution.selection import LayerBudget, largest_inactive_per_row, neuron_shares, selected_count
from redr.redistribution.signals import DEFAULT_TILE_ROWS, GradientPass


class NeuronGrowth(GrowthRule):
    """Each layer's count grows at its top ``neuron_fraction`` neurons by error, water-filled (module docstring)."""

    def __init__(self, neuron_fraction: float = 0.3, tile_rows: int = DEFAULT_TILE_ROWS, num_batches: int | None = None,
                 growth: str = "auto", candidates: float = DEFAULT_CANDIDATES):
        self.gradients = GradientPass(tile_rows, num_batches)
        self.path = GrowthPath(growth, candidates)
        if not 0.0 < neuron_fraction <= 1.0:
            raise ValueError(f"neuron_fraction must be in (0, 1], got {neuron_fraction!r}")
        self.neuron_fraction = float(neuron_fraction)

    def options(self) -> dict:
        return {"neuron_fraction": self.neuron_fraction, **self.gradients.options(), **self.path.options()}

    def idle_info(self, n_layers: int) -> dict:
        return {"growing_neurons": [0] * n_layers, "gradient": None}

    def grow(self, ctx: RedistributionContext, counts: Sequence[int]):
        grows = [no_growth(layer.values.device) for layer in ctx.layers]
        growing_neurons = [0] * len(grows)
        sampled = self.path.sampled(ctx.layers)

        def consume(lg):
            total = counts[lg.index]
            if total == 0:
                return
            order = torch.sort(lg.neuron_error(), descending=True, stable=True).indices
            shares = neuron_shares(total, lg.free_inputs()[order], selected_count(lg.out_features, self.neuron_fraction))
            growing = shares > 0
            rows, k = order[growing], shares[growing]
            rows, perm = torch.sort(rows)  # ascending rows: tiles in memory order, grown keys sorted
            growing_neurons[lg.index] = rows.numel()
            if sampled:  # candidates only in the growing neurons' rows
                picked = grow_sampled_rows(lg, rows, k[perm], self.path.candidates, ctx.generator)
            else:
                picked = largest_inactive_per_row(lg, rows, k[perm])
            if picked is not None:
                grows[lg.index] = picked

        stats = self.gradients.run(ctx, consume)
        return grows, {"growing_neurons": growing_neurons, "gradient": stats.to_dict(),
                       "growth": "sampled" if sampled else "exact"}


class RedrLoss(RedistributionAlgorithm):
    """Remove by magnitude per layer; grow at the top ``neuron_fraction`` neurons by backpropagated error.

    Options:
        neuron_fraction: fraction of a layer's output neurons that grow (default 0.3, the paper's 30%).
        tile_rows, num_batches, growth, candidates: as for
            :class:`~redr.redistribution.algorithms.gradient.RedrGradient` (sampled: ``candidates`` per weight a
            growing neuron gets, drawn among that neuron's free inputs only).
    """

    name = "loss"
    needs_batches = True
    removal = Magnitude()
    budget = LayerBudget()

    def __init__(self, neuron_fraction: float = 0.3, tile_rows: int = DEFAULT_TILE_ROWS, num_batches: int | None = None,
                 growth: str = "auto", candidates: float = DEFAULT_CANDIDATES):
        self.growth = NeuronGrowth(neuron_fraction, tile_rows, num_batches, growth, candidates)

    def options(self) -> dict:
        return self.growth.options()
