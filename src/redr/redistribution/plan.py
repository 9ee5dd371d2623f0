"""A redistribution plan and the one function that applies it (every algorithm goes through here).

An algorithm only decides *what* to remove and *where* to grow; :func:`apply_plan` does the rest for
all of them: the optional update of kept weights (Woodfisher's optimal update), the topology change
with the optimizer state following, and the invariant checks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from redr.sparse.index_ops import ascending, sorted_intersect
from redr.sparse.layer import SparseLinear, TopologyChange
from redr.sparse.layout import key_dtype


class InvariantError(AssertionError):
    """A redistribution broke an invariant; this is a bug in an algorithm or in the mechanism."""


@dataclass
class LayerPlan:
    """What happens to one layer.

    remove: positions into ``values`` to deactivate (1-D; int32 or int64: the algorithms here give int32
        where it fits, since a plan may be half a layer; call ``.long()`` for ops that want int64).
    grow: ``(2, k)`` ``(row, col)`` positions to activate (int32 or int64, likewise); must be inactive
        *before* the step.
    value_update: optional ``delta`` added to ``values`` before removal (second-order algorithms).
    """

    remove: torch.Tensor
    grow: torch.Tensor
    value_update: torch.Tensor | None = None

    @classmethod
    def empty(cls, device=None) -> "LayerPlan":
        return cls(torch.empty(0, dtype=torch.int64, device=device), torch.empty(2, 0, dtype=torch.int64, device=device))


@dataclass
class RedistributionPlan:
    layers: list[LayerPlan]
    info: dict = field(default_factory=dict)  # algorithm-specific numbers worth logging


def keys_to_positions(keys: torch.Tensor, in_features: int) -> torch.Tensor:
    """Flat keys ``row * in_features + col`` to a ``(2, k)`` (row, col) tensor, int32 where it fits (half the
    bytes of a plan that may hold half a layer's weights). Written in place into the result: a plan can
    be half a layer, and int64 temporaries of that size would set the peak memory of a redistribution."""
    if keys.numel() and int(keys.max()) >= 2**31 - 1:
        dtype = torch.int64
    else:
        dtype = torch.int32
        keys = keys.to(dtype)
    out = torch.empty(2, keys.numel(), dtype=dtype, device=keys.device)
    rows, cols = out[0], out[1]
    torch.div(keys, in_features, rounding_mode="floor", out=rows)
    torch.mul(rows, in_features, out=cols)
    torch.sub(keys, cols, out=cols)
    return out


def unchanged(layer: SparseLinear) -> TopologyChange:
    """The change record of a layer its plan leaves alone (every weight kept in place)."""
    same = torch.arange(layer.nnz, device=layer.values.device)
    return TopologyChange(layer.nnz, layer.nnz, same, same, same[:0])


@torch.no_grad()
def apply_plan(layers: Sequence[SparseLinear], plan: RedistributionPlan, optimizers: Sequence[torch.optim.Optimizer] = (),
               check: bool = True) -> list[TopologyChange]:
    if len(plan.layers) != len(layers):
        raise InvariantError(f"plan has {len(plan.layers)} layer entries for {len(layers)} sparse layers")
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


def check_invariants(layer: SparseLinear, change: TopologyChange, lp: LayerPlan, old_keys: torch.Tensor,
                     optimizers: Sequence[torch.optim.Optimizer] = ()) -> None:
    """nnz as planned, no duplicates, removed and grown sets disjoint, new weights and moments zero.

    Independent of how :meth:`SparseLinear.change_topology` did its work; linear in nnz (merges of
    sorted key lists, no hashing or sorting of the whole layer).
    """
    expected = change.old_nnz - lp.remove.numel() + lp.grow.shape[1]
    if layer.nnz != expected or change.new_nnz != expected:
        raise InvariantError(f"nnz {layer.nnz} after the step, planned {expected}")
    keys = layer.layout.keys(old_keys.dtype)
    if keys.numel() > 1 and not bool((keys[1:] > keys[:-1]).all()):
        raise InvariantError("duplicate or unsorted indices after the step")
    grown = ascending((lp.grow[0] * layer.in_features + lp.grow[1]).to(old_keys.dtype))
    if sorted_intersect(old_keys, grown):
        raise InvariantError("a grown position was active before the step (removed and grown sets must be disjoint)")
    if sorted_intersect(keys, ascending(old_keys[lp.remove])):
        raise InvariantError("a removed position is still active")
    if change.added_new.numel():
        if bool((layer.values[change.added_new] != 0).any()):
            raise InvariantError("a new weight does not start at 0")
        for opt in optimizers:
            for name, state in opt.state.get(layer.values, {}).items():
                if torch.is_tensor(state) and state.shape == layer.values.shape and bool((state[change.added_new] != 0).any()):
                    raise InvariantError(f"optimizer state {name!r} is not reset for new weights")
