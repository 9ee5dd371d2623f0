"""Redr-Gradient (section 2.2, after RigL) and Redr-Gradient-Global (section 2.3).

Both remove the ``floor(alpha * nnz)`` smallest-magnitude weights of every layer and grow where the
loss gradient ``|dL/dW|`` is largest among the *inactive* positions; new weights start at 0. The dense
gradient is computed only now, one layer and one row tile at a time
(:mod:`redr.redistribution.signals.dense_gradient`; ties: :mod:`.growth`).

Choices shared by both (see docs/algorithms-gradient.md):

* Regrowth: every position active before the step, including those removed in this very step, is
  excluded from growth. RigL lets a just-removed weight regrow; the shared mechanism requires removed
  and grown sets to be disjoint (a removed-then-regrown weight would be a no-op that silently resets
  its value and optimizer state), and with it the number of weights actually moved is the planned one.
* Data: the batches in the context (the trainer passes ``--redistribution-batches``, default 1: RigL
  uses the current minibatch; one batch costs one extra forward and backward, under 1% of an epoch of
  the paper's nets, and the large-gradient positions it finds are the ones the next steps would move
  most). ``num_batches`` caps how many of the given batches are used (None: all).
"""
from __future__ import annotations

from redr.redistribution.algorithms.growth import GradientGrowth
from redr.redistribution.algorithms.sampled_growth import DEFAULT_CANDIDATES
from redr.redistribution.algorithms.removal import Magnitude
from redr.redistribution.mechanism import RedistributionAlgorithm
from redr.redistribution.selection import CollapseGuard, GlobalGrowthBudget, LayerBudget
from redr.redistribution.signals import DEFAULT_TILE_ROWS


class RedrGradient(RedistributionAlgorithm):
    """Per layer: remove ``floor(alpha * nnz)`` by magnitude, grow as many at the largest ``|dL/dW|`` inactive
    positions of the same layer. Per-layer density stays constant (unless a layer has too few free positions).

    Options:
        tile_rows: rows of a layer's dense gradient computed at once; bounds the extra memory per layer
            to about ``tile_rows * in_features`` numbers (default 512).
        num_batches: how many of the context's batches to use (None, the default: all that are given;
            the trainer gives ``--redistribution-batches``, default 1).
        growth: ``"auto"`` (default), ``"exact"`` or ``"sampled"``; candidates: candidates scored per weight
            grown on the sampled path (default 8) (:mod:`~redr.redistribution.algorithms.sampled_growth`).
    """

    name = "gradient"
    needs_batches = True
    removal = Magnitude()
    budget = LayerBudget()

    def __init__(self, tile_rows: int = DEFAULT_TILE_ROWS, num_batches: int | None = None, growth: str = "auto",
                 candidates: float = DEFAULT_CANDIDATES):
        self.growth = GradientGrowth(tile_rows, num_batches, growth, candidates)

    def options(self) -> dict:
        return self.growth.options()


class RedrGradientGlobal(RedistributionAlgorithm):
    """Remove ``floor(alpha * nnz)`` by magnitude in every layer (down to the collapse guard's floor), then
    grow the total removed count at the globally largest ``|dL/dW|`` inactive positions over all sparse
    layers. Per-layer nnz changes; the total stays constant.

    Collapse guard (:mod:`redr.redistribution.selection.budget`): a layer whose gradients stay small would
    lose ``alpha`` of its weights at every step and gain none, until it disconnects the network; a layer
    at or below its floor loses nothing (it can still grow).

    Options:
        tile_rows, num_batches, growth, candidates: as for :class:`RedrGradient` (sampled: candidates in
            proportion to each layer's free positions, one top-k over all their scores).
        min_layer_fraction: fraction of the uniform-density share a layer always keeps (default 0.1).
        min_weights_per_layer: absolute floor; None (default) means the layer's ``out_features``.
    """

    name = "gradient-global"
    needs_batches = True
    removal = Magnitude()

    def __init__(self, tile_rows: int = DEFAULT_TILE_ROWS, num_batches: int | None = None,
                 min_layer_fraction: float = 0.1, min_weights_per_layer: int | None = None, growth: str = "auto",
                 candidates: float = DEFAULT_CANDIDATES):
        self.growth = GradientGrowth(tile_rows, num_batches, growth, candidates)
        self.budget = GlobalGrowthBudget(CollapseGuard(min_layer_fraction, min_weights_per_layer))

    def options(self) -> dict:
        return {**self.growth.options(), **self.budget.guard.options()}

    def floors(self, layers) -> list[int]:
        """The collapse guard: the fewest weights each layer keeps after removal."""
        return self.budget.guard.floors(layers)
