"""The report's sections, in order: each one computes its tables, draws its figures into the output folder
and returns its Markdown with the tables (which :mod:`~redr.experiments.report.document` writes as CSV)."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from redr.experiments.grid import WOODTAYLOR_BLOCK, WOODTAYLOR_LAMBDA
from redr.experiments.report import figures, growth, measurements, prose, tables
from redr.experiments.report.claims import STATUSES, check_claims
from redr.experiments.report.names import DYNAMIC, GLOBAL, dataset_title, label, order
from redr.experiments.report.runset import RunSet, group


@dataclass
class Section:
    blocks: list = field(default_factory=list)  # Markdown, joined by newlines
    tables: list = field(default_factory=list)

    def add(self, *blocks: str) -> None:
        self.blocks.extend(blocks)


def _figure_path(runs: RunSet, kind: str, ds: str) -> Path:
    return runs.out / f"figures/{kind}_{ds}.png"


def _link(runs: RunSet, path: Path, caption: str) -> str:
    return prose.figure(path.relative_to(runs.out).as_posix(), caption)


# ---------------------------------------------------------------------- claims
def claims_section(runs: RunSet) -> Section:
    results = check_claims(runs.entries, runs.datasets)
    table = tables.claims_table(results)
    s = Section(tables=[table])
    s.add(prose.heading("The paper's claims, checked"), prose.CLAIMS_METHOD + "\n", tables.claims_markdown(table) + "\n")
    if results:
        counts = {status: sum(c.status == status for c in results) for status in STATUSES}
        s.add("Summary: " + ", ".join(f"{n} {status}" for status, n in counts.items()) + ".\n")
    return s


# ---------------------------------------------------------------------- accuracy grid
def accuracy_section(runs: RunSet) -> Section:
    table = tables.accuracy_table(runs.entries, runs.datasets)
    s = Section(tables=[table])
    for ds in runs.datasets:
        s.add(prose.heading(f"Test accuracy: {dataset_title(ds)} (Fig. {4 if ds == 'higgs' else 2})"))
        for which in ("final", "best"):
            s.add(prose.ACCURACY_TABLE.format(which=which.capitalize()), tables.accuracy_markdown(table, ds, which) + "\n")
        path = _figure_path(runs, "accuracy", ds)
        grid = runs.grid_runs(ds)
        if not grid:
            figures.placeholder(path, f"{dataset_title(ds)}: accuracy", f"no accuracy-grid runs: redr reproduce {ds}")
            continue
        densities = sorted({r.density for r in grid if r.model == "sparse"}, reverse=True) or [0.1]
        groups = group(grid, lambda r: (r.algorithm, r.density if r.model == "sparse" else None))
        figures.save(figures.accuracy_figure(groups, densities, ds), path, dpi=90)
        s.add(_link(runs, path, prose.ACCURACY_CAPTION.format(ds=dataset_title(ds))))
        if any(r.algorithm == "woodtaylor" for r in grid):
            s.add(prose.WOODTAYLOR_GRID.format(lam=WOODTAYLOR_LAMBDA, block=WOODTAYLOR_BLOCK))
    return s


def induced_section(runs: RunSet) -> Section:
    table = tables.induced_table(runs)
    s = Section(tables=[table])
    s.add(prose.heading("Induced loss (Fig. 3)"), prose.INDUCED)
    for ds in runs.datasets:
        s.add(f"**{dataset_title(ds)}**\n", tables.induced_markdown(table, ds) + "\n")
        path = _figure_path(runs, "induced_loss", ds)
        have = {k: v for k, v in tables.induced_groups(runs, ds).items() if any(r.induced_losses() for r in v)}
        if not have:
            figures.placeholder(path, f"{dataset_title(ds)}: induced loss", "no redistribution in any run: redr "
                                f"reproduce induced-loss --dataset {ds} (or the {ds} grid)")
            continue
        fig, notes = figures.induced_figure(have, sorted({d for _, d in have}, reverse=True), ds)
        figures.save(fig, path, dpi=90)
        s.add(_link(runs, path, prose.INDUCED_CAPTION.format(ds=dataset_title(ds)) + notes))
    return s


# ---------------------------------------------------------------------- frequency, depth, woodtaylor
def _woodtaylor_key(r):
    o = r.algorithm_options
    return o.get("block_size", WOODTAYLOR_BLOCK), o.get("dampening", WOODTAYLOR_LAMBDA)


SWEEPS = (
    tables.Sweep("frequency", "Redistribution frequency (Fig. 5)",
                 lambda r: r.model == "sparse" and r.is_preset_shape and not r.algorithm_options
                 and abs(r.density - 0.1) < 1e-9 and r.algorithm in DYNAMIC,
                 lambda r: r.every, "t", lambda t: t, str, "redr reproduce frequency --dataset {ds}",
                 count_redistributions=True),
    tables.Sweep("depth", "Network depth (Fig. 6)",
                 lambda r: r.model == "sparse" and r.every == 1 and not r.algorithm_options
                 and abs(r.density - 0.1) < 1e-9 and r.algorithm in DYNAMIC,
                 lambda r: tuple(r.hidden), "hidden", lambda h: (len(h), h), lambda h: "-".join(map(str, h)),
                 "redr reproduce depth --dataset {ds}"),
    tables.Sweep("woodtaylor", "Redr-Woodtaylor: dampening and block size (section 4.3.3)",
                 lambda r: r.algorithm == "woodtaylor" and r.is_preset_shape and r.every == 1 and r.algorithm_options,
                 _woodtaylor_key, "B,lambda", lambda k: (k[0] != WOODTAYLOR_BLOCK, k[0], k[1]),
                 lambda k: f"{k[0]},{k[1]:g}", "redr reproduce woodtaylor --dataset {ds}"),
)


def sweep_section(runs: RunSet, sweep: tables.Sweep) -> Section:
    """A table of final accuracy per algorithm x setting and its figure (curves + summary panel)."""
    table = sweep.table(runs)
    s = Section(tables=[table])
    s.add(prose.heading(sweep.title))
    for ds in runs.datasets:
        groups = sweep.groups(runs, ds)
        settings = sweep.settings(groups)
        path = _figure_path(runs, sweep.name, ds)
        command = sweep.command.format(ds=ds)
        if len(settings) < 2:
            figures.placeholder(path, f"{dataset_title(ds)}: {sweep.name}", f"not run: {command}")
            s.add(f"**{dataset_title(ds)}**: not run (`{command}`).\n")
            continue
        s.add(f"**{dataset_title(ds)}**: final test accuracy (%), mean ± std (seeds)\n",
              sweep.markdown(table, ds, settings) + "\n")
        if sweep.count_redistributions:
            s.add(prose.REDISTRIBUTION_COUNTS.format(counts=sweep.redistribution_counts(groups, settings)))
        algos = sorted({a for a, _ in groups}, key=order)
        fig = figures.sweep_figure(groups, settings, algos, sweep.key_label, sweep.fmt,
                                   f"{dataset_title(ds)}: {sweep.name}")
        figures.save(fig, path)
        s.add(_link(runs, path, f"{dataset_title(ds)}: test accuracy per epoch for each {sweep.key_label}, and the "
                                "final accuracy"))
    return s


# ---------------------------------------------------------------------- layer densities
def layer_density_section(runs: RunSet) -> Section:
    s = Section()
    s.add(prose.heading("Per-layer density over time (global algorithms)"), prose.LAYER_DENSITY)
    for ds in runs.datasets:
        path = _figure_path(runs, "layer_density", ds)
        chosen = [r for r in runs.grid_runs(ds) if r.algorithm in GLOBAL and r.layer_densities()]
        groups = group(chosen, lambda r: (r.algorithm, r.density))
        if not groups:
            figures.placeholder(path, f"{dataset_title(ds)}: per-layer density",
                                f"no global-algorithm runs: redr reproduce {ds}")
            s.add(f"**{dataset_title(ds)}**: no {' / '.join(label(a) for a in GLOBAL)} runs (`redr reproduce {ds}`).\n")
            continue
        algos = sorted({a for a, _ in groups}, key=order)
        densities = sorted({d for _, d in groups}, reverse=True)
        figures.save(figures.layer_density_figure(groups, algos, densities, ds), path)
        s.add(_link(runs, path, f"{dataset_title(ds)}: density of each sparse layer over the epochs (epoch 0: "
                                "initialisation)"))
    return s


# ---------------------------------------------------------------------- Tables 1 and 2
def timing_section(runs: RunSet) -> Section:
    table = measurements.timing_table(runs)
    s = Section(tables=[table])
    s.add(prose.heading("Table 1: time per epoch (HIGGS net, d=0.1)"))
    if table.records:
        s.add(prose.TIMING.format(shape=measurements.shape_text(runs.of_kind("timing"))),
              measurements.timing_markdown(table) + "\n")
    else:
        s.add("_Not run_: `redr reproduce timing`.\n")
    return s


def memory_section(runs: RunSet) -> Section:
    table = measurements.memory_table(runs)
    s = Section(tables=[table])
    s.add(prose.heading("Table 2: peak memory (KMNIST-shape net with 4096-wide hidden layers)"))
    if not table.records:
        s.add("_Not run_: `redr reproduce memory`.\n")
        return s
    s.add(prose.MEMORY.format(shape=measurements.shape_text(runs.of_kind("memory"))))
    baselines = measurements.baseline_text(runs)
    if baselines:
        s.add(f"Baseline: {baselines}.\n")
    s.add(measurements.memory_markdown(table) + "\n")
    return s


def growth_section(runs: RunSet) -> Section:
    """Sampled vs exact growth (``redr reproduce growth``; :mod:`~redr.experiments.report.growth`)."""
    table = growth.growth_table(runs.train)
    return Section(blocks=growth.growth_markdown(table), tables=[table])


SECTIONS = (claims_section, accuracy_section, induced_section, *(partial(sweep_section, sweep=w) for w in SWEEPS),
            layer_density_section, timing_section, memory_section, growth_section)
#: Every table a report writes (always all of them: empty when not run).
TABLES = ("accuracy", "induced_loss", *(w.name for w in SWEEPS), "timing", "memory", "claims", "growth")
#: Every figure a report writes per dataset.
FIGURES = ("accuracy", "induced_loss", *(w.name for w in SWEEPS), "layer_density")
