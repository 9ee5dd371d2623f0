"""Where a sparse layer's active weights start: the paper's partitioned topology (section 3, after Ertl).

Every output neuron gets the same number ``n`` of active inputs (its fan-in, given by a
:class:`~redr.sparse.distribution.Distribution`); its input range ``[0, inputs)`` is cut into ``n``
equal partitions and one active input is drawn uniformly in each. This spreads each neuron's inputs
evenly (no clumps, no duplicates) while staying random. The layer is then built from the rows and
columns (:meth:`redr.sparse.SparseLinear.from_topology`).
"""
from __future__ import annotations

import torch


def partitioned_topology(out_features: int, in_features: int, fan_in: int, generator: torch.Generator | None = None):
    """(rows, cols) int64 in row-major order: ``fan_in`` inputs per neuron, one per equal partition."""
    if not 1 <= fan_in <= in_features:
        raise ValueError(f"fan_in must be in [1, {in_features}], got {fan_in}")
    part = torch.arange(fan_in + 1, dtype=torch.int64)
    bounds = part * in_features // fan_in  # partition p is [bounds[p], bounds[p+1]), never empty
    starts, widths = bounds[:-1], bounds[1:] - bounds[:-1]
    u = torch.rand(out_features, fan_in, generator=generator, dtype=torch.float64)
    cols = starts + torch.clamp((u * widths).long(), max=widths - 1)
    rows = torch.arange(out_features, dtype=torch.int64).repeat_interleave(fan_in)
    return rows, cols.reshape(-1)
