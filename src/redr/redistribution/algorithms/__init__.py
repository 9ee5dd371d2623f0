"""The algorithms: each a short class naming its removal score, its budget and its growth rule
(:mod:`redr.redistribution.mechanism.algorithm`), and the one registry of them (:mod:`.registry`).
The classes are imported only when used (``make_algorithm``)."""
from redr.redistribution.algorithms.registry import (ALGORITHMS, AlgorithmSpec, algorithm_class, algorithm_options,
                                                     algorithm_spec, display_name, make_algorithm, names)

__all__ = ["ALGORITHMS", "AlgorithmSpec", "algorithm_class", "algorithm_options", "algorithm_spec", "display_name",
           "make_algorithm", "names"]
