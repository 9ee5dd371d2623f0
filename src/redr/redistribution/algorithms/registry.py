"""The one list of algorithms: name (as ``redr train --algorithm`` takes it), display name, scope, class.

Experiments, reports and the CLI read this list instead of keeping their own. ``scope`` says where an
algorithm's budget is decided: ``local`` (every layer moves its own ``floor(alpha * nnz)``), ``global``
(weights move between layers), ``static`` (nothing moves).
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

from redr.errors import UsageError


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    display_name: str
    scope: str  # "local", "global" or "static"
    target: str  # "module:Class", imported only when the algorithm is used


_SPECS = (
    AlgorithmSpec("none", "static sparse", "static", "redr.redistribution.algorithms.static:StaticSparse"),
    AlgorithmSpec("random", "Redr-Random", "local", "redr.redistribution.algorithms.random:RedrRandom"),
    AlgorithmSpec("gradient", "Redr-Gradient", "local", "redr.redistribution.algorithms.gradient:RedrGradient"),
    AlgorithmSpec("gradient-global", "Redr-Gradient-Global", "global", "redr.redistribution.algorithms.gradient:RedrGradientGlobal"),
    AlgorithmSpec("loss", "Redr-Loss", "local", "redr.redistribution.algorithms.loss:RedrLoss"),
    AlgorithmSpec("woodfisher", "Redr-Woodfisher", "global", "redr.redistribution.algorithms.woodfisher:RedrWoodfisher"),
    AlgorithmSpec("woodtaylor", "Redr-Woodtaylor", "global", "redr.redistribution.algorithms.woodfisher:RedrWoodtaylor"),
)

#: name -> spec, in the paper's order (static sparse first).
ALGORITHMS: dict[str, AlgorithmSpec] = {spec.name: spec for spec in _SPECS}


def algorithm_spec(name: str) -> AlgorithmSpec:
    if name not in ALGORITHMS:
        raise UsageError(f"unknown algorithm {name!r}; choose one of: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


def names(scope: str | None = None) -> tuple[str, ...]:
    """Algorithm names in registry order; with ``scope``, only those of that scope (``dynamic``: all but static)."""
    if scope == "dynamic":
        return tuple(s.name for s in _SPECS if s.scope != "static")
    return tuple(s.name for s in _SPECS if scope is None or s.scope == scope)


def display_name(name: str) -> str:
    """The paper's name of an algorithm (``Redr-Gradient-Global``); unknown names come back unchanged."""
    spec = ALGORITHMS.get(name)
    return spec.display_name if spec else name


def algorithm_class(name: str):
    module, cls = algorithm_spec(name).target.split(":")
    return getattr(importlib.import_module(module), cls)


def algorithm_options(name: str) -> dict:
    """The options an algorithm accepts, with their defaults."""
    params = inspect.signature(algorithm_class(name).__init__).parameters
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {k: p.default for k, p in params.items() if k != "self" and p.kind in kinds}


def make_algorithm(name: str, **options):
    """Build an algorithm; an option it does not take is an error naming the ones it does."""
    accepted = algorithm_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) or "none"
        raise UsageError(f"algorithm {name!r} takes no option {', '.join(unknown)} (its options: {valid})")
    return algorithm_class(name)(**options)
