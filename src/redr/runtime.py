"""Process set-up shared by every layer: CPU threads and the compute device, each decided in one place.

Threads. torch and the numba kernels share one OpenMP runtime, and the *first start* of numba's thread pool
resets the OpenMP thread count that torch uses to ``NUMBA_NUM_THREADS`` (measured here with numba 0.68's
``omp`` layer: ``torch.set_num_threads(1)`` then the first numba kernel, or ``numba.set_num_threads``, left
torch with 2 threads on 2 cores; ``OMP_NUM_THREADS=1`` likewise). torch's reductions round differently with a
different thread count, so a run's numbers would depend on whether numba or the user's thread setting came
first. :func:`configure_threads` therefore starts numba's pool *first* and sets torch *last*; the trainer calls
it before any kernel runs, so later kernel launches never change torch's count.

Device. The default (CUDA when available) and the one validation with its messages live here; the CLI,
the run configuration, the trainer, data-parallel launch, the experiments and the benchmarks all use them.
"""
from __future__ import annotations

import platform
from typing import Optional

import torch

from redr.errors import UsageError


def _start_numba_pool() -> Optional[object]:
    """numba's thread pool, started (idempotent: numba starts it once per process); None without numba."""
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency; torch-only use still works
        return None
    numba.get_num_threads()  # starts the pool (and its OpenMP reset) if it is not running yet
    return numba


def configure_threads(threads: Optional[int] = None) -> int:
    """Set the CPU threads of torch and of the numba kernels, in the one order that holds: numba's pool first,
    torch last. Returns torch's thread count.

    ``threads=None`` keeps both counts as they are (torch's as it was before numba's pool started) and only
    makes sure that no later numba start can change torch's. Idempotent: calling it again with the same
    argument changes nothing."""
    n = max(1, int(threads)) if threads is not None else torch.get_num_threads()
    numba = _start_numba_pool()
    if numba is not None and threads is not None:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def default_device() -> str:
    """The device used when none is given: ``cuda`` when torch sees a GPU, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(requested: Optional[str] = None, *, option: str = "--device") -> torch.device:
    """``requested`` (or :func:`default_device`) as a ``torch.device``, checked here: a device string torch
    reads, of type cpu or cuda, and a CUDA device that exists. A :class:`UsageError` naming ``option`` else."""
    name = requested if requested is not None else default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"{option} {name!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"{option} {name}: no CUDA device is available here (use {option} cpu)")
        if device.index is not None and device.index >= count:
            raise UsageError(f"{option} {name}: only {count} CUDA device(s) here (cuda:0..cuda:{count - 1})")
    elif device.type != "cpu":
        raise UsageError(f"{option} {name}: unsupported device type {device.type!r} (cpu or cuda)")
    return device


def device_name(device: torch.device) -> str:
    """The GPU's name, or the processor's as the platform reports it (recorded in a run's config.json)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()
