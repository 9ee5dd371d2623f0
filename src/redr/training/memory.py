"""Peak memory of a training process, as the trainer records it per epoch (``peak_memory_bytes`` in
metrics.csv) and the memory experiments and benchmarks measure it: reset, read, and the environment of a
subprocess that measures it."""
from __future__ import annotations

import os
import sys

import torch


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak for :func:`peak_memory_bytes` (the trainer does at every epoch start). CUDA: the
    allocator's peak statistics. CPU (Linux >= 4.0): the process's VmHWM, reset to the current resident set
    through ``/proc/self/clear_refs``; where that is not allowed the CPU peak stays the one since the
    process started (loading the data included) and this returns False."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:  # not Linux, an old kernel, or a restricted container
        return False


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: the caching allocator's peak since the last reset. CPU: the process's peak resident set
    size since the last :func:`reset_peak_memory` (VmHWM: interpreter, libraries and data included; compare
    configurations in fresh processes, against a baseline process)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - non-Linux
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


def memory_measuring_env() -> dict:
    """``os.environ`` for a subprocess that measures its peak memory on the CPU: glibc's mmap threshold fixed
    at 128 KiB (unless already set). By default glibc raises the threshold after the first large free, so later
    large blocks come from the heap, whose freed pages stay resident, and the peak RSS then measures the
    allocator's caching rather than what the run needs; with it fixed, every large tensor is its own mapping,
    returned to the OS when freed."""
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    return env
