"""The runs a report reads, loaded once and sorted into what its sections use."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Optional

from redr.experiments.report.paths import project_root
from redr.experiments.results import Run, grid_entries, load_runs
from redr.training.config import PRESETS


class RunSet:
    """Every run of ``runs_dir`` (finished or not), its finished training runs, the accuracy grid's
    entries over seeds, the datasets in the paper's order, and the recorded ``redr reproduce`` commands."""

    def __init__(self, runs_dir: Path, out: Path):
        self.runs_dir, self.out = Path(runs_dir), Path(out)
        self.root: Optional[Path] = project_root(self.out)
        self.runs = load_runs(self.runs_dir)
        self.done = [r for r in self.runs if r.status == "done"]
        self.train = [r for r in self.done if r.kind == "train" and r.rows]
        self.entries = grid_entries(self.runs)
        self.datasets = sorted({r.dataset for r in self.train},
                               key=lambda d: (list(PRESETS).index(d) if d in PRESETS else 99, d))
        self.invocations = _invocations((self.runs_dir, self.out))

    def grid_runs(self, dataset: str) -> list[Run]:
        return [r for r in self.train if r.dataset == dataset and r.is_grid_run]

    def of_kind(self, kind: str) -> list[Run]:
        return [r for r in self.done if r.kind == kind and r.rows]


def group(runs: Iterable[Run], key: Callable[[Run], object]) -> dict:
    groups = defaultdict(list)
    for r in runs:
        groups[key(r)].append(r)
    return groups


def _invocations(folders: Iterable[Path]) -> list[dict]:
    """The ``redr reproduce`` calls recorded in the folders' ``experiment.json`` (each once)."""
    seen, out = set(), []
    for folder in folders:
        path = folder / "experiment.json"
        if not path.exists():
            continue
        try:
            recorded = json.loads(path.read_text()).get("invocations", [])
        except ValueError:
            continue
        for inv in recorded:
            key = json.dumps(inv, sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append(inv)
    return out


def rows_used(info: dict, split: str):
    """Rows of ``split`` a run used, from its data info (the loaders' ``rows`` or the generated task's keys)."""
    rows = info.get("rows")
    if isinstance(rows, dict) and isinstance(rows.get(split), dict):
        return rows[split].get("used")
    return info.get(f"rows_{split}")


def fmt_rows(value) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"
