"""Finished runs read back from disk, and the per-configuration summaries the tables and claims use.

Only ``config.json``, ``metrics.csv``, ``cell.json`` and the ``DONE``/``FAILED`` markers are read, so a
report can be regenerated from a copy that holds just those small files (``redr report DIR --to``).
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from redr.training.config import PRESETS, paper_preset
from redr.training.rundir import CONFIG_FILE, METRICS_FILE, read_metrics

SMALL_FILES = (CONFIG_FILE, METRICS_FILE, "cell.json", "DONE", "FAILED", "scale.json")


@dataclass
class Run:
    name: str
    path: Path
    kind: str  # train | timing | memory | memory-baseline | scale
    status: str  # done | failed | incomplete
    config: dict
    info: dict
    rows: list
    message: str = ""

    # ---------------------------------------------------------------- identity
    @property
    def dataset(self) -> str:
        return self.config.get("dataset", "?")

    @property
    def model(self) -> str:
        return self.config.get("model", "sparse")

    @property
    def algorithm(self) -> str:
        """The algorithm, or the dense baseline's model name (the way tables list them)."""
        return self.model if self.model != "sparse" else self.config.get("algorithm", "?")

    @property
    def density(self) -> float:
        return float(self.config.get("density", 0.1))

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def hidden(self) -> list:
        return list(self.config.get("hidden") or [])

    @property
    def every(self) -> int:
        return int(self.config.get("redistribute_every", 1))

    @property
    def algorithm_options(self) -> dict:
        return dict(self.config.get("algorithm_options") or {})

    @property
    def is_preset_shape(self) -> bool:
        preset = PRESETS.get(paper_preset(self.dataset))
        return preset is not None and self.hidden == list(preset["hidden"])

    @property
    def is_grid_run(self) -> bool:
        """A run of the accuracy grid: preset architecture, t = 1, default algorithm options."""
        return self.kind == "train" and self.is_preset_shape and self.every == 1 and not self.algorithm_options

    # ---------------------------------------------------------------- numbers
    def column(self, key: str) -> list:
        return [row.get(key, math.nan) for row in self.rows]

    @property
    def final_acc(self) -> float:
        return self.rows[-1]["test_acc"] if self.rows else math.nan

    @property
    def best_acc(self) -> float:
        values = [v for v in self.column("test_acc") if not _nan(v)]
        return max(values) if values else math.nan

    def induced_losses(self) -> list[tuple[int, float]]:
        """(epoch, loss after - loss before) for every redistribution of the run."""
        out = []
        for row in self.rows:
            before, after = row.get("loss_before_redistribution", math.nan), row.get("loss_after_redistribution", math.nan)
            if not _nan(before) and not _nan(after):
                out.append((row["epoch"], after - before))
        return out

    @property
    def redistributions(self) -> int:
        """How many redistribution steps moved weights (epochs with alpha > 0)."""
        return sum(1 for a in self.column("alpha") if not _nan(a) and a > 0)

    @property
    def mean_induced_loss(self) -> float:
        values = [v for _, v in self.induced_losses()]
        return sum(values) / len(values) if values else math.nan

    def layer_densities(self) -> list[tuple[str, list[float]]]:
        """Per sparse layer: its name and density after every epoch (nnz / dense positions)."""
        sizes = (self.info.get("model") or {}).get("sizes") or []
        names = [k for k in (self.rows[0] if self.rows else {}) if k.startswith("nnz[")]
        out = []
        for i, key in enumerate(names):
            if i + 1 >= len(sizes):
                break
            positions = sizes[i] * sizes[i + 1]
            out.append((f"{key[4:-1]} ({sizes[i]}x{sizes[i + 1]})", [row[key] / positions for row in self.rows]))
        return out


def _nan(value) -> bool:
    return not isinstance(value, (int, float)) or math.isnan(value)


def find_run_dirs(directory: Path) -> list[Path]:
    """Run directories (holding config.json) in ``directory`` and in ``directory/runs``."""
    found = []
    for root in (directory, directory / "runs"):
        if root.is_dir():
            found += [p for p in sorted(root.iterdir()) if p.is_dir() and (p / CONFIG_FILE).exists()]
    return found


def load_run(path: Path) -> Optional[Run]:
    try:
        info = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    config = info.get("config") or {}
    cell = {}
    if (path / "cell.json").exists():
        try:
            cell = json.loads((path / "cell.json").read_text())
        except ValueError:
            cell = {}
    kind = cell.get("kind") or info.get("kind") or _kind_from_name(path.name)
    rows = read_metrics(path / METRICS_FILE) if (path / METRICS_FILE).exists() else []
    message = ""
    if (path / "DONE").exists():
        status = "done"
    elif (path / "FAILED").exists():
        status = "failed"
        lines = (path / "FAILED").read_text().strip().splitlines()
        message = lines[0] if lines else "failed"
    else:
        status = "incomplete"
    return Run(path.name, path, kind, status, config, info, rows, message)


def _kind_from_name(name: str) -> str:
    if name.startswith("timing_"):
        return "timing"
    if name.startswith("memory_"):
        return "memory-baseline" if "_baseline_" in name else "memory"
    return "train"


def load_runs(directory: str | Path) -> list[Run]:
    return [run for run in (load_run(p) for p in find_run_dirs(Path(directory))) if run is not None]


# ---------------------------------------------------------------------- summaries over seeds
def mean(values: Iterable[float]) -> float:
    values = [v for v in values if not _nan(v)]
    return sum(values) / len(values) if values else math.nan


def std(values: Iterable[float]) -> float:
    values = [v for v in values if not _nan(v)]
    return statistics.stdev(values) if len(values) > 1 else 0.0 if values else math.nan


@dataclass
class Entry:
    """One configuration of an accuracy grid over its seeds: the unit the tables and claims use.

    ``model`` is an algorithm name for sparse nets (``none`` = static sparse) or ``dense-neuron`` /
    ``dense-param``; ``final``/``best`` are test accuracies in [0, 1] and ``induced`` the mean induced loss
    of each seed's run.
    """

    dataset: str
    model: str
    density: float
    final: list = field(default_factory=list)
    best: list = field(default_factory=list)
    induced: list = field(default_factory=list)
    seeds: list = field(default_factory=list)
    epochs: int = 0

    @property
    def is_dense(self) -> bool:
        return self.model.startswith("dense-")


def grid_entries(runs: Iterable[Run]) -> list[Entry]:
    """Finished accuracy-grid runs grouped over seeds."""
    groups: dict = {}
    for run in runs:
        if run.status != "done" or not run.is_grid_run or not run.rows:
            continue
        key = (run.dataset, run.algorithm, run.density)
        entry = groups.setdefault(key, Entry(run.dataset, run.algorithm, run.density, epochs=len(run.rows)))
        entry.final.append(run.final_acc)
        entry.best.append(run.best_acc)
        entry.induced.append(run.mean_induced_loss)
        entry.seeds.append(run.seed)
    return list(groups.values())
