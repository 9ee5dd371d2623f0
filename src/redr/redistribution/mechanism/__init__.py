"""The mechanism every algorithm shares: the plan and its application with the invariant checks, the
algorithm interface (removal score + budget + growth rule, one :meth:`plan`), the schedule, the heap trim.
It imports no algorithm."""
from redr.redistribution.mechanism.algorithm import (Budget, GrowthRule, RedistributionAlgorithm, RedistributionContext,
                                                     RemovalScore, identity)
from redr.redistribution.mechanism.apply import apply_plan, unchanged
from redr.redistribution.mechanism.heap import release_free_heap
from redr.redistribution.mechanism.invariants import InvariantError, check_invariants
from redr.redistribution.mechanism.plan import LayerPlan, RedistributionPlan, no_growth
from redr.redistribution.mechanism.schedule import RedistributionSchedule

__all__ = ["Budget", "GrowthRule", "InvariantError", "LayerPlan", "RedistributionAlgorithm", "RedistributionContext",
           "RedistributionPlan", "RedistributionSchedule", "RemovalScore", "apply_plan", "check_invariants", "identity",
           "no_growth", "release_free_heap", "unchanged"]
