"""Redistribution: the shared mechanism (:mod:`.mechanism`), what algorithms score with (:mod:`.signals`),
how they select (:mod:`.selection`), the algorithms and their registry (:mod:`.algorithms`), and the
:class:`Redistributor` a training loop talks to."""
from redr.redistribution.algorithms.registry import ALGORITHMS, algorithm_options, make_algorithm
from redr.redistribution.algorithms.removal import magnitude_removal
from redr.redistribution.mechanism import (InvariantError, LayerPlan, RedistributionAlgorithm, RedistributionContext,
                                           RedistributionPlan, RedistributionSchedule, apply_plan)
from redr.redistribution.redistributor import RedistributionReport, Redistributor
from redr.redistribution.selection import random_growth

__all__ = ["ALGORITHMS", "InvariantError", "LayerPlan", "RedistributionAlgorithm", "RedistributionContext",
           "RedistributionPlan", "RedistributionReport", "RedistributionSchedule", "Redistributor", "algorithm_options",
           "apply_plan", "magnitude_removal", "make_algorithm", "random_growth"]
