"""One memory measurement in a fresh process (``python -m redr.experiments.probe REQUEST_JSON``).

The peak is what :func:`redr.training.memory.peak_memory_bytes` reports after each epoch of a normal
training run (written to ``metrics.csv`` by the trainer):

* CUDA: the caching allocator's peak of allocated bytes (``torch.cuda.max_memory_allocated``), reset at
  the start of every epoch, so an epoch's peak includes its redistribution step;
* CPU: the process's peak resident set size (``VmHWM``), reset to the current resident set at the start
  of every epoch (``/proc/self/clear_refs``), so the transient of loading the data is not counted but what
  stays resident (interpreter, libraries, data) is. That is why every configuration runs in its own
  process, and why a baseline process (kernels run once, data loaded, peak reset, no model) is measured
  the same way and subtracted in the report. glibc's mmap threshold is fixed by the runner
  (:func:`redr.training.memory.memory_measuring_env`) so that freed large blocks leave the resident set.

Both kinds of process first run a tiny sparse layer and a tiny dense layer forward and backward with
Adam, so that every process carries the same loaded kernels (numba, BLAS) before the measured part.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def warm_up(device: torch.device) -> None:
    from redr.sparse.layer import SparseLinear

    # 256 x 128 positions: above the size for which "auto" picks dense math, so the real sparse kernels load
    for layer in (SparseLinear(256, 128, 0.1, device=device), torch.nn.Linear(256, 128, device=device)):
        opt = torch.optim.Adam(layer.parameters(), lr=1e-3)
        layer(torch.randn(32, 256, device=device)).square().mean().backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def baseline(config, out: Path) -> None:
    """The data on the device plus the warmed-up libraries: what every run of this shape carries anyway."""
    from redr.training.memory import peak_memory_bytes, reset_peak_memory
    from redr.training.rundir import CONFIG_FILE, METRICS_FILE, write_done, write_json_atomic, write_metrics
    from redr.training.trainer import load_data

    device = torch.device(config.device)
    data = load_data(config, device, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    reset_peak_memory(device)  # what stays resident, not the transient of loading (a training run's epochs reset too)
    peak = peak_memory_bytes(device)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / CONFIG_FILE, {"config": config.to_dict(), "data": data.info,
                                          "device": {"type": device.type}, "kind": "memory-baseline"})
    write_metrics(out / METRICS_FILE, [{"epoch": 0, "peak_memory_bytes": peak}])
    write_done(out)
    print(f"baseline peak {peak / 2**20:.1f} MiB on {device.type}")


def main(argv: list[str] | None = None) -> int:
    from redr.runtime import configure_threads
    from redr.training.api import train
    from redr.training.config import RunConfig

    request = json.loads((argv if argv is not None else sys.argv[1:])[0])
    config = RunConfig.from_dict(request["config"])
    config.validate()
    out = Path(request["out"])
    if request.get("threads"):
        configure_threads(request["threads"])
    warm_up(torch.device(config.device))
    if request.get("baseline"):
        baseline(config, out)
    else:
        train(config, out, overwrite=True, progress=False, command=["redr", "reproduce", "memory"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
