"""Redr-Random (section 2.1, after SET): remove by magnitude, regrow at random in the same layer."""
from __future__ import annotations

from redr.redistribution.base import RedistributionAlgorithm, RedistributionContext, magnitude_removal, random_growth
from redr.redistribution.plan import LayerPlan, RedistributionPlan


class RedrRandom(RedistributionAlgorithm):
    name = "random"

    def plan(self, ctx: RedistributionContext) -> RedistributionPlan:
        plans = []
        for layer in ctx.layers:
            remove = magnitude_removal(layer, ctx.alpha)
            plans.append(LayerPlan(remove, random_growth(layer, remove.numel(), ctx.generator)))
        return RedistributionPlan(plans)
