"""Run a grid of cells through the trainer: resumable, with progress and an ETA.

For every cell, its directory ``<out>/<cell.name>`` decides what happens:

* ``DONE`` there: skipped (the finished run is reused);
* ``FAILED`` there (the run raised): skipped and reported, unless ``retry_failed``;
* a ``config.json`` but no ``DONE`` (interrupted): resumed from its checkpoint, or redone from scratch
  when there is no usable checkpoint, when only settings that do not change results (the device, the
  data folder) differ, or for memory runs (a peak must come from one fresh process);
* nothing (or an empty folder): a new run.

Before anything runs, every existing run directory's saved config is compared with the requested one;
any difference in a setting that changes results is an error naming the run and the settings, never a
silent reuse. The device and the sparse-kernel backend count as such settings for timing and memory runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence

from redr.errors import DataError, UsageError
from redr.experiments.grid import Cell
from redr.runtime import default_device
from redr.training import checkpoint
from redr.training.api import train
from redr.training.config import RunConfig, with_legacy_defaults
from redr.training.memory import memory_measuring_env
from redr.training.rundir import CONFIG_FILE, DONE_FILE, METRICS_FILE, read_metrics, write_json_atomic

CELL_FILE, FAILED_FILE = "cell.json", "FAILED"
MEMORY_KINDS = ("memory", "memory-baseline")
#: Kinds that run in a fresh Python process (their peak memory must be their own), and the module each runs.
FRESH_PROCESS = {"memory": "redr.experiments.probe", "memory-baseline": "redr.experiments.probe",
                 "scale": "redr.experiments.scale"}
#: Settings that never change results: a run that differs only here is reused when finished. The preset
#: only fills defaults, and every value it fills is compared on its own.
IGNORED_ALWAYS = ("data_dir", "download", "preset")
#: ... and, for accuracy runs only, where it ran (CPU and GPU runs of one config are the same experiment).
IGNORED_FOR_ACCURACY = ("device", "backend")


def ignored_keys(kind: str) -> tuple:
    return IGNORED_ALWAYS + (IGNORED_FOR_ACCURACY if kind == "train" else ())


def format_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def requested_config(cell: Cell, device: str, data_dir: Optional[str]) -> RunConfig:
    return RunConfig.from_options(**cell.options, device=device, data_dir=data_dir)


def read_saved_config(run_dir: Path) -> Optional[dict]:
    path = run_dir / CONFIG_FILE
    if not path.exists():
        return None
    try:
        return with_legacy_defaults(json.loads(path.read_text())["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: unreadable ({exc}); this is not a redr run directory: move it out of --out") from None


def config_mismatches(saved: dict, requested: dict, kind: str) -> list[str]:
    skip = set(ignored_keys(kind))
    keys = sorted((set(saved) | set(requested)) - skip)
    return [f"{k} saved {saved.get(k)!r}, requested {requested.get(k)!r}" for k in keys if saved.get(k) != requested.get(k)]


@dataclass
class PlannedRun:
    cell: Cell
    config: Optional[RunConfig]  # None: the algorithm is not available in this installation
    state: str  # done | failed | resume | redo | new | unavailable
    reason: str = ""
    epochs_done: int = 0

    @property
    def remaining_epochs(self) -> int:
        if self.state in ("done", "failed", "unavailable"):
            return 0
        return max(1, self.cell.epochs - self.epochs_done)


def plan_grid(cells: Sequence[Cell], out: Path, device: str, data_dir: Optional[str],
              retry_failed: bool = False) -> list[PlannedRun]:
    """What each cell needs; raises UsageError (before anything runs) when a run dir holds another config."""
    planned, mismatches, unavailable = [], [], {}
    for cell in cells:
        try:
            config = requested_config(cell, device, data_dir)
        except UsageError:
            raise
        except Exception as exc:  # an algorithm whose module is missing or broken in this installation
            algorithm = cell.options.get("algorithm")
            reason = unavailable.setdefault(algorithm, f"{type(exc).__name__}: {exc}".splitlines()[0])
            if (out / cell.name / DONE_FILE).exists():  # finished earlier: keep it (its config cannot be re-checked)
                planned.append(PlannedRun(cell, None, "done", f"config not re-checked: {reason}"))
            else:
                planned.append(PlannedRun(cell, None, "unavailable", f"cannot load algorithm {algorithm!r} ({reason})"))
            continue
        run_dir = out / cell.name
        saved = read_saved_config(run_dir) if run_dir.is_dir() else None
        if run_dir.exists() and not run_dir.is_dir():
            raise UsageError(f"{run_dir} exists and is not a directory")
        if saved is None and (run_dir / FAILED_FILE).exists() and not retry_failed:  # failed before it started
            planned.append(PlannedRun(cell, config, "failed", _first_line(run_dir / FAILED_FILE)))
            continue
        if saved is None:
            state = "redo" if run_dir.is_dir() and any(run_dir.iterdir()) else "new"
            planned.append(PlannedRun(cell, config, state, "no config.json (never started properly)" if state == "redo" else ""))
            continue
        diff = config_mismatches(saved, config.to_dict(), cell.kind)
        if diff:
            mismatches.append(f"{run_dir}: {'; '.join(diff)}")
            continue
        epochs_done = len(read_metrics(run_dir / METRICS_FILE)) if (run_dir / METRICS_FILE).exists() else 0
        if (run_dir / DONE_FILE).exists():
            planned.append(PlannedRun(cell, config, "done", epochs_done=epochs_done))
        elif (run_dir / FAILED_FILE).exists() and not retry_failed:
            planned.append(PlannedRun(cell, config, "failed", _first_line(run_dir / FAILED_FILE)))
        elif cell.kind in MEMORY_KINDS:
            planned.append(PlannedRun(cell, config, "redo", "a memory peak must come from one fresh process"))
        elif saved != config.to_dict():
            planned.append(PlannedRun(cell, config, "redo", "interrupted, and started with another device/data dir"))
        elif not any((run_dir / n).exists() for n in (checkpoint.CHECKPOINT, checkpoint.PREVIOUS)):
            planned.append(PlannedRun(cell, config, "redo", "interrupted before its first checkpoint"))
        else:
            planned.append(PlannedRun(cell, config, "resume", f"interrupted after epoch {epochs_done}",
                                      epochs_done=epochs_done))
    if mismatches:
        more = f" (and {len(mismatches) - 5} more)" if len(mismatches) > 5 else ""
        raise UsageError("run directories in --out hold a different config than requested: " + " | ".join(mismatches[:5])
                         + more + ". Use another --out, the same options as before, or delete those runs")
    return planned


def _first_line(path: Path) -> str:
    try:
        return path.read_text().strip().splitlines()[0]
    except (OSError, IndexError):
        return "failed"


@dataclass
class GridSummary:
    total: int
    done_before: int = 0
    trained: int = 0
    failed: list = field(default_factory=list)  # (name, message)
    failed_before: list = field(default_factory=list)
    unavailable: dict = field(default_factory=dict)  # algorithm -> reason
    seconds: float = 0.0

    @property
    def finished(self) -> int:
        return self.done_before + self.trained


class Progress:
    """Runs done / total and an ETA from the seconds per epoch measured in this session."""

    def __init__(self, planned: Sequence[PlannedRun], log: Callable[[str], None]):
        self.log = log
        self.total = len(planned)
        self.done = sum(p.state == "done" for p in planned)  # finished runs
        self.position = sum(p.state in ("done", "failed", "unavailable") for p in planned)  # runs dealt with
        self.remaining_epochs = sum(p.remaining_epochs for p in planned)
        self.start = time.perf_counter()
        self.epochs_trained = 0

    def eta(self) -> Optional[float]:
        if self.epochs_trained == 0:
            return None
        return (time.perf_counter() - self.start) / self.epochs_trained * self.remaining_epochs

    def epoch_finished(self) -> None:
        self.epochs_trained += 1
        self.remaining_epochs = max(0, self.remaining_epochs - 1)

    def run_finished(self, run: PlannedRun, epochs_counted: int, ok: bool = True) -> None:
        self.remaining_epochs = max(0, self.remaining_epochs - max(0, run.remaining_epochs - epochs_counted))
        self.position += 1
        self.done += int(ok)

    def status(self) -> str:
        return f"runs done {self.done}/{self.total}, ETA {format_seconds(self.eta())}"


def run_grid(cells: Sequence[Cell], out: str | os.PathLike, *, device: Optional[str] = None,
             data_dir: Optional[str] = None, retry_failed: bool = False, progress: bool = True,
             verbose: bool = True, log: Callable[[str], None] = print, command: Optional[list] = None,
             threads: Optional[int] = None) -> GridSummary:
    """Run every cell not finished yet into ``out/<cell.name>``; returns what happened."""
    out = Path(out)
    device = device or default_device()
    planned = plan_grid(cells, out, device, data_dir, retry_failed)
    out.mkdir(parents=True, exist_ok=True)
    summary = GridSummary(total=len(planned))
    for p in planned:
        if p.state == "done":
            summary.done_before += 1
        elif p.state == "failed":
            summary.failed_before.append((p.cell.name, p.reason))
        elif p.state == "unavailable":
            summary.unavailable.setdefault(p.cell.options.get("algorithm"), p.reason)
    for algorithm, reason in summary.unavailable.items():
        log(f"skipping every {algorithm!r} run: {reason}")
    todo = [p for p in planned if p.state in ("new", "redo", "resume")]
    prog = Progress(planned, log)
    log(f"{len(planned)} runs in {out}: {summary.done_before} finished already, {len(todo)} to run"
        + (f", {len(summary.failed_before)} failed before (--retry-failed reruns them)" if summary.failed_before else "")
        + (f", {sum(p.state == 'unavailable' for p in planned)} unavailable" if summary.unavailable else ""))
    for p in todo:
        run_dir = out / p.cell.name
        index = prog.position + 1
        log(f"[{index}/{prog.total}] {p.cell.name}: " + {"new": "starting", "redo": f"starting over ({p.reason})",
                                                            "resume": f"resuming ({p.reason})"}[p.state])
        counted = [0]

        def run_log(line: str, _index=index) -> None:
            if line.startswith("epoch"):
                counted[0] += 1
                prog.epoch_finished()
                if verbose:
                    log(f"  [{_index}/{prog.total}] {line}  | ETA {format_seconds(prog.eta())}")
            elif verbose:
                log(f"  {line}")

        started = time.perf_counter()
        try:
            _write_cell(run_dir, p.cell)
            (run_dir / FAILED_FILE).unlink(missing_ok=True)
            if p.cell.kind in FRESH_PROCESS:
                run_in_fresh_process(p.cell, p.config, run_dir, run_log, threads,
                                     resume=p.state == "resume", command=command)
            else:
                execute(p, run_dir, progress=progress, log=run_log, command=command)
        except KeyboardInterrupt:
            log(f"interrupted during {p.cell.name}; rerun the same command to resume the grid")
            raise
        except (DataError, UsageError):  # missing data or a bad option: every other run would fail the same way
            log(f"stopping the grid at {p.cell.name}: the error below is not specific to this run")
            raise
        except Exception as exc:  # one broken run must not stop a day-long grid: record it and go on
            message = f"{type(exc).__name__}: {exc}".splitlines()[0]
            (run_dir / FAILED_FILE).write_text(message + "\n\n" + traceback.format_exc())
            summary.failed.append((p.cell.name, message))
            prog.run_finished(p, counted[0], ok=False)
            log(f"[{index}/{prog.total}] {p.cell.name} FAILED: {message} | {prog.status()}")
            continue
        summary.trained += 1
        prog.run_finished(p, counted[0])
        log(f"[{index}/{prog.total}] {p.cell.name} done in {format_seconds(time.perf_counter() - started)}"
            + _final_text(run_dir) + f" | {prog.status()}")
    summary.seconds = time.perf_counter() - prog.start
    return summary


def _final_text(run_dir: Path) -> str:
    try:
        rows = read_metrics(run_dir / METRICS_FILE)
    except OSError:
        return ""
    if rows and "test_acc" in rows[-1]:
        return f", final test acc {rows[-1]['test_acc']:.4f}"
    return ""


def _write_cell(run_dir: Path, cell: Cell) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CELL_FILE
    experiments = list(cell.experiments)
    if path.exists():
        try:
            experiments = list(dict.fromkeys(json.loads(path.read_text()).get("experiments", []) + experiments))
        except ValueError:
            pass
    write_json_atomic(path, {"name": cell.name, "kind": cell.kind, "experiments": experiments, "options": cell.options})


def execute(p: PlannedRun, run_dir: Path, *, progress: bool, log, command) -> None:
    """One accuracy or timing run through the trainer (resumed where possible)."""
    if p.state == "resume":
        try:
            train(p.config, run_dir, resume=True, progress=progress, log=log, command=command)
            return
        except checkpoint.CheckpointError as exc:
            log(f"no usable checkpoint ({exc}); starting over")
    train(p.config, run_dir, overwrite=True, progress=progress, log=log, command=command)


def run_in_fresh_process(cell: Cell, config: RunConfig, run_dir: Path, log, threads: Optional[int] = None, *,
                         resume: bool = False, command: Optional[list] = None) -> None:
    """A memory run (or the baseline) or a scale run in its own Python process, so that its peak is its own;
    its output lines are passed to ``log`` as they come (a scale run's epoch takes many minutes)."""
    request = {"config": config.to_dict(), "out": str(run_dir), "baseline": cell.kind == "memory-baseline",
               "threads": threads, "resume": resume, "command": command}
    module = FRESH_PROCESS[cell.kind]
    proc = subprocess.Popen([sys.executable, "-m", module, json.dumps(request)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=memory_measuring_env())
    last = "no output"
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.strip() and not line.startswith("\r"):
                last = line
                log(line)
    finally:
        code = proc.wait()
    if code != 0:
        what = "memory probe" if cell.kind in MEMORY_KINDS else f"{cell.kind} run"
        raise RuntimeError(f"{what} exited with {code}: {last}")


def record_invocation(out: Path, entry: dict) -> None:
    """Append this reproduce call (command, experiment, budget, machine) to ``out/experiment.json``."""
    path = out / "experiment.json"
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        data = {}
    data.setdefault("invocations", []).append({**entry, "time": datetime.now(timezone.utc).isoformat()})
    write_json_atomic(path, data)
