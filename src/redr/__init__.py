"""redr: dynamic sparse training with truly sparse layers and weight redistribution.

The names below are imported on first use (PEP 562), so that ``import redr.sparse`` or ``import redr.data``
loads only that part, never the training stack.
"""
from __future__ import annotations

import importlib
from importlib import metadata

try:
    __version__ = metadata.version("redr")
except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree that is not installed
    __version__ = "0+unknown"

#: public name -> the module that defines it
_EXPORTS = {
    "ALGORITHMS": "redr.redistribution",
    "RedistributionSchedule": "redr.redistribution",
    "Redistributor": "redr.redistribution",
    "make_algorithm": "redr.redistribution",
    "RunConfig": "redr.training.config",
    "SparseConv2d": "redr.sparse",
    "SparseLinear": "redr.sparse",
    "Trainer": "redr.training.trainer",
    "train": "redr.training.api",
    "build_mlp": "redr.sparse.convert",
    "count_weights": "redr.sparse.convert",
    "parameter_equivalent_sizes": "redr.sparse.convert",
    "sparse_layers": "redr.sparse.convert",
    "sparsify": "redr.sparse.sparsify",
    "sparsity_summary": "redr.sparse.sparsify",
    "export_dense_state_dict": "redr.inference",
    "load_checkpoint": "redr.inference",
}
__all__ = sorted(_EXPORTS)

#: subpackages and modules reachable as ``redr.<name>`` after a bare ``import redr``
_SUBMODULES = ("bench", "cli", "data", "errors", "experiments", "inference", "redistribution", "runtime", "sparse",
               "training")


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"redr.{name}")
    raise AttributeError(f"module 'redr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))
