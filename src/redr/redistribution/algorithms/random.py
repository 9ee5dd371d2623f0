"""Redr-Random (section 2.1, after SET): remove by magnitude, regrow at random in the same layer."""
from __future__ import annotations

from redr.redistribution.algorithms.growth import RandomGrowth
from redr.redistribution.algorithms.removal import Magnitude
from redr.redistribution.mechanism import RedistributionAlgorithm
from redr.redistribution.selection import LayerBudget


class RedrRandom(RedistributionAlgorithm):
    name = "random"
    removal = Magnitude()
    budget = LayerBudget()
    growth = RandomGrowth()
