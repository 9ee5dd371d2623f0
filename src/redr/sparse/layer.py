"""``SparseLinear``: a linear layer that stores and computes only its active weights."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from redr.sparse import kernels
from redr.sparse.index_ops import ascending, csr_from_keys, merge_sorted, sorted_intersect
from redr.sparse.distribution import fan_in_for_density
from redr.sparse.init import neuron_bounds, uniform_
from redr.sparse.layout import CSRLayout, index_dtype, key_dtype
from redr.sparse.optim_state import remap_optimizer_state
from redr.sparse.topology import partitioned_topology


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


@dataclass
class TopologyChange:
    """What one :meth:`SparseLinear.change_topology` did, in terms of ``values`` positions.

    ``kept_old[i]`` moved to ``kept_new[i]``; ``added_new`` are the positions of the new (zero) weights.
    """

    old_nnz: int
    new_nnz: int
    kept_old: torch.Tensor
    kept_new: torch.Tensor
    added_new: torch.Tensor


class SparseLinear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` held as ``values`` at ``indices`` only (no dense weight or mask).

    A layer is built from a given topology (:meth:`from_topology`); ``SparseLinear(in, out, density)``
    is the convenience for a lone layer: ``round(density * in_features)`` inputs per neuron (at least
    one, see :func:`~redr.sparse.distribution.fan_in_for_density`), placed by
    :func:`~redr.sparse.topology.partitioned_topology`. Nets decide their topology first, layer by layer
    from a :class:`~redr.sparse.distribution.Distribution` (``build_mlp``, ``sparsify``).

    Args:
        in_features, out_features: the dense shape ``W`` would have.
        density: fraction of active weights (or give ``topology``).
        bias: learn a dense bias.
        generator: the source of every random choice (topology and values), for reproducibility.
        backend: ``auto`` (default), ``numba``, ``torch`` or ``dense``; see :mod:`redr.sparse.kernels`.
        topology: ``(rows, cols)`` of the active weights, as for :meth:`from_topology` (instead of ``density``).
        init: ``paper`` (below) or ``kaiming`` (``nn.Linear``'s rule on the active fan-in); :mod:`redr.sparse.init`.

    Values start uniform in ``+-1/k`` and the bias in ``+-1/sqrt(k)``, ``k`` being the neuron's active
    fan-in (the paper's ``k_i`` read as the active fan-in), drawn in this order after the topology.
    """

    def __init__(self, in_features: int, out_features: int, density: float | None = None, bias: bool = True,
                 generator: torch.Generator | None = None, backend: str = "auto", device=None, dtype=None, *,
                 topology: tuple[torch.Tensor, torch.Tensor] | None = None, init: str = "paper"):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"layer sizes must be positive, got in={in_features}, out={out_features}")
        if backend not in kernels.BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(kernels.BACKENDS)}")
        if (density is None) == (topology is None):
            raise ValueError("give a SparseLinear either a density or a topology (rows, cols)")
        self.in_features, self.out_features = in_features, out_features
        self.backend = backend
        if topology is None:
            topology = partitioned_topology(out_features, in_features, fan_in_for_density(in_features, density), generator)
        rows, cols = _checked_topology(*topology, (out_features, in_features))
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        w_bound, b_bound = neuron_bounds(torch.bincount(rows, minlength=out_features), init)
        self.values = nn.Parameter(uniform_(torch.empty(rows.numel(), **factory), w_bound[rows], generator))
        self.bias = nn.Parameter(uniform_(torch.empty(out_features, **factory), b_bound, generator)) if bias else None
        self._set_layout(CSRLayout.from_sorted_coo(rows, cols, (out_features, in_features)).to(self.values.device))

    @classmethod
    def from_topology(cls, in_features: int, out_features: int, rows: torch.Tensor, cols: torch.Tensor, bias: bool = True,
                      generator: torch.Generator | None = None, backend: str = "auto", device=None, dtype=None,
                      init: str = "paper") -> "SparseLinear":
        """A layer whose active weights are exactly at ``(rows[i], cols[i])``, with the paper's values init.

        ``rows``/``cols``: integer tensors in row-major order without duplicates (as
        :func:`~redr.sparse.topology.partitioned_topology` gives them). Rows may differ in fan-in; each
        neuron's values and bias use its own (a neuron without inputs counts as one for its bias).
        """
        return cls(in_features, out_features, bias=bias, generator=generator, backend=backend, device=device,
                   dtype=dtype, topology=(rows, cols), init=init)

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

    def to_dense(self) -> torch.Tensor:
        """The ``(out_features, in_features)`` weight matrix, zeros at inactive positions."""
        dense = self.values.new_zeros(self.out_features * self.in_features)
        dense[self.layout.keys()] = self.values.detach()
        return dense.view(self.out_features, self.in_features)

    def resolved_backend(self) -> str:
        return kernels.choose_backend(self.backend, self.values.device, self.in_features * self.out_features)

    # ----------------------------------------------------------------- compute
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected input with {self.in_features} features, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        backend = self.resolved_backend()
        if backend == "dense":
            y = kernels.dense_forward(x2, self.values, self.bias, self.flat_positions(), (self.out_features, self.in_features))
        else:
            y = kernels.SparseLinearFunction.apply(x2, self.values, self.bias, self.layout, backend)
        return y.reshape(*lead, self.out_features)

    # ----------------------------------------------------------------- topology change
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
        remove = torch.as_tensor(remove, device=device).reshape(-1)
        add = torch.as_tensor(add, device=device).reshape(2, -1)
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
        self.values.data = new_values
        self.crow, self.col = crow, col  # the old CSR is freed here
        del crow, col
        self._set_layout(CSRLayout.from_csr(self.crow, self.col, shape))
        return change

    # ----------------------------------------------------------------- state dict
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        """Accept a different nnz (topologies change during training) and rebuild the transposed structure."""
        from redr.sparse.validate import validate_csr

        crow, col, values = (state_dict.get(prefix + k) for k in ("crow", "col", "values"))
        if crow is not None and col is not None and values is not None:
            validate_csr(crow, col, values, (self.out_features, self.in_features), name=prefix.rstrip(".") or "layer")
            self.values.data = self.values.new_empty(values.shape)
            self.crow = self.crow.new_empty(crow.shape, dtype=crow.dtype)
            self.col = self.col.new_empty(col.shape, dtype=col.dtype)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        self._set_layout(CSRLayout.from_csr(self.crow, self.col, (self.out_features, self.in_features)))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}, "
                f"density={self.density:.4f}, bias={self.bias is not None}, backend={self.backend}")
