"""``SparseMatrixModule``: the storage shared by every truly sparse layer (linear and convolution).

A sparse layer is a weight *matrix* ``(out_features, in_features)`` of which only the active entries are
held: ``values`` in row-major order, the CSR ``crow``/``col`` (persistent, the state-dict keys) and a
transposed companion (rebuilt, not saved). For a linear layer the matrix is ``W``; for a convolution it
is the kernel flattened per output channel, ``(out_channels, in_channels * kh * kw)``. Topology changes,
optimizer-state remapping and loading a state dict with another nnz live here once, for both.
Subclasses only say how the matrix is applied (``forward``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from redr.sparse import kernels
from redr.sparse.index_ops import ascending, csr_from_keys, merge_sorted, sorted_intersect
from redr.sparse.init import neuron_bounds, uniform_, uniform_rows_
from redr.sparse.layout import CSRLayout, index_dtype, key_dtype
from redr.sparse.optim_state import remap_optimizer_state
from redr.sparse.topology import CSRTopology


class TopologyError(ValueError):
    """A topology change that would corrupt the layer (duplicate, already active, out of range)."""


def _checked_topology(rows, cols, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows``/``cols`` as int64 CPU tensors, if they are a valid row-major topology of a layer of ``shape``."""
    rows, cols = torch.as_tensor(rows), torch.as_tensor(cols)
    if rows.dim() != 1 or cols.shape != rows.shape:
        raise TopologyError(f"rows and cols must be 1-D of equal length, got {tuple(rows.shape)} and {tuple(cols.shape)}")
    if rows.is_floating_point() or cols.is_floating_point() or rows.dtype == torch.bool or cols.dtype == torch.bool:
        raise TopologyError(f"rows and cols must hold integer indices, got {rows.dtype} and {cols.dtype}")
    rows, cols = rows.to("cpu", torch.int64), cols.to("cpu", torch.int64)
    if rows.numel() and (rows.min() < 0 or rows.max() >= shape[0] or cols.min() < 0 or cols.max() >= shape[1]):
        raise TopologyError(f"a topology position is out of range for a {shape[0]}x{shape[1]} layer")
    keys = rows * shape[1] + cols
    if keys.numel() > 1 and bool((keys[1:] <= keys[:-1]).any()):
        raise TopologyError("topology positions must be in row-major order without duplicates")
    return rows, cols


def _csr_of_topology(rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(crow, col)`` in the layer's index dtype of a checked row-major ``(rows, cols)``."""
    dtype = index_dtype(shape[0], shape[1], cols.numel())
    crow = torch.zeros(shape[0] + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=shape[0]), 0)
    return crow.to(dtype), cols.to(dtype)


@dataclass
class TopologyChange:
    """What one :meth:`SparseMatrixModule.change_topology` did, in terms of ``values`` positions.

    ``kept_old[i]`` moved to ``kept_new[i]``; ``added_new`` are the positions of the new (zero) weights.
    """

    old_nnz: int
    new_nnz: int
    kept_old: torch.Tensor
    kept_new: torch.Tensor
    added_new: torch.Tensor


class SparseMatrixModule(nn.Module):
    """A module holding a sparse ``(out_features, in_features)`` weight matrix as ``values`` at ``indices``.

    ``in_features``/``out_features`` are the *matrix's* columns and rows (for a convolution: the kernel's
    positions ``in_channels * kh * kw`` and the output channels), the dims every redistribution works on.
    """

    def _init_matrix(self, out_features: int, in_features: int, topology, bias: bool, generator, backend: str,
                     device, dtype, init: str = "paper") -> None:
        """Check the topology, draw the values then the bias by ``init`` (:func:`~redr.sparse.init.neuron_bounds`:
        ``paper`` +-1/k and +-1/sqrt(k), ``kaiming`` +-1/sqrt(k) for both), build the layout."""
        if backend not in kernels.BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(kernels.BACKENDS)}")
        self.in_features, self.out_features = in_features, out_features
        self.backend = backend
        shape = (out_features, in_features)
        if isinstance(topology, CSRTopology):
            crow, col = topology.crow, topology.col
            idx = index_dtype(out_features, in_features, col.numel())
            if crow.shape != (out_features + 1,) or col.dim() != 1 or int(crow[-1]) != col.numel():
                raise TopologyError(f"a CSR topology of a {out_features}x{in_features} layer needs crow of "
                                    f"{out_features + 1} entries ending at len(col), got {tuple(crow.shape)} and {tuple(col.shape)}")
            crow, col = crow.to("cpu", idx), col.to("cpu", idx)
        else:
            crow, col = _csr_of_topology(*_checked_topology(*topology, shape), shape)
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        w_bound, b_bound = neuron_bounds((crow[1:] - crow[:-1]).long(), init)
        self.values = nn.Parameter(uniform_rows_(torch.empty(col.numel(), **factory), crow, w_bound, generator))
        self.bias = nn.Parameter(uniform_(torch.empty(out_features, **factory), b_bound, generator)) if bias else None
        self._set_layout(CSRLayout.from_csr(crow, col, shape).to(self.values.device))

    # ----------------------------------------------------------------- structure
    def _set_layout(self, layout: CSRLayout) -> None:
        self._flat_positions = None
        self.register_buffer("crow", layout.crow)
        self.register_buffer("col", layout.col)
        self.register_buffer("crow_t", layout.crow_t, persistent=False)
        self.register_buffer("row_t", layout.row_t, persistent=False)
        self.register_buffer("perm_t", layout.perm_t, persistent=False)

    def flat_positions(self) -> torch.Tensor:
        """``row * in_features + col`` of every value (int64), cached until the topology changes."""
        cached = self._flat_positions
        if cached is None or cached.device != self.col.device or cached.numel() != self.nnz:
            cached = self._flat_positions = self.layout.keys()
        return cached

    @property
    def layout(self) -> CSRLayout:
        return CSRLayout((self.out_features, self.in_features), self.crow, self.col, self.crow_t, self.row_t, self.perm_t)

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def density(self) -> float:
        return self.nnz / (self.in_features * self.out_features)

    @property
    def indices(self) -> torch.Tensor:
        """``(2, nnz)`` int64: (row = output neuron, col = input feature) of each entry of ``values``."""
        layout = self.layout
        return torch.stack([layout.rows(), self.col.long()])

    def matrix_dense(self) -> torch.Tensor:
        """The ``(out_features, in_features)`` weight matrix, zeros at inactive positions."""
        dense = self.values.new_zeros(self.out_features * self.in_features)
        dense[self.layout.keys()] = self.values.detach()
        return dense.view(self.out_features, self.in_features)

    def to_dense(self) -> torch.Tensor:
        """The dense weight (the matrix here; subclasses reshape it to their weight's shape)."""
        return self.matrix_dense()

    def resolved_backend(self) -> str:
        return kernels.choose_backend(self.backend, self.values.device, self.in_features * self.out_features)

    # ----------------------------------------------------------------- topology change
    def validate_change(self, remove: torch.Tensor, add: torch.Tensor, old_keys: torch.Tensor | None = None) -> None:
        """Raise :class:`TopologyError` if :meth:`change_topology` would refuse ``remove``/``add``; changes nothing.

        Lets a caller that changes several layers check every one of them before touching any."""
        self._checked_change(remove, add, old_keys)

    def _checked_change(self, remove, add, old_keys):
        """``(remove, keep mask, sorted new keys, old keys)`` of a valid change, or :class:`TopologyError`."""
        device = self.values.device
        remove = torch.as_tensor(remove, device=device)
        add = torch.as_tensor(add, device=device)
        if remove.dim() > 1 and remove.numel():
            raise TopologyError(f"remove must be a 1-D tensor of positions into values, got shape {tuple(remove.shape)}")
        if add.numel() and (add.dim() != 2 or add.shape[0] != 2):
            raise TopologyError(f"add must be a (2, k) tensor of (row, col) positions, got shape {tuple(add.shape)}")
        remove, add = remove.reshape(-1), add.reshape(2, -1)
        for name, t in (("remove", remove), ("add", add)):
            if t.numel() and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
                raise TopologyError(f"{name} must hold integer indices, got {t.dtype}")
        old_nnz = self.nnz
        if remove.numel() and (remove.min() < 0 or remove.max() >= old_nnz):
            raise TopologyError(f"removal index out of range [0, {old_nnz}): min {remove.min().item()}, max {remove.max().item()}")
        keep = torch.ones(old_nnz, dtype=torch.bool, device=device)
        keep[remove] = False
        if int(keep.sum()) != old_nnz - remove.numel():
            raise TopologyError("removal indices contain duplicates")
        rows, cols = add[0], add[1]
        if rows.numel() and (rows.min() < 0 or rows.max() >= self.out_features or cols.min() < 0 or cols.max() >= self.in_features):
            raise TopologyError(f"added position out of range for a {self.out_features}x{self.in_features} layer")
        kd = key_dtype((self.out_features, self.in_features))
        if old_keys is None:
            old_keys = self.layout.keys(kd)
        new_keys = ascending(rows.to(kd) * self.in_features + cols.to(kd))
        if new_keys.numel() > 1 and bool((new_keys[1:] == new_keys[:-1]).any()):
            raise TopologyError("added positions contain duplicates")
        if sorted_intersect(old_keys, new_keys):
            raise TopologyError("an added position is already active (removed and grown sets must be disjoint)")
        return remove, keep, new_keys, old_keys

    @torch.no_grad()
    def change_topology(self, remove: torch.Tensor, add: torch.Tensor,
                        optimizers: Iterable[torch.optim.Optimizer] = (), old_keys: torch.Tensor | None = None) -> TopologyChange:
        """Remove the weights at ``values`` positions ``remove`` and activate ``(row, col)`` positions ``add``.

        Kept weights keep their values, new weights start at exactly 0, and for every optimizer every
        per-parameter state tensor shaped like ``values`` (Adam's moments, SGD momentum, ...) follows:
        gathered for kept weights, zero for new ones. ``add`` must not contain duplicates nor positions
        that are active now (also not ones removed in this same call: removed and grown sets are disjoint,
        so a weight removed now cannot regrow in the same step). The nnz may change.

        ``old_keys`` (optional) are the current ``layout.keys(key_dtype(shape))``, if the caller has them.
        Temporaries are kept narrow (int32 keys and indices where they fit): a change briefly holds the
        old and the new structure, and that transient sets the peak memory of a redistribution.
        """
        device = self.values.device
        old_nnz = self.nnz
        kd = key_dtype((self.out_features, self.in_features))
        remove, keep, new_keys, old_keys = self._checked_change(remove, add, old_keys)

        kept_old = torch.arange(old_nnz, dtype=kd, device=device)[keep]  # narrow like the keys (nnz <= positions)
        del keep
        merged, kept_new, added_new = merge_sorted(old_keys[kept_old], new_keys)
        del old_keys, new_keys
        new_nnz = merged.numel()

        shape = (self.out_features, self.in_features)
        # Order matters for the peak memory of a redistribution, which is this transient: the old transposed
        # companion is dropped first (the build does not need it; it is rebuilt if the build fails, so the
        # layer is unchanged then), the new CSR is built, values and optimizer state move, and only once the
        # old structure is gone is the new transposed companion built (a counting sort needing less memory
        # than the steps before it).
        self.crow_t = self.row_t = self.perm_t = self.crow.new_empty(0)
        try:
            crow, col = csr_from_keys(merged, shape, index_dtype(shape[0], shape[1], new_nnz))
        except BaseException:
            self._set_layout(CSRLayout.from_csr(self.crow, self.col, shape))
            raise
        del merged
        change = TopologyChange(old_nnz, new_nnz, kept_old, kept_new, added_new)
        for opt in optimizers:
            remap_optimizer_state(opt, self.values, change)
        new_values = self.values.new_zeros(new_nnz)
        new_values[kept_new] = self.values[kept_old]
        self.values.grad = None
        # Swapped, not assigned to .data: autograd caches a parameter's gradient accumulator with its shape, and
        # a graph built before the change (still referenced somewhere) would keep the old one alive, so the next
        # backward would fail with "invalid gradient ... expected shape compatible with [old nnz]". The Python
        # object stays the same (the optimizers' references and state keys stay valid).
        torch.utils.swap_tensors(self.values, nn.Parameter(new_values, requires_grad=self.values.requires_grad))
        self.crow, self.col = crow, col  # the old CSR is freed here
        del crow, col
        self._set_layout(CSRLayout.from_csr(self.crow, self.col, shape))
        return change

    # ----------------------------------------------------------------- state dict
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        """Accept a different nnz (topologies change during training) and rebuild the transposed structure."""
        from redr.sparse.validate import CorruptSparseStateError, validate_csr

        crow, col, values = (state_dict.get(prefix + k) for k in ("crow", "col", "values"))
        if crow is not None and col is not None and values is not None:
            name = prefix.rstrip(".") or "layer"
            if crow.dim() == 1 and crow.numel() != self.out_features + 1:
                raise CorruptSparseStateError(
                    f"{name}: the saved layer has {crow.numel() - 1} output rows, this {type(self).__name__} has "
                    f"{self.out_features}: the state dict is of another architecture; load it into a model built the same way")
            validate_csr(crow, col, values, (self.out_features, self.in_features), name=name)
            self.values.data = self.values.new_empty(values.shape)
            self.crow = self.crow.new_empty(crow.shape, dtype=crow.dtype)
            self.col = self.col.new_empty(col.shape, dtype=col.dtype)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        self._set_layout(CSRLayout.from_csr(self.crow, self.col, (self.out_features, self.in_features)))
