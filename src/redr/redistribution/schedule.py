"""Moved to :mod:`redr.redistribution.mechanism.schedule`; this name stays for code that still imports it."""
from redr.redistribution.mechanism.schedule import RedistributionSchedule  # noqa: F401
