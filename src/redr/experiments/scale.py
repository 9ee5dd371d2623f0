"""One run of the ``scale`` ladder in its own process (``python -m redr.experiments.scale REQUEST_JSON``).

A fresh process per run, so that the peak resident set is the run's own: ``build_peak_bytes`` is the
process's ``VmHWM`` once the data are loaded and the model, the optimizer (and on resume the checkpoint)
are built; every epoch's peak (training, evaluation and the redistribution) is the trainer's
``peak_memory_bytes`` in ``metrics.csv`` (``VmHWM`` reset at the epoch's start). glibc's mmap threshold is
fixed (:func:`redr.training.memory.memory_measuring_env`) so that freed large blocks leave the resident set.

Written next to the trainer's files, ``scale.json``: the build peak, the bytes per active weight of the sparse
layers measured on their tensors after training (values, CSR indices, transposed companion, gradient, Adam
moments; :func:`redr.bench.memory.bytes_per_active_weight`), the model's weight counts, the memory the dense
twin would need (computed, never allocated: :func:`dense_twin_bytes`) and the run's memory estimate.

A run interrupted after a checkpoint is resumed (the runner passes ``resume``), as for the other
experiments. A line ``progress: ...`` every ``progress_seconds`` (default 60) says where a long epoch is.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import torch

SCALE_FILE = "scale.json"
#: Bytes per parameter of the dense twin that :func:`dense_twin_bytes` counts: float32 weights and Adam's two
#: moments (a gradient would add 4 more).
DENSE_TWIN_BYTES_PER_PARAMETER = 12


def dense_twin_parameters(sizes: list[int]) -> int:
    """Weights and biases of the dense MLP with these layer sizes (784-W-W-10's neuron-equivalent twin)."""
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def dense_twin_bytes(sizes: list[int]) -> int:
    """What the dense twin would need for its weights and Adam state, float32: 12 bytes per parameter."""
    return DENSE_TWIN_BYTES_PER_PARAMETER * dense_twin_parameters(sizes)


class Ticker:
    """A daemon thread that logs where the trainer is, every ``seconds``: step of the epoch and its ETA."""

    def __init__(self, trainer, seconds: float, log):
        self.trainer, self.seconds, self.log = trainer, seconds, log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        if self.seconds > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():  # no thread of ours is left running when the process ends
            self._thread.join()

    def _loop(self) -> None:
        start, first = time.perf_counter(), None  # first: (epoch, step, time) of this epoch's first sighting
        while not self._stop.wait(self.seconds):
            t = self.trainer
            epoch, step, steps = t.epoch + 1, t.step_in_epoch, t._epoch_steps
            now = time.perf_counter()
            if first is None or first[0] != epoch:
                first = (epoch, step, now)
            rate = (now - first[2]) / (step - first[1]) if step > first[1] else None  # seconds per step seen
            if steps and step >= steps:
                where = "evaluating / redistributing"
            elif steps and step:
                left = f"~{rate * (steps - step):.0f} s" if rate else "? s"
                where = f"step {step}/{steps} ({100 * step / steps:.0f}%), {left} of the epoch left"
            else:
                where = "starting"
            self.log(f"progress: epoch {epoch}/{t.config.epochs}, {where}; {time.perf_counter() - start:.0f} s in this process")


def run(request: dict) -> None:
    """Train (or resume) the run described by ``request`` and write ``scale.json``."""
    from redr.bench.memory import bytes_per_active_weight
    from redr.runtime import configure_threads
    from redr.training.api import resume_from
    from redr.training.config import RunConfig
    from redr.training.memory import peak_memory_bytes
    from redr.training.rundir import check_out_dir, write_json_atomic
    from redr.training.trainer import Trainer

    def log(line: str) -> None:
        print(line, flush=True)

    config = RunConfig.from_dict(request["config"])
    config.validate()
    out, resume = Path(request["out"]), bool(request.get("resume"))
    if request.get("threads"):
        configure_threads(request["threads"])
    existing = check_out_dir(out, overwrite=not resume, resume=resume)
    started = time.perf_counter()
    trainer = Trainer(config, out, progress=False, log=log)
    if resume:
        resume_from(trainer, out, log)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for name in existing:
            (out / name).unlink()
        trainer.write_config(request.get("command"))
    build_seconds = time.perf_counter() - started
    build_peak = peak_memory_bytes(trainer.device)
    log(f"built in {build_seconds:.1f} s, peak resident set so far {build_peak / 2**30:.2f} GiB")
    sizes = list(trainer.summary.sizes)
    record = {"build_peak_bytes": build_peak, "build_seconds": build_seconds, "resumed": resume,
              "sizes": sizes, "weights": trainer.summary.weights, "parameters": trainer.summary.parameters,
              "sparse_weights": trainer.summary.sparse_weights,
              "dense_twin_parameters": dense_twin_parameters(sizes), "dense_twin_bytes": dense_twin_bytes(sizes),
              "dense_twin_bytes_per_parameter": DENSE_TWIN_BYTES_PER_PARAMETER,
              "memory_estimate": {p.name: p.bytes for p in trainer.memory_estimate.parts},
              "memory_estimate_total": trainer.memory_estimate.total_bytes}
    write_json_atomic(out / SCALE_FILE, record)
    with Ticker(trainer, float(request.get("progress_seconds", 60)), log):
        trainer.run()
    record["bytes_per_active_weight"] = bytes_per_active_weight(trainer.model, trainer.optimizer)
    record["model_bytes"] = _model_bytes(trainer)
    write_json_atomic(out / SCALE_FILE, record)


def _model_bytes(trainer) -> int:
    """Bytes of every parameter, gradient, buffer and Adam moment of the model as it ends (the persistent state)."""
    seen, total = set(), 0
    tensors = list(trainer.model.parameters()) + list(trainer.model.buffers())
    tensors += [p.grad for p in trainer.model.parameters() if p.grad is not None]
    for state in trainer.optimizer.state.values():
        tensors += [v for v in state.values() if torch.is_tensor(v)]
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def main(argv: list[str] | None = None) -> int:
    run(json.loads((argv if argv is not None else sys.argv[1:])[0]))
    return 0


if __name__ == "__main__":
    # The run's files are written (atomically) by now. End without the interpreter's finalisation: the native
    # thread pools' teardown at exit aborted a finished run now and then ("terminate called without an active
    # exception", exit -6, seen once in a full test run), which the grid would count as a failed run.
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
