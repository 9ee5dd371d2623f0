"""Removal by magnitude, shared by every algorithm but the second-order ones."""
from __future__ import annotations

import torch

from redr.redistribution.mechanism import RedistributionContext, RemovalScore
from redr.redistribution.selection import removal_count, smallest_k
from redr.sparse.layer import SparseLinear


class Magnitude(RemovalScore):
    """``|w|``: the smallest-magnitude weights go (ties: lower position)."""

    def scores(self, ctx: RedistributionContext):
        return (layer.values.detach().abs() for layer in ctx.layers)  # one layer at a time


def magnitude_removal(layer: SparseLinear, alpha: float) -> torch.Tensor:
    """Positions of the ``floor(alpha * nnz)`` active weights of smallest ``|w|`` (ties: lower position)."""
    return smallest_k(layer.values.detach().abs(), removal_count(layer.nnz, alpha))
