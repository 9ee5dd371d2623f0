"""Static sparse training: no redistribution."""
from __future__ import annotations

from redr.redistribution.mechanism import LayerPlan, RedistributionAlgorithm, RedistributionContext, RedistributionPlan


class StaticSparse(RedistributionAlgorithm):
    """No redistribution: the topology stays as initialised (the paper's "sparse, no redistribution")."""

    name = "none"

    def plan(self, ctx: RedistributionContext) -> RedistributionPlan:
        return RedistributionPlan([LayerPlan.empty(layer.values.device) for layer in ctx.layers])
