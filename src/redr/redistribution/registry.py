"""Algorithm names (as used by ``redr train --algorithm``) and their construction from options."""
from __future__ import annotations

import importlib
import inspect

from redr.errors import UsageError
from redr.redistribution.base import RedistributionAlgorithm

#: name -> "module:Class". Modules are imported only when an algorithm is used.
ALGORITHMS = {
    "none": "redr.redistribution.base:StaticSparse",
    "random": "redr.redistribution.random:RedrRandom",
    "gradient": "redr.redistribution.gradient:RedrGradient",
    "gradient-global": "redr.redistribution.gradient:RedrGradientGlobal",
    "loss": "redr.redistribution.loss:RedrLoss",
    "woodfisher": "redr.redistribution.woodfisher:RedrWoodfisher",
    "woodtaylor": "redr.redistribution.woodfisher:RedrWoodtaylor",
}


def algorithm_class(name: str) -> type[RedistributionAlgorithm]:
    if name not in ALGORITHMS:
        raise UsageError(f"unknown algorithm {name!r}; choose one of: {', '.join(ALGORITHMS)}")
    module, cls = ALGORITHMS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def algorithm_options(name: str) -> dict:
    """The options an algorithm accepts, with their defaults."""
    params = inspect.signature(algorithm_class(name).__init__).parameters
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {k: p.default for k, p in params.items() if k != "self" and p.kind in kinds}


def make_algorithm(name: str, **options) -> RedistributionAlgorithm:
    """Build an algorithm; an option it does not take is an error naming the ones it does."""
    accepted = algorithm_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) or "none"
        raise UsageError(f"algorithm {name!r} takes no option {', '.join(unknown)} (its options: {valid})")
    return algorithm_class(name)(**options)
