"""``redr reproduce growth``: does sampled gradient growth train as well as exact growth? (issue 15)

Every gradient-based algorithm (Redr-Gradient, Redr-Gradient-Global, Redr-Loss) is trained twice per seed
and width: ``growth="exact"`` (the dense gradient, streamed in tiles) and ``growth="sampled"`` (a seeded
candidate set of :data:`CANDIDATES` per weight to grow, scored by SDDMM). Both runs of a seed share the
initialisation and the batch order, so only the growth path tells them apart. The report
(:mod:`redr.experiments.report.growth`) compares their final test accuracies over seeds.

The widths are the issue's: 784-256-256-10 and 784-4096-4096-10 with ``redr train``'s practical
Fashion-MNIST preset (batch 256, lr 3e-3). The wide net trains on fewer rows for fewer epochs so that it fits
in an evening on two shared cores (:data:`WIDTHS`); ``--epochs`` and ``--densities`` override both widths.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from redr.errors import UsageError
from redr.experiments.grid import Cell, check_choices, run_name
from redr.redistribution.algorithms.sampled_growth import DEFAULT_CANDIDATES
from redr.training.config import PRESETS

EXPERIMENT = "growth"
ALGORITHMS = ("gradient", "gradient-global", "loss")
PATHS = ("exact", "sampled")
#: The sampled path's candidates per weight to grow: the algorithms' default.
CANDIDATES = DEFAULT_CANDIDATES
DATASET = "fashion-mnist"


@dataclass(frozen=True)
class WidthSetting:
    """The budget of one hidden width (``None``: the preset's)."""

    density: float = 0.1
    epochs: Optional[int] = None
    train_rows: Optional[int] = None

    def describe(self) -> str:
        rows = f"the first {self.train_rows:,} training rows" if self.train_rows else "all training rows"
        epochs = self.epochs or "the preset's"
        return f"d={self.density:g}, {epochs} epochs, {rows}"


#: Sized for two shared cores (docs/scale.md): an epoch of 784-256-256-10 at d=0.1 on all 60,000 rows takes
#: ~1.6 s on a quiet core (~15 s at nice 19 beside other jobs), one of 784-4096-4096-10 on 10,000 rows ~8 s;
#: half the preset's 20 epochs; the wide net 4 epochs on a third of the data (~6 min a run at load 8).
WIDTHS = {256: WidthSetting(density=0.1, epochs=10), 4096: WidthSetting(density=0.1, epochs=4, train_rows=20_000)}
#: Any other width asked for with --widths (tests, smoke checks): the preset's epochs, all rows.
OTHER_WIDTH = WidthSetting()


def growth_options(path: str) -> dict:
    """The algorithm options of one growth path (the sampled one states its candidate multiple)."""
    return {"growth": "exact"} if path == "exact" else {"growth": "sampled", "candidates": CANDIDATES}


def growth_cells(*, seeds: Optional[int] = None, epochs: Optional[int] = None, datasets: Optional[Sequence[str]] = None,
                 models: Optional[Sequence[str]] = None, densities: Optional[Sequence[float]] = None,
                 widths: Optional[Sequence[int]] = None, paths: Optional[Sequence[str]] = None) -> list[Cell]:
    """The runs: width (outer), algorithm, seed, path (inner), so a cut-short grid has whole pairs.
    ``paths`` restricts the growth paths (two processes can share a grid, one path each)."""
    datasets = list(datasets or (DATASET,))
    check_choices(datasets, seeds, epochs)
    algorithms = list(dict.fromkeys(models or ALGORITHMS))
    bad = [a for a in algorithms if a not in ALGORITHMS]
    if bad:
        raise UsageError(f"--algorithms {', '.join(bad)}: not part of the growth experiment (it runs "
                         f"{', '.join(ALGORITHMS)})")
    paths = list(dict.fromkeys(paths or PATHS))
    if any(p not in PATHS for p in paths):
        raise UsageError(f"--paths {', '.join(paths)}: choose from {', '.join(PATHS)}")
    widths = list(dict.fromkeys(widths or WIDTHS))
    if any(w < 1 for w in widths):
        raise UsageError(f"--widths must be positive, got {', '.join(map(str, widths))}")
    if densities is not None and len(densities) != 1:
        raise UsageError("--densities: the growth experiment takes one density (it overrides every width's)")
    if densities is not None and not 0 < densities[0] <= 1:
        raise UsageError(f"--densities must be in (0, 1], got {densities[0]}")
    cells = []
    for dataset in datasets:
        for width in widths:
            setting = WIDTHS.get(width, OTHER_WIDTH)
            base = {"dataset": dataset, "model": "sparse", "hidden": [width, width],
                    "density": float(densities[0]) if densities else setting.density,
                    "epochs": epochs or setting.epochs or PRESETS[dataset]["epochs"]}
            if setting.train_rows is not None:
                base["train_rows"] = setting.train_rows
            for algorithm in algorithms:
                for seed in range(seeds or 3):
                    for path in paths:
                        options = {**base, "algorithm": algorithm, "seed": seed,
                                   "algorithm_options": growth_options(path)}
                        cells.append(Cell(name=run_name(options, EXPERIMENT), options=options,
                                          experiments=[EXPERIMENT]))
    return cells
