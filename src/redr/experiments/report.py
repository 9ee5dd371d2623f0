"""``report.md``, CSV tables and PNG figures from the finished runs of a folder (no training).

Written into the output folder (by default the runs' folder):

* ``report.md``: data and machine, the claims checked, and every table with its figure;
* ``tables/*.csv``: the same tables, machine-readable (always all of them; empty when not run);
* ``figures/*.png``: per dataset with accuracy-grid runs, always the same set of files; a figure whose
  experiment was not run says so, with the command that runs it.

With ``copy_runs`` the small files of every run (``config.json``, ``metrics.csv``, ``cell.json``,
``DONE``/``FAILED``; no checkpoints) are copied to ``<out>/runs/<name>/``, so the copy regenerates the
same report on its own (``redr report <out>``).
"""
from __future__ import annotations

import csv
import json
import math
import platform
import shutil
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Optional

from redr.experiments import paper
from redr.experiments.claims import NOT_SUPPORTED, NOT_TESTED, SUPPORTED, check_claims
from redr.experiments.grid import DENSITIES, DYNAMIC_ALGORITHMS, GRID_MODELS, QUICK, WOODTAYLOR_BLOCK, WOODTAYLOR_LAMBDA
from redr.experiments.results import SMALL_FILES, Run, grid_entries, load_runs, mean, std
from redr.training.config import PRESETS

FIGURES = ("accuracy", "induced_loss", "frequency", "depth", "woodtaylor", "layer_density")
TABLES = ("accuracy", "induced_loss", "frequency", "depth", "woodtaylor", "timing", "memory", "claims")
GLOBAL_FOR_DENSITY = ("gradient-global", "woodfisher", "woodtaylor")
NAMES = {"none": "static sparse", "random": "Redr-Random", "gradient": "Redr-Gradient",
         "gradient-global": "Redr-Gradient-Global", "loss": "Redr-Loss", "woodfisher": "Redr-Woodfisher",
         "woodtaylor": "Redr-Woodtaylor", "dense-neuron": "dense neuron-eq.", "dense-param": "dense param-eq."}
MB = 1e6  # the paper's megabytes; we report MB = 10^6 bytes too
#: One colour per model in every figure.
COLORS = {"none": "tab:gray", "random": "tab:blue", "gradient": "tab:orange", "gradient-global": "tab:red",
          "loss": "tab:purple", "woodfisher": "tab:green", "woodtaylor": "tab:olive", "dense-neuron": "black",
          "dense-param": "tab:brown"}


def figure_files(datasets: Iterable[str]) -> list[str]:
    """The figure files a report writes (relative to its folder)."""
    return [f"figures/{kind}_{ds}.png" for ds in datasets for kind in FIGURES]


def table_files() -> list[str]:
    return [f"tables/{name}.csv" for name in TABLES]


def _order(model: str) -> int:
    return GRID_MODELS.index(model) if model in GRID_MODELS else len(GRID_MODELS)


def _pct(values) -> str:
    m, s = mean(values), std(values)
    return "-" if math.isnan(m) else f"{100 * m:.2f} ± {100 * s:.2f}"


def _num(value, digits: int = 2, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}{suffix}"


def _md_table(header: list, rows: list) -> str:
    if not rows:
        return "_no runs_\n"

    def cell(c) -> str:
        return str(c).replace("|", "\\|")  # a "|" inside a cell would split it

    lines = ["| " + " | ".join(cell(c) for c in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, header: list, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _csv_num(value):
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


# ---------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _placeholder(path: Path, title: str, message: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 2.2))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.45, message, ha="center", va="center", wrap=True, fontsize=9)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _curves(runs: list[Run], key: str = "test_acc"):
    """Mean and std over runs of ``key`` per epoch (runs cut to the shortest)."""
    n = min(len(r.rows) for r in runs)
    epochs = [runs[0].rows[i]["epoch"] for i in range(n)]
    values = [[r.rows[i][key] for r in runs] for i in range(n)]
    return epochs, [mean(v) for v in values], [std(v) for v in values]


def _plot_curve(ax, runs, label, style="-", key="test_acc", scale=100.0, color=None):
    epochs, m, s = _curves(runs, key)
    m = [scale * x for x in m]
    s = [scale * x for x in s]
    line, = ax.plot(epochs, m, style, label=label, linewidth=1.3, color=color)
    if len(runs) > 1:
        ax.fill_between(epochs, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], alpha=0.15,
                        color=line.get_color())


def _dataset_title(dataset: str) -> str:
    return {"kmnist": "KMNIST", "fashion-mnist": "Fashion-MNIST", "higgs": "HIGGS", "synthetic": "synthetic"}.get(dataset, dataset)


# ---------------------------------------------------------------------- the report
class Report:
    def __init__(self, runs_dir: Path, out: Path):
        self.runs_dir, self.out = runs_dir, out
        self.runs = load_runs(runs_dir)
        self.done = [r for r in self.runs if r.status == "done"]
        self.train = [r for r in self.done if r.kind == "train" and r.rows]
        self.entries = grid_entries(self.runs)
        self.datasets = sorted({r.dataset for r in self.train}, key=lambda d: (list(PRESETS).index(d)
                                                                              if d in PRESETS else 99, d))
        self.md: list[str] = []

    # ----------------------------------------------------------------- helpers
    def grid_runs(self, dataset: str) -> list[Run]:
        return [r for r in self.train if r.dataset == dataset and r.is_grid_run]

    def group(self, runs: Iterable[Run], key) -> dict:
        groups = defaultdict(list)
        for r in runs:
            groups[key(r)].append(r)
        return groups

    def h(self, text: str, level: int = 2) -> None:
        self.md.append(f"\n{'#' * level} {text}\n")

    def p(self, text: str) -> None:
        self.md.append(text + "\n")

    def fig(self, name: str, caption: str) -> None:
        self.md.append(f"![{caption}]({name})\n\n*{caption}*\n")

    # ----------------------------------------------------------------- sections
    def header(self) -> None:
        status = defaultdict(int)
        for r in self.runs:
            status[r.status] += 1
        self.md.append("# redr: reproduction of *Weight Redistribution Algorithms for Sparse Neural Networks*\n")
        self.p(f"Generated by `redr report` on {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from "
               f"{len(self.runs)} runs ({status['done']} finished, {status['failed']} failed, "
               f"{status['incomplete']} incomplete). Numbers are test accuracy in percent, mean ± std over seeds "
               "(sample std; 0 with one seed), of the run's last epoch (\"final\") or its best epoch (\"best\").")
        invocations = self.invocations()
        if invocations:
            lines = []
            for inv in invocations:
                budget = f" (--quick: {inv['quick_budget']})" if inv.get("quick") else ""
                took = f", {inv['seconds'] / 60:.1f} min" if isinstance(inv.get("seconds"), (int, float)) else ""
                lines.append(f"- `{' '.join(inv.get('command', []))}`{budget}: started "
                             f"{(inv.get('started') or inv.get('time', ''))[:16].replace('T', ' ')} UTC{took}")
            self.p("Commands:\n\n" + "\n".join(lines))
        self.machine()

    def invocations(self) -> list[dict]:
        seen, out = set(), []
        for folder in (self.runs_dir, self.out):
            path = folder / "experiment.json"
            if path.exists():
                try:
                    for inv in json.loads(path.read_text()).get("invocations", []):
                        key = json.dumps(inv, sort_keys=True)
                        if key not in seen:
                            seen.add(key)
                            out.append(inv)
                except ValueError:
                    pass
        return out

    def machine(self) -> None:
        machines, devices, versions = set(), set(), set()
        for r in self.done:
            m, d, v = r.info.get("machine") or {}, r.info.get("device") or {}, r.info.get("versions") or {}
            if m:
                machines.add(f"{m.get('platform', '?')}, {m.get('cpus', '?')} CPUs, "
                             f"{m.get('torch_threads', '?')} torch threads")
            if d:
                devices.add(f"{d.get('type', '?')} ({d.get('name') or '?'})")
            if v:
                versions.add(f"redr {v.get('redr')}, torch {v.get('torch')}, python {v.get('python')}")
        self.p("Machine: " + ("; ".join(sorted(machines)) or "unknown") + ". Devices: "
               + (", ".join(sorted(devices)) or "unknown") + ". Versions: " + ("; ".join(sorted(versions)) or "unknown")
               + f". Report written on {platform.node() or 'this machine'}.")

    def data_section(self) -> None:
        self.h("Data and budget")
        notes = []
        for ds in self.datasets:
            runs = [r for r in self.train if r.dataset == ds]
            info = next((r.info.get("data") or {} for r in runs if r.info.get("data")), {})
            train_rows, test_rows = _rows_used(info, "train"), _rows_used(info, "test")
            epochs = sorted({len(r.rows) for r in runs if r.is_grid_run})
            seeds = sorted({r.seed for r in runs})
            text = (f"- **{_dataset_title(ds)}**: {_fmt_rows(train_rows)} training / {_fmt_rows(test_rows)} test rows, "
                    f"{'/'.join(map(str, epochs)) or '?'} epochs ({'preset' if ds == 'synthetic' else 'paper'}: "
                    f"{PRESETS[ds]['epochs'] if ds in PRESETS else '?'})"
                    f", seeds {', '.join(map(str, seeds))}.")
            if ds == "higgs":
                text += (" These are the 46,240 genuine UCI HIGGS rows available offline here (split 5:1 in file "
                         "order), not the paper's 500,000 training + 100,000 validation rows of the 11M-row file: "
                         "expect lower and noisier accuracies than the paper's.")
            if ds == "fashion-mnist":
                text += (" Fashion-MNIST stands in for KMNIST (not obtainable offline here): same format, size and "
                         "class balance, with the paper's KMNIST setup (784-256-256-10, batch 512, lr 5e-4, affine "
                         "augmentation). The paper's KMNIST numbers are not expected to carry over one to one.")
            warnings = info.get("warnings") or []
            if warnings:
                text += " Data warnings: " + "; ".join(str(w) for w in warnings[:2])
            notes.append(text)
        self.p("\n".join(notes) if notes else "_No finished training runs._")
        quick = [inv for inv in self.invocations() if inv.get("quick")]
        if quick:
            self.p("\nSome runs used the `--quick` budget, which shrinks only: "
                   + "; ".join(f"{ds}: {q.describe()}" for ds, q in QUICK.items() if ds in self.datasets)
                   + ". Architectures, batch sizes, learning rates, the schedule's shape (alpha0 = 0.5, cosine decay "
                     "to 0 at 3/4 of the epochs), every algorithm, density and baseline are the paper's. Fewer epochs "
                     "mean less converged nets: differences between algorithms can be smaller than the seed noise.")

    def claims_section(self) -> list:
        self.h("The paper's claims, checked")
        self.p("Decided on the means over seeds of the final test accuracy (mean induced loss for the last claim). "
               "*not tested*: a run the claim needs is missing (it is never counted as supported).")
        results = check_claims(self.entries, self.datasets)
        rows = [[_dataset_title(c.dataset), c.claim, f"**{c.status}**", c.evidence] for c in results]
        self.p(_md_table(["dataset", "claim", "status", "evidence"], rows))
        _write_csv(self.out / "tables/claims.csv", ["dataset", "claim_id", "claim", "status", "evidence"],
                   [[c.dataset, c.key, c.claim, c.status, c.evidence] for c in results])
        counts = defaultdict(int)
        for c in results:
            counts[c.status] += 1
        if results:
            self.p(f"Summary: {counts[SUPPORTED]} supported, {counts[NOT_SUPPORTED]} not supported, "
                   f"{counts[NOT_TESTED]} not tested.")
        return results

    # ----------------------------------------------------------------- accuracy
    def accuracy_section(self) -> None:
        csv_rows = []
        for ds in self.datasets:
            self.h(f"Test accuracy: {_dataset_title(ds)} (Fig. {4 if ds == 'higgs' else 2})")
            entries = [e for e in self.entries if e.dataset == ds]
            densities = sorted({e.density for e in entries if not e.is_dense}, reverse=True) or list(DENSITIES)
            models = sorted({e.model for e in entries}, key=_order)
            lookup = {(e.model, round(e.density, 6)): e for e in entries}
            for label, attr in (("Final", "final"), ("Best", "best")):
                rows = []
                for model in models:
                    row = [NAMES.get(model, model)]
                    for d in densities:
                        e = lookup.get((model, round(d, 6))) if not model.startswith("dense-") else \
                            next((x for x in entries if x.model == model), None)
                        row.append(f"{_pct(getattr(e, attr))} ({len(e.final)})" if e else "-")
                    rows.append(row)
                self.p(f"{label} test accuracy (%), mean ± std (seeds); dense nets have one size each "
                       "(the parameter-equivalent one matched to d=0.1), repeated in every column:\n")
                self.p(_md_table(["model"] + [f"d={d:g}" for d in densities], rows))
            for e in sorted(entries, key=lambda e: (_order(e.model), -e.density)):
                csv_rows.append([ds, e.model, e.density, len(e.final), e.epochs, mean(e.final), std(e.final),
                                 mean(e.best), std(e.best), " ".join(map(str, e.seeds))])
            self.plot_accuracy(ds)
        _write_csv(self.out / "tables/accuracy.csv", ["dataset", "model", "density", "seeds", "epochs", "final_mean",
                                                      "final_std", "best_mean", "best_std", "seed_list"], csv_rows)

    def plot_accuracy(self, ds: str) -> None:
        path = self.out / f"figures/accuracy_{ds}.png"
        runs = self.grid_runs(ds)
        name = path.relative_to(self.out).as_posix()
        if not runs:
            _placeholder(path, f"{_dataset_title(ds)}: accuracy", f"no accuracy-grid runs: redr reproduce {ds}")
            return
        plt = _plt()
        densities = sorted({r.density for r in runs if r.model == "sparse"}, reverse=True) or [0.1]
        fig, axes = plt.subplots(1, len(densities), figsize=(4.6 * len(densities), 3.8), sharey=True, squeeze=False)
        groups = self.group(runs, lambda r: (r.algorithm, r.density if r.model == "sparse" else None))
        for ax, d in zip(axes[0], densities):
            for (model, dens), rs in sorted(groups.items(), key=lambda kv: _order(kv[0][0])):
                if dens is None or abs(dens - d) < 1e-9:
                    _plot_curve(ax, rs, NAMES.get(model, model), "--" if dens is None else "-", color=COLORS.get(model))
            ax.set_title(f"d = {d:g}")
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("test accuracy (%)")
        axes[0][-1].legend(fontsize=7, loc="lower right")
        fig.suptitle(f"{_dataset_title(ds)}: test accuracy while training (mean ± std over seeds)")
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        self.fig(name, f"{_dataset_title(ds)}: test accuracy per epoch, one panel per density; dashed: dense baselines")

    # ----------------------------------------------------------------- induced loss
    def induced_section(self) -> None:
        self.h("Induced loss (Fig. 3)")
        self.p("Training loss on a fixed subset of the training data measured right before and right after each "
               "redistribution; the table gives the mean increase (after - before) over all redistributions and "
               "seeds (negative: the step lowered the loss).\n")
        csv_rows = []
        for ds in self.datasets:
            runs = [r for r in self.grid_runs(ds) if r.model == "sparse" and r.algorithm in DYNAMIC_ALGORITHMS]
            groups = self.group(runs, lambda r: (r.algorithm, r.density))
            densities = sorted({d for _, d in groups}, reverse=True)
            rows = []
            for algo in DYNAMIC_ALGORITHMS:
                row = [NAMES[algo]]
                for d in densities:
                    rs = groups.get((algo, d), [])
                    values = [r.mean_induced_loss for r in rs]
                    row.append(_num(mean(values), 4) if rs else "-")
                    if rs:
                        csv_rows.append([ds, algo, d, len(rs), _csv_num(mean(values)), _csv_num(std(values))])
                if len(row) > 1 and any(c != "-" for c in row[1:]):
                    rows.append(row)
            self.p(f"**{_dataset_title(ds)}**\n")
            self.p(_md_table(["algorithm"] + [f"d={d:g}" for d in densities], rows))
            self.plot_induced(ds, groups)
        _write_csv(self.out / "tables/induced_loss.csv", ["dataset", "algorithm", "density", "seeds",
                                                          "induced_loss_mean", "induced_loss_std"], csv_rows)

    def plot_induced(self, ds: str, groups: dict) -> None:
        path = self.out / f"figures/induced_loss_{ds}.png"
        have = {k: v for k, v in groups.items() if any(r.induced_losses() for r in v)}
        if not have:
            _placeholder(path, f"{_dataset_title(ds)}: induced loss",
                         f"no redistribution in any run: redr reproduce induced-loss --dataset {ds} (or the {ds} grid)")
            return
        plt = _plt()
        densities = sorted({d for _, d in have}, reverse=True)
        fig, axes = plt.subplots(1, len(densities), figsize=(4.6 * len(densities), 3.6), sharey=True, squeeze=False)
        decreases, floor, floored = False, 1e-7, False
        for ax, d in zip(axes[0], densities):
            for algo in DYNAMIC_ALGORITHMS:
                rs = have.get((algo, d))
                if not rs:
                    continue
                per_epoch = defaultdict(list)
                for r in rs:
                    for epoch, value in r.induced_losses():
                        per_epoch[epoch].append(value)
                epochs = sorted(per_epoch)
                values = [mean(per_epoch[e]) for e in epochs]
                color = COLORS.get(algo)
                floored |= any(abs(v) < floor for v in values)
                ax.plot(epochs, [max(abs(v), floor) for v in values], "-", color=color, label=NAMES[algo], linewidth=1.2)
                for e, v in zip(epochs, values):  # filled: the loss went up; open: it went down
                    decreases |= v < 0
                    ax.plot([e], [max(abs(v), floor)], "o", markersize=4, color=color,
                            markerfacecolor=color if v >= 0 else "white")
            ax.set_yscale("log")
            ax.set_title(f"d = {d:g}")
            ax.set_xlabel("epoch of the redistribution")
            ax.grid(alpha=0.3, which="both")
        axes[0][0].set_ylabel("|loss after - loss before| (log)")
        axes[0][-1].legend(fontsize=7)
        fig.suptitle(f"{_dataset_title(ds)}: training loss induced by redistribution")
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        self.fig(path.relative_to(self.out).as_posix(),
                 f"{_dataset_title(ds)}: size of the change of the training loss at each redistribution, mean over "
                 "seeds, log scale; filled markers: the loss went up, open markers: it went down"
                 + (" (some steps lowered the loss)" if decreases else "")
                 + (f"; changes below {floor:g} are drawn at {floor:g}" if floored else ""))

    # ----------------------------------------------------------------- frequency, depth, woodtaylor
    def sweep_section(self, title: str, kind: str, select, key, key_label, order, fmt_key, command: str,
                      count_redistributions: bool = False) -> None:
        """A table of final accuracy per algorithm x setting and its figure (curves + summary panel); with
        ``count_redistributions``, a line saying how many redistributions the runs of each setting made (a
        short budget can leave a sparse setting with none: its runs are static sparse training)."""
        self.h(title)
        csv_rows = []
        for ds in self.datasets:
            runs = [r for r in self.train if r.dataset == ds and select(r)]
            groups = self.group(runs, lambda r: (r.algorithm, key(r)))
            settings = sorted({k for _, k in groups}, key=order)
            algos = sorted({a for a, _ in groups}, key=_order)
            path = self.out / f"figures/{kind}_{ds}.png"
            if len(settings) < 2:
                _placeholder(path, f"{_dataset_title(ds)}: {kind}", f"not run: {command.format(ds=ds)}")
                self.p(f"**{_dataset_title(ds)}**: not run (`{command.format(ds=ds)}`).\n")
                continue
            rows = []
            for algo in algos:
                row = [NAMES.get(algo, algo)]
                for s in settings:
                    rs = groups.get((algo, s), [])
                    row.append(f"{_pct([r.final_acc for r in rs])} ({len(rs)})" if rs else "-")
                    if rs:
                        csv_rows.append([ds, algo, fmt_key(s), len(rs), mean(r.final_acc for r in rs),
                                         _csv_num(std([r.final_acc for r in rs]))])
                rows.append(row)
            self.p(f"**{_dataset_title(ds)}**: final test accuracy (%), mean ± std (seeds)\n")
            self.p(_md_table(["algorithm"] + [f"{key_label}={fmt_key(s)}" for s in settings], rows))
            if count_redistributions:
                counts = []
                for s in settings:
                    n = sorted({r.redistributions for (_, k), rs in groups.items() if k == s for r in rs})
                    counts.append(f"{key_label}={fmt_key(s)}: {'/'.join(map(str, n))}")
                self.p("Redistribution steps per run: " + ", ".join(counts) + ". The schedule stops at 3/4 of the "
                       "epochs, so a setting with 0 made none: its runs are static sparse training.\n")
            self.plot_sweep(path, ds, groups, settings, algos, key_label, fmt_key, kind)
        _write_csv(self.out / f"tables/{kind}.csv", ["dataset", "algorithm", key_label, "seeds", "final_mean",
                                                     "final_std"], csv_rows)

    def plot_sweep(self, path, ds, groups, settings, algos, key_label, fmt_key, kind) -> None:
        plt = _plt()
        n = len(settings) + 1
        fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4), squeeze=False)
        for ax, s in zip(axes[0], settings):
            for algo in algos:
                if groups.get((algo, s)):
                    _plot_curve(ax, groups[(algo, s)], NAMES.get(algo, algo), color=COLORS.get(algo))
            ax.set_title(f"{key_label} = {fmt_key(s)}", fontsize=9)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("test accuracy (%)")
        summary = axes[0][-1]
        for algo in algos:
            xs = [i for i, s in enumerate(settings) if groups.get((algo, s))]
            ys = [100 * mean(r.final_acc for r in groups[(algo, settings[i])]) for i in xs]
            summary.plot(xs, ys, "o-", label=NAMES.get(algo, algo), color=COLORS.get(algo))
        for ax in axes[0][1:-1]:  # the curve panels share the first one's accuracy range
            ax.sharey(axes[0][0])
        summary.set_xlabel(key_label)
        summary.set_xticks(range(len(settings)))
        summary.set_xticklabels([fmt_key(s) for s in settings], fontsize=7, rotation=30)
        summary.set_title("final accuracy", fontsize=9)
        summary.grid(alpha=0.3)
        summary.legend(fontsize=6)
        fig.suptitle(f"{_dataset_title(ds)}: {kind}")
        fig.tight_layout()
        fig.savefig(path, dpi=85)
        plt.close(fig)
        self.fig(path.relative_to(self.out).as_posix(),
                 f"{_dataset_title(ds)}: test accuracy per epoch for each {key_label}, and the final accuracy")

    def frequency_section(self) -> None:
        self.sweep_section(
            "Redistribution frequency (Fig. 5)", "frequency",
            lambda r: r.model == "sparse" and r.is_preset_shape and not r.algorithm_options and abs(r.density - 0.1) < 1e-9
            and r.algorithm in DYNAMIC_ALGORITHMS,
            lambda r: r.every, "t", lambda t: t, lambda t: str(t), "redr reproduce frequency --dataset {ds}",
            count_redistributions=True)

    def depth_section(self) -> None:
        self.sweep_section(
            "Network depth (Fig. 6)", "depth",
            lambda r: r.model == "sparse" and r.every == 1 and not r.algorithm_options and abs(r.density - 0.1) < 1e-9
            and r.algorithm in DYNAMIC_ALGORITHMS,
            lambda r: tuple(r.hidden), "hidden", lambda h: (len(h), h), lambda h: "-".join(map(str, h)),
            "redr reproduce depth --dataset {ds}")

    def woodtaylor_section(self) -> None:
        def key(r):
            o = r.algorithm_options
            return (o.get("block_size", WOODTAYLOR_BLOCK), o.get("dampening", WOODTAYLOR_LAMBDA))

        self.sweep_section(
            "Redr-Woodtaylor: dampening and block size (section 4.3.3)", "woodtaylor",
            lambda r: r.algorithm == "woodtaylor" and r.is_preset_shape and r.every == 1 and r.algorithm_options,
            key, "B,lambda", lambda k: (k[0] != WOODTAYLOR_BLOCK, k[0], k[1]), lambda k: f"{k[0]},{k[1]:g}",
            "redr reproduce woodtaylor --dataset {ds}")

    # ----------------------------------------------------------------- layer densities
    def layer_density_section(self) -> None:
        self.h("Per-layer density over time (global algorithms)")
        self.p("The global algorithms move weights between layers; layer-local ones keep every layer at the "
               "target density. Mean over seeds of nnz / (in x out) after each epoch.\n")
        for ds in self.datasets:
            path = self.out / f"figures/layer_density_{ds}.png"
            runs = [r for r in self.grid_runs(ds) if r.algorithm in GLOBAL_FOR_DENSITY and r.layer_densities()]
            groups = self.group(runs, lambda r: (r.algorithm, r.density))
            if not groups:
                _placeholder(path, f"{_dataset_title(ds)}: per-layer density",
                             f"no global-algorithm runs: redr reproduce {ds}")
                self.p(f"**{_dataset_title(ds)}**: no Gradient-Global / Woodfisher / Woodtaylor runs "
                       f"(`redr reproduce {ds}`).\n")
                continue
            plt = _plt()
            keys = sorted(groups, key=lambda k: (_order(k[0]), -k[1]))
            algos = sorted({a for a, _ in keys}, key=_order)
            densities = sorted({d for _, d in keys}, reverse=True)
            fig, axes = plt.subplots(len(algos), len(densities), figsize=(3.8 * len(densities), 2.8 * len(algos)),
                                     squeeze=False, sharex=True)
            for i, algo in enumerate(algos):
                for j, d in enumerate(densities):
                    ax = axes[i][j]
                    rs = groups.get((algo, d))
                    if not rs:
                        ax.axis("off")
                        continue
                    layers = rs[0].layer_densities()
                    for k, (label, _) in enumerate(layers):
                        series = [r.layer_densities()[k][1] for r in rs if len(r.layer_densities()) > k]
                        n = min(len(s) for s in series)
                        epochs = [0] + [rs[0].rows[e]["epoch"] for e in range(n)]
                        ax.plot(epochs, [d] + [mean(s[e] for s in series) for e in range(n)], label=label)
                    ax.set_title(f"{NAMES[algo]}, d = {d:g}", fontsize=9)
                    ax.grid(alpha=0.3)
                    if j == 0:
                        ax.set_ylabel("layer density")
                    if i == len(algos) - 1:
                        ax.set_xlabel("epoch")
                    ax.legend(fontsize=6)
            fig.suptitle(f"{_dataset_title(ds)}: per-layer density")
            fig.tight_layout()
            fig.savefig(path, dpi=85)
            plt.close(fig)
            self.fig(path.relative_to(self.out).as_posix(),
                     f"{_dataset_title(ds)}: density of each sparse layer over the epochs (epoch 0: initialisation)")

    # ----------------------------------------------------------------- Table 1
    def timing_section(self) -> None:
        self.h("Table 1: time per epoch (HIGGS net, d=0.1)")
        runs = [r for r in self.done if r.kind == "timing" and r.rows]
        groups = self.group(runs, lambda r: (r.dataset, r.algorithm, r.density))
        rows, csv_rows = [], []
        base = {}
        stats = {}
        for (ds, model, d), rs in groups.items():
            train = mean(_median(_tail(r.column("epoch_seconds"))) for r in rs)
            redis = mean(_redistribution_seconds(r) for r in rs)
            total = train + (0.0 if math.isnan(redis) else redis)
            stats[(ds, model, d)] = (train, redis, total, rs)
            if model == "dense-neuron":
                base[ds] = total
        for (ds, model, d), (train, redis, total, rs) in sorted(stats.items(), key=lambda kv: (kv[0][0], _order(kv[0][1]))):
            ratio = total / base[ds] if ds in base else math.nan
            paper_s = paper.TABLE1_SECONDS.get(model) if ds == "higgs" else None
            paper_r = paper.table1_ratio(model) if ds == "higgs" else None
            device = ", ".join(sorted({f"{(r.info.get('device') or {}).get('type', '?')}" for r in rs}))
            rows.append([_dataset_title(ds), NAMES.get(model, model), f"{d:g}" if model == "none" or model in DYNAMIC_ALGORITHMS else "-",
                         _num(train), _num(redis), _num(total), _num(ratio), _num(paper_s), _num(paper_r), device])
            csv_rows.append([ds, model, d, len(rs), _csv_num(train), _csv_num(redis), _csv_num(total), _csv_num(ratio),
                             _csv_num(paper_s), _csv_num(paper_r), device])
        if rows:
            self.p("Ours: median seconds of a training epoch (from the second epoch on: the first one compiles "
                   "kernels), plus the mean seconds of one redistribution step (from the second on, where there is one). "
                   "Ratios are to the dense neuron-equivalent net on the same machine, so that machines compare; the "
                   "paper timed a GPU on 500,000 rows per epoch, we time " + _shape_text(runs) + ".\n")
        else:
            self.p("_Not run_: `redr reproduce timing`.")
        self.p(_md_table(["dataset", "model", "d", "train s/epoch", "redistribution s", "s/epoch", "ratio to dense-neuron",
                          "paper s/epoch", "paper ratio", "device"], rows) if rows else "")
        _write_csv(self.out / "tables/timing.csv", ["dataset", "model", "density", "seeds", "train_seconds",
                                                    "redistribution_seconds", "epoch_seconds", "ratio_to_dense_neuron",
                                                    "paper_seconds", "paper_ratio", "device"], csv_rows)

    # ----------------------------------------------------------------- Table 2
    def memory_section(self) -> None:
        self.h("Table 2: peak memory (KMNIST-shape net with 4096-wide hidden layers)")
        runs = [r for r in self.done if r.kind == "memory" and r.rows]
        baselines = {}
        for r in self.done:
            if r.kind == "memory-baseline" and r.rows:
                dev = r.config.get("device")
                baselines.setdefault((r.dataset, dev), []).append(_peak(r))
        groups = self.group(runs, lambda r: (r.dataset, r.config.get("device"), r.algorithm, r.density))
        stats = {}
        for (ds, dev, model, d), rs in groups.items():
            peak = mean(_peak(r) for r in rs)
            base = mean(baselines.get((ds, dev), [math.nan]))
            stats[(ds, dev, model, d)] = (peak, peak - base if not math.isnan(base) else math.nan, len(rs))
        rows, csv_rows = [], []
        for (ds, dev, model, d), (peak, above, n) in sorted(stats.items(), key=lambda kv: (kv[0][0], kv[0][1] or "",
                                                                                           _order(kv[0][2]), -kv[0][3])):
            dense = next((v for k, v in stats.items() if k[:3] == (ds, dev, "dense-neuron")), None)
            ratio = above / dense[1] if dense and dense[1] and not math.isnan(dense[1]) else math.nan
            pmb, pratio = paper.table2_mb(model, d), paper.table2_ratio(model, d)
            dens = "-" if model.startswith("dense-") else f"{d:g}"
            rows.append([_dataset_title(ds), dev, NAMES.get(model, model), dens, _num(peak / MB, 1), _num(above / MB, 1),
                         _num(ratio), _num(pmb, 1), _num(pratio)])
            csv_rows.append([ds, dev, model, d, n, _csv_num(peak), _csv_num(above), _csv_num(ratio), _csv_num(pmb),
                             _csv_num(pratio)])
        if rows:
            self.p("Each configuration ran in a fresh process for a short run (" + _shape_text(runs) + ") that includes a "
                   "redistribution. Peak: on CUDA the caching allocator's peak of allocated bytes, on the CPU the "
                   "process's peak resident set size (interpreter, libraries and data included). *Above baseline* "
                   "subtracts a process that only loaded the data and ran the kernels once; the ratio (ours and the "
                   "paper's) is to the dense neuron-equivalent net. MB = 10^6 bytes.\n")
            base_text = ", ".join(f"{_dataset_title(ds)} on {dev}: {mean(v) / MB:.1f} MB" for (ds, dev), v in baselines.items())
            if base_text:
                self.p(f"Baseline: {base_text}.\n")
            self.p(_md_table(["dataset", "device", "model", "d", "peak MB", "above baseline MB", "ratio to dense-neuron",
                              "paper MB", "paper ratio"], rows))
        else:
            self.p("_Not run_: `redr reproduce memory`.")
        _write_csv(self.out / "tables/memory.csv", ["dataset", "device", "model", "density", "seeds", "peak_bytes",
                                                    "above_baseline_bytes", "ratio_to_dense_neuron", "paper_mb",
                                                    "paper_ratio"], csv_rows)

    # ----------------------------------------------------------------- runs
    def runs_section(self) -> None:
        bad = [r for r in self.runs if r.status != "done"]
        self.h("Runs")
        self.p(f"{len(self.runs)} run directories in `{self.runs_dir}`" + (", all finished." if not bad else ":"))
        if bad:
            self.p(_md_table(["run", "status", "epochs done", "message"],
                             [[r.name, r.status, len(r.rows), r.message or "-"] for r in bad]))

    def write(self) -> Path:
        (self.out / "figures").mkdir(parents=True, exist_ok=True)
        (self.out / "tables").mkdir(parents=True, exist_ok=True)
        keep = set(figure_files(self.datasets))
        for old in (self.out / "figures").glob("*.png"):  # figures of datasets no longer present must not linger
            if old.relative_to(self.out).as_posix() not in keep and old.stem.startswith(FIGURES):
                old.unlink()
        self.header()
        self.data_section()
        self.claims_section()
        self.accuracy_section()
        self.induced_section()
        self.frequency_section()
        self.depth_section()
        self.woodtaylor_section()
        self.layer_density_section()
        self.timing_section()
        self.memory_section()
        self.runs_section()
        path = self.out / "report.md"
        path.write_text("\n".join(self.md))
        return path


def _shape_text(runs: list) -> str:
    """'5 epochs of 38,533 training rows on cpu' for the runs of a table."""
    epochs = sorted({len(r.rows) for r in runs})
    rows = sorted({_rows_used(r.info.get("data") or {}, "train") or 0 for r in runs})
    devices = sorted({(r.info.get("device") or {}).get("type", "?") for r in runs})
    threads = sorted({str((r.info.get("machine") or {}).get("torch_threads", "?")) for r in runs})
    return (f"{'/'.join(map(str, epochs))} epochs of {'/'.join(_fmt_rows(x) for x in rows)} training rows on "
            f"{', '.join(devices)}, {'/'.join(threads)} torch thread(s)")


def _rows_used(info: dict, split: str):
    """Rows of ``split`` a run used, from its data info (the loaders' ``rows`` or the generated task's keys)."""
    rows = info.get("rows")
    if isinstance(rows, dict) and isinstance(rows.get(split), dict):
        return rows[split].get("used")
    return info.get(f"rows_{split}")


def _fmt_rows(value) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def _tail(values: list) -> list:
    values = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    return values[1:] if len(values) > 1 else values


def _median(values: list) -> float:
    if not values:
        return math.nan
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _redistribution_seconds(run: Run) -> float:
    values = [row["redistribution_seconds"] for row in run.rows if row.get("alpha", 0) > 0]
    return mean(values[1:] if len(values) > 1 else values)


def _peak(run: Run) -> float:
    values = [v for v in run.column("peak_memory_bytes") if isinstance(v, (int, float)) and not math.isnan(v)]
    return max(values) if values else math.nan


def write_report(runs_dir: str | Path, out: Optional[str | Path] = None, copy_runs: bool = False) -> Path:
    """Write report.md, tables/*.csv and figures/*.png for the runs in ``runs_dir`` into ``out``."""
    runs_dir = Path(runs_dir)
    out = Path(out) if out is not None else runs_dir
    out.mkdir(parents=True, exist_ok=True)
    if copy_runs and out.resolve() != runs_dir.resolve():
        copy_small_files(runs_dir, out)
        runs_dir = out
    return Report(runs_dir, out).write()


def copy_small_files(runs_dir: Path, out: Path) -> None:
    from redr.experiments.results import find_run_dirs

    for run_dir in find_run_dirs(runs_dir):
        target = out / "runs" / run_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for name in SMALL_FILES:
            if (run_dir / name).exists():
                shutil.copy2(run_dir / name, target / name)
            elif (target / name).exists():
                (target / name).unlink()
    if (runs_dir / "experiment.json").exists():
        shutil.copy2(runs_dir / "experiment.json", out / "experiment.json")
