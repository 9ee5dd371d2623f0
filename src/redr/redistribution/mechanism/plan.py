"""A redistribution plan: what an algorithm decided, per layer; :func:`~.apply.apply_plan` carries it out."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


def no_growth(device=None) -> torch.Tensor:
    """The ``(2, 0)`` growth of a layer that grows nothing."""
    return torch.empty(2, 0, dtype=torch.int64, device=device)


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
        return cls(torch.empty(0, dtype=torch.int64, device=device), no_growth(device))


@dataclass
class RedistributionPlan:
    layers: list[LayerPlan]
    info: dict = field(default_factory=dict)  # algorithm-specific numbers worth logging
