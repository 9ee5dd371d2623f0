"""``SparseLinear``: a linear layer that stores and computes only its active weights."""
from __future__ import annotations

import torch

from redr.sparse import kernels
from redr.sparse.distribution import fan_in_for_density
from redr.sparse.matrix import SparseMatrixModule, TopologyChange, TopologyError
from redr.sparse.topology import CSRTopology, partitioned_csr

__all__ = ["SparseLinear", "TopologyChange", "TopologyError"]


class SparseLinear(SparseMatrixModule):
    """``y = x @ W.T + b`` with ``W`` held as ``values`` at ``indices`` only (no dense weight or mask).

    A layer is built from a given topology (:meth:`from_topology`); ``SparseLinear(in, out, density)``
    is the convenience for a lone layer: ``round(density * in_features)`` inputs per neuron (at least
    one, see :func:`~redr.sparse.distribution.fan_in_for_density`), placed by
    :func:`~redr.sparse.topology.partitioned_csr`. Nets decide their topology first, layer by layer
    from a :class:`~redr.sparse.distribution.Distribution` (``build_mlp``, ``sparsify``).

    Args:
        in_features, out_features: the dense shape ``W`` would have.
        density: fraction of active weights (or give ``topology``).
        bias: learn a dense bias.
        generator: the source of every random choice (topology and values), for reproducibility.
        backend: ``auto`` (default), ``numba``, ``torch`` or ``dense``; see :mod:`redr.sparse.kernels`.
        topology: ``(rows, cols)`` of the active weights, as for :meth:`from_topology`, or a
            :class:`~redr.sparse.topology.CSRTopology` (what the net builders pass; instead of ``density``).
        init: ``paper`` (below) or ``kaiming`` (``nn.Linear``'s rule on the active fan-in); :mod:`redr.sparse.init`.

    Values start uniform in ``+-1/k`` and the bias in ``+-1/sqrt(k)``, ``k`` being the neuron's active
    fan-in (the paper's ``k_i`` read as the active fan-in), drawn in this order after the topology.
    """

    def __init__(self, in_features: int, out_features: int, density: float | None = None, bias: bool = True,
                 generator: torch.Generator | None = None, backend: str = "auto", device=None, dtype=None, *,
                 topology: tuple[torch.Tensor, torch.Tensor] | CSRTopology | None = None, init: str = "paper"):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"layer sizes must be positive, got in={in_features}, out={out_features}")
        if (density is None) == (topology is None):
            raise ValueError("give a SparseLinear either a density or a topology (rows, cols)")
        if topology is None:
            topology = partitioned_csr(out_features, in_features, fan_in_for_density(in_features, density), generator)
        self._init_matrix(out_features, in_features, topology, bias, generator, backend, device, dtype, init)

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

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}, "
                f"density={self.density:.4f}, bias={self.bias is not None}, backend={self.backend}")
