"""Moved to :mod:`redr.redistribution.algorithms.registry`; this name stays for code that still imports it."""
from redr.redistribution.algorithms.registry import (ALGORITHMS, AlgorithmSpec, algorithm_class, algorithm_options,  # noqa: F401
                                                     algorithm_spec, display_name, make_algorithm, names)
