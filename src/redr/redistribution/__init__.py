"""Redistribution: the schedule, the shared plan/apply mechanism, and the algorithms."""
from redr.redistribution.base import RedistributionAlgorithm, RedistributionContext, magnitude_removal, random_growth
from redr.redistribution.plan import InvariantError, LayerPlan, RedistributionPlan, apply_plan
from redr.redistribution.redistributor import RedistributionReport, Redistributor
from redr.redistribution.registry import ALGORITHMS, make_algorithm
from redr.redistribution.schedule import RedistributionSchedule

__all__ = ["ALGORITHMS", "InvariantError", "LayerPlan", "RedistributionAlgorithm", "RedistributionContext",
           "RedistributionPlan", "RedistributionReport", "RedistributionSchedule", "Redistributor", "apply_plan",
           "magnitude_removal", "make_algorithm", "random_growth"]
