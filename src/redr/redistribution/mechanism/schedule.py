"""When to redistribute and how much (the paper's section 3.1, after RigL).

Redistribution happens at the end of every ``every``-th epoch. The fraction ``alpha`` of active weights
moved follows a cosine decay from ``alpha0`` to 0 at ``end_fraction`` of the total epochs:
``alpha(e) = alpha0 / 2 * (1 + cos(pi * e / (end_fraction * total_epochs)))`` for a redistribution after
finished epoch ``e``; from ``end_fraction * total_epochs`` on there is none (the fine-tuning phase).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class RedistributionSchedule:
    total_epochs: int
    every: int = 1
    alpha0: float = 0.5
    end_fraction: float = 0.75

    def __post_init__(self):
        if self.total_epochs < 1:
            raise ValueError(f"total_epochs must be >= 1, got {self.total_epochs}")
        if self.every < 1:
            raise ValueError(f"the redistribution interval must be >= 1 epoch, got {self.every}")
        if not 0.0 <= self.alpha0 <= 1.0:
            raise ValueError(f"alpha0 must be in [0, 1], got {self.alpha0}")
        if not 0.0 <= self.end_fraction <= 1.0:
            raise ValueError(f"end_fraction must be in [0, 1], got {self.end_fraction}")

    @property
    def end_epoch(self) -> float:
        return self.end_fraction * self.total_epochs

    def alpha(self, epoch: int) -> float:
        """Fraction moved by a redistribution after finished epoch ``epoch`` (1-based); 0 from the end on."""
        if epoch >= self.end_epoch or self.end_epoch <= 0:
            return 0.0
        return self.alpha0 / 2.0 * (1.0 + math.cos(math.pi * epoch / self.end_epoch))

    def should_redistribute(self, epoch: int) -> bool:
        return epoch >= 1 and epoch % self.every == 0 and self.alpha(epoch) > 0.0

    def epochs(self) -> list[int]:
        """Every epoch after which a redistribution happens."""
        return [e for e in range(1, self.total_epochs + 1) if self.should_redistribute(e)]

    def to_dict(self) -> dict:
        return asdict(self)
