"""The accuracy-grid, induced-loss, sweep and claims tables: computed from the runs once, each shown in
Markdown by a view of the same records (:mod:`~redr.experiments.report.table`)."""
from __future__ import annotations

import math
from typing import Callable, Sequence

from redr.experiments.grid import DENSITIES
from redr.experiments.report.claims import AGAINST, FOR, UNRESOLVED, ClaimResult
from redr.experiments.report.names import DYNAMIC, dataset_title, label, order
from redr.experiments.report.runset import RunSet, group
from redr.experiments.report.table import Table, flat, mean_std, number, pivot
from redr.experiments.results import Entry, mean, std

ACCURACY_COLUMNS = ("dataset", "model", "density", "seeds", "epochs", "final_mean", "final_std", "best_mean",
                    "best_std", "seed_list")


def _density_column(record: dict):
    """Dense nets have one size (the parameter-equivalent one matched to d=0.1): shown at every density."""
    return None if record["model"].startswith("dense-") else record["density"]


# ---------------------------------------------------------------------- accuracy grid
def accuracy_table(entries: Sequence[Entry], datasets: Sequence[str]) -> Table:
    table = Table("accuracy", ACCURACY_COLUMNS)
    for ds in datasets:
        for e in sorted((e for e in entries if e.dataset == ds), key=lambda e: (order(e.model), -e.density)):
            table.add(dataset=ds, model=e.model, density=e.density, seeds=len(e.final), epochs=e.epochs,
                      final_mean=mean(e.final), final_std=std(e.final), best_mean=mean(e.best), best_std=std(e.best),
                      seed_list=" ".join(map(str, e.seeds)))
    return table


def accuracy_markdown(table: Table, dataset: str, which: str) -> str:
    """Model x density of the ``final`` or ``best`` accuracy: 'mean ± std (seeds)' in percent."""
    records = table.where(dataset=dataset)
    densities = sorted({r["density"] for r in records if _density_column(r) is not None}, reverse=True) or list(DENSITIES)
    models = sorted({r["model"] for r in records}, key=order)
    return pivot(records, lambda r: r["model"], _density_column,
                 lambda r: f"{mean_std(r[which + '_mean'], r[which + '_std'])} ({r['seeds']})",
                 models, densities, label, lambda d: f"d={d:g}", "model")


# ---------------------------------------------------------------------- induced loss
def induced_groups(runs: RunSet, dataset: str) -> dict:
    """(algorithm, density) -> the grid runs of a dynamic algorithm."""
    sparse = [r for r in runs.grid_runs(dataset) if r.model == "sparse" and r.algorithm in DYNAMIC]
    return group(sparse, lambda r: (r.algorithm, r.density))


def induced_table(runs: RunSet) -> Table:
    table = Table("induced_loss", ("dataset", "algorithm", "density", "seeds", "induced_loss_mean", "induced_loss_std"))
    for ds in runs.datasets:
        groups = induced_groups(runs, ds)
        densities = sorted({d for _, d in groups}, reverse=True)
        for algo in DYNAMIC:
            for d in densities:
                values = [r.mean_induced_loss for r in groups.get((algo, d), [])]
                if values:
                    table.add(dataset=ds, algorithm=algo, density=d, seeds=len(values),
                              induced_loss_mean=mean(values), induced_loss_std=std(values))
    return table


def induced_markdown(table: Table, dataset: str) -> str:
    """Algorithm x density of the mean induced loss; algorithms whose runs never redistributed are left out."""
    records = [r for r in table.where(dataset=dataset) if not math.isnan(r["induced_loss_mean"])]
    densities = sorted({r["density"] for r in table.where(dataset=dataset)}, reverse=True)
    return pivot(records, lambda r: r["algorithm"], lambda r: r["density"],
                 lambda r: number(r["induced_loss_mean"], 4), DYNAMIC, densities, label, lambda d: f"d={d:g}",
                 "algorithm")


# ---------------------------------------------------------------------- frequency, depth, woodtaylor
class Sweep:
    """One sweep experiment (Fig. 5, Fig. 6, section 4.3.3): which runs belong to it, the setting each
    varies, how settings sort and print, and the command that runs it."""

    def __init__(self, name: str, title: str, select: Callable, key: Callable, key_label: str, sort: Callable,
                 fmt: Callable, command: str, count_redistributions: bool = False):
        self.name, self.title, self.select, self.key, self.key_label = name, title, select, key, key_label
        self.sort, self.fmt, self.command, self.count_redistributions = sort, fmt, command, count_redistributions

    def groups(self, runs: RunSet, dataset: str) -> dict:
        """(algorithm, setting) -> runs."""
        chosen = [r for r in runs.train if r.dataset == dataset and self.select(r)]
        return group(chosen, lambda r: (r.algorithm, self.key(r)))

    def settings(self, groups: dict) -> list:
        return sorted({k for _, k in groups}, key=self.sort)

    def table(self, runs: RunSet) -> Table:
        """Final accuracy per algorithm x setting, for the datasets with at least two settings."""
        table = Table(self.name, ("dataset", "algorithm", self.key_label, "seeds", "final_mean", "final_std"))
        for ds in runs.datasets:
            groups = self.groups(runs, ds)
            settings = self.settings(groups)
            if len(settings) < 2:
                continue
            for algo in sorted({a for a, _ in groups}, key=order):
                for s in settings:
                    rs = groups.get((algo, s), [])
                    if rs:
                        finals = [r.final_acc for r in rs]
                        table.add(dataset=ds, algorithm=algo, **{self.key_label: self.fmt(s)}, seeds=len(rs),
                                  final_mean=mean(finals), final_std=std(finals))
        return table

    def markdown(self, table: Table, dataset: str, settings: Sequence) -> str:
        records = table.where(dataset=dataset)
        algos = sorted({r["algorithm"] for r in records}, key=order)
        return pivot(records, lambda r: r["algorithm"], lambda r: r[self.key_label],
                     lambda r: f"{mean_std(r['final_mean'], r['final_std'])} ({r['seeds']})", algos,
                     [self.fmt(s) for s in settings], label, lambda s: f"{self.key_label}={s}", "algorithm")

    def redistribution_counts(self, groups: dict, settings: Sequence) -> str:
        """'t=1: 7, t=8: 0': redistribution steps per run of each setting (0: static sparse in all but name)."""
        counts = []
        for s in settings:
            n = sorted({r.redistributions for (_, k), rs in groups.items() if k == s for r in rs})
            counts.append(f"{self.key_label}={self.fmt(s)}: {'/'.join(map(str, n))}")
        return ", ".join(counts)


# ---------------------------------------------------------------------- claims
CLAIM_COLUMNS = ("dataset", "claim_id", "claim", "status", "comparisons", "for", "against", "unresolved",
                 "missing_runs", "evidence")


def claims_table(results: Sequence[ClaimResult]) -> Table:
    table = Table("claims", CLAIM_COLUMNS)
    for c in results:
        table.add(dataset=c.dataset, claim_id=c.key, claim=c.claim, status=c.status, comparisons=len(c.comparisons),
                  **{o: c.count(o) for o in (FOR, AGAINST, UNRESOLVED)},
                  missing_runs=len(c.missing), evidence=c.evidence)
    return table


def claims_markdown(table: Table) -> str:
    return flat(table.records, [
        ("dataset", lambda r: dataset_title(r["dataset"])), ("claim", lambda r: r["claim"]),
        ("status", lambda r: f"**{r['status']}**"),
        ("comparisons", lambda r: f"{r['for']} for / {r['against']} against / {r['unresolved']} unresolved "
                                  f"of {r['comparisons']}" + (f" ({r['missing_runs']} runs missing)" if r["missing_runs"] else "")),
        ("evidence", lambda r: r["evidence"])])
