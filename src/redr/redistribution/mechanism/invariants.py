"""The invariants every redistribution step keeps, checked after every applied plan (independently of how
:meth:`~redr.sparse.SparseLinear.change_topology` did its work)."""
from __future__ import annotations

from typing import Sequence

import torch

from redr.redistribution.mechanism.plan import LayerPlan
from redr.sparse.index_ops import ascending, sorted_intersect
from redr.sparse.layer import SparseLinear, TopologyChange


class InvariantError(AssertionError):
    """A redistribution broke an invariant; this is a bug in an algorithm or in the mechanism."""


def check_invariants(layer: SparseLinear, change: TopologyChange, lp: LayerPlan, old_keys: torch.Tensor,
                     optimizers: Sequence[torch.optim.Optimizer] = ()) -> None:
    """nnz as planned, no duplicates, removed and grown sets disjoint, new weights and moments zero.

    Linear in nnz (merges of sorted key lists, no hashing or sorting of the whole layer).
    """
    expected = change.old_nnz - lp.remove.numel() + lp.grow.shape[1]
    if layer.nnz != expected or change.new_nnz != expected:
        raise InvariantError(f"nnz {layer.nnz} after the step (change record: {change.new_nnz}), planned {expected}")
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
