"""Where a sparse layer's active weights start: the paper's partitioned topology (section 3, after Ertl).

Every output neuron gets the same number ``n`` of active inputs (its fan-in, given by a
:class:`~redr.sparse.distribution.Distribution`); its input range ``[0, inputs)`` is cut into ``n``
equal partitions and one active input is drawn uniformly in each. This spreads each neuron's inputs
evenly (no clumps, no duplicates) while staying random.

The layer builders take it as a CSR (:func:`partitioned_csr`), drawn in chunks of rows straight into the
layer's index dtype: a whole-layer ``(rows, cols)`` in int64 would be 16 bytes per weight, as much as the
layer itself holds (issue 15: building a model needs at most ~1.5x its own size). Chunks draw the same
numbers in the same order as one draw of the whole layer (the generator's stream is consumed in order), so
a seed gives the same topology either way.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from redr.sparse.layout import index_dtype

#: Weights per chunk of a layer's construction (topology and values): its temporaries are a few MiB.
BUILD_CHUNK_WEIGHTS = 1 << 16


@contextmanager
def on_this_thread():
    """torch's intra-op threads set to one while a layer is built chunk by chunk, then restored.

    The chunks are small, so threads gain nothing on them, but some ops start a parallel region whatever
    their size (``repeat_interleave``): thousands of those measured 10-20x slower than one thread on this
    2-core machine when other processes kept its cores busy (a waiting OpenMP thread is descheduled)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class CSRTopology:
    """A layer's active positions as a valid CSR ``(crow, col)`` (sorted, unique columns per row), as the
    builders pass it to a sparse layer instead of ``(rows, cols)`` (:meth:`SparseLinear.__init__`'s ``topology``)."""

    crow: torch.Tensor  # (out + 1,)
    col: torch.Tensor  # (nnz,)


def row_chunks(crow: torch.Tensor, weights: int | None = None):
    """``(first row, end row, first entry, end entry)`` of consecutive row ranges of at most ``weights``
    (default :data:`BUILD_CHUNK_WEIGHTS`) entries each, or one row, covering a CSR ``crow``."""
    weights = weights or BUILD_CHUNK_WEIGHTS
    rows, row = crow.numel() - 1, 0
    while row < rows:
        start = int(crow[row])
        end_row = int(torch.searchsorted(crow, start + weights, right=True)) - 1
        end_row = min(rows, max(end_row, row + 1))
        yield row, end_row, start, int(crow[end_row])
        row = end_row


def partitioned_csr(out_features: int, in_features: int, fan_in: int, generator: torch.Generator | None = None,
                    dtype: torch.dtype | None = None) -> CSRTopology:
    """The partitioned topology as CSR in ``dtype`` (default: the layer's index dtype), drawn chunk by chunk."""
    if not 1 <= fan_in <= in_features:
        raise ValueError(f"fan_in must be in [1, {in_features}], got {fan_in}")
    nnz = out_features * fan_in
    dtype = dtype or index_dtype(out_features, in_features, nnz)
    bounds = torch.arange(fan_in + 1, dtype=torch.int64) * in_features // fan_in  # partition p: [bounds[p], bounds[p+1])
    starts, widths = bounds[:-1], bounds[1:] - bounds[:-1]  # never empty
    crow = torch.arange(out_features + 1, dtype=dtype) * fan_in
    col = torch.empty(nnz, dtype=dtype)
    step, top = max(1, BUILD_CHUNK_WEIGHTS // fan_in), widths - 1
    with on_this_thread():
        for row in range(0, out_features, step):
            rows = min(step, out_features - row)
            u = torch.rand(rows, fan_in, generator=generator, dtype=torch.float64)
            col[row * fan_in:(row + rows) * fan_in] = (starts + torch.clamp((u * widths).long(), max=top)).reshape(-1)
    return CSRTopology(crow, col)


def partitioned_topology(out_features: int, in_features: int, fan_in: int, generator: torch.Generator | None = None):
    """(rows, cols) int64 in row-major order: ``fan_in`` inputs per neuron, one per equal partition.

    The same draw as :func:`partitioned_csr` (which the layer builders use), as coordinates."""
    topology = partitioned_csr(out_features, in_features, fan_in, generator, torch.int64)
    rows = torch.arange(out_features, dtype=torch.int64).repeat_interleave(fan_in)
    return rows, topology.col
