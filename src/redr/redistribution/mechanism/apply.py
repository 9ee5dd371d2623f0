"""The one function that applies a plan (every algorithm goes through here).

An algorithm only decides *what* to remove and *where* to grow; :func:`apply_plan` does the rest for
all of them: the optional update of kept weights (Woodfisher's optimal update), the topology change
with the optimizer state following, and the invariant checks.
"""
from __future__ import annotations

from typing import Sequence

import torch

from redr.redistribution.mechanism.invariants import InvariantError, check_invariants
from redr.redistribution.mechanism.plan import RedistributionPlan
from redr.sparse.layer import SparseLinear, TopologyChange, TopologyError
from redr.sparse.layout import key_dtype


def unchanged(layer: SparseLinear) -> TopologyChange:
    """The change record of a layer its plan leaves alone (every weight kept in place)."""
    same = torch.arange(layer.nnz, device=layer.values.device)
    return TopologyChange(layer.nnz, layer.nnz, same, same, same[:0])


@torch.no_grad()
def apply_plan(layers: Sequence[SparseLinear], plan: RedistributionPlan, optimizers: Sequence[torch.optim.Optimizer] = (),
               check: bool = True) -> list[TopologyChange]:
    """Apply ``plan`` to ``layers``: all of it, or (when any layer's entry is invalid) none of it.

    Every layer's entry is checked first (positions, shapes, the value update's length: a
    :class:`~redr.sparse.TopologyError` or :class:`InvariantError` names the layer), so a bad plan leaves every
    layer, its values and its optimizer state as they were. Then each layer moves in turn, and with ``check``
    its invariants are verified after its step.
    """
    if len(plan.layers) != len(layers):
        raise InvariantError(f"plan has {len(plan.layers)} layer entries for {len(layers)} sparse layers")
    for i, (layer, lp) in enumerate(zip(layers, plan.layers)):
        update = lp.value_update
        if update is not None and tuple(update.shape) != tuple(layer.values.shape):
            raise InvariantError(f"layer {i}: value_update has shape {tuple(update.shape)}, the layer's values "
                                 f"{tuple(layer.values.shape)}")
        try:
            layer.validate_change(lp.remove, lp.grow)
        except TopologyError as exc:
            raise TopologyError(f"layer {i}: {exc}") from None
    changes = []
    for layer, lp in zip(layers, plan.layers):
        if lp.value_update is not None:
            layer.values.add_(lp.value_update.to(layer.values.dtype))
        if lp.remove.numel() == 0 and lp.grow.shape[1] == 0:  # nothing moves: no rebuild
            changes.append(unchanged(layer))
            continue
        old_keys = layer.layout.keys(key_dtype(layer.layout.shape)) if check else None
        change = layer.change_topology(lp.remove, lp.grow, optimizers, old_keys=old_keys)
        if check:
            check_invariants(layer, change, lp, old_keys, optimizers)
        changes.append(change)
    return changes
