"""The ``scale`` experiment's report: one table (Markdown + ``tables/scale.csv``) and one log-log figure
(``figures/scale.png``) of seconds per epoch and peak memory against the hidden width, with the memory the
dense twin would need. Read from the runs' ``metrics.csv``, ``config.json`` and ``scale.json``
(:mod:`redr.experiments.scale`)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from redr.experiments.report.names import COLORS, label
from redr.experiments.report.runset import RunSet, rows_used
from redr.experiments.report.table import Table, flat, number
from redr.experiments.results import Run

SCALE_FILE = "scale.json"  # written by redr.experiments.scale (a lower module of the same layer must not be imported here)
FIGURE = "figures/scale.png"
COLUMNS = ("net", "width", "model", "algorithm", "fan_in", "epochs_done", "active_weights", "sparse_weights",
           "train_rows", "test_rows", "seconds_per_epoch", "seconds_per_full_epoch", "epoch_seconds", "redistribution_seconds", "peak_rss_bytes", "build_peak_bytes",
           "bytes_per_active_weight", "peak_rss_per_weight", "dense_twin_parameters", "dense_twin_bytes",
           "test_acc_per_epoch", "final_test_acc", "status")
GIB = 2**30


def scale_runs(runs: RunSet) -> list[Run]:
    """Every run of kind ``scale`` (finished or not: an unfinished 1M run still has its first epochs)."""
    return [r for r in runs.runs if r.kind == "scale"]


def _extra(run: Run) -> dict:
    try:
        return json.loads((run.path / SCALE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _width(run: Run) -> int:
    return int(max(run.hidden)) if run.hidden else 0


def _finite(values) -> list[float]:
    return [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]


def scale_table(runs: list[Run]) -> Table:
    table = Table("scale", COLUMNS)
    for r in sorted(runs, key=lambda r: (r.model != "sparse", _width(r), r.algorithm)):
        extra = _extra(r)
        epoch_s = _finite(r.column("epoch_seconds"))
        redist = [v for v in _finite(r.column("redistribution_seconds")) if v > 0]
        peaks = _finite(r.column("peak_memory_bytes")) + _finite([extra.get("build_peak_bytes", math.nan)])
        peak = max(peaks) if peaks else math.nan
        weights = extra.get("weights") or (r.info.get("model") or {}).get("weights")
        bpw = (extra.get("bytes_per_active_weight") or {}).get("total", math.nan)
        accs = _finite(r.column("test_acc"))
        train_rows, test_rows = rows_used(r.info.get("data") or {}, "train"), rows_used(r.info.get("data") or {}, "test")
        per_epoch = sum(epoch_s) / len(epoch_s) if epoch_s else math.nan
        full = (r.info.get("data") or {}).get("rows", {}).get("train", {}).get("available") if isinstance(
            (r.info.get("data") or {}).get("rows"), dict) else None
        sizes = extra.get("sizes") or (r.info.get("model") or {}).get("sizes") or []
        table.add(net="-".join(map(str, sizes)) or "?", width=_width(r), model=r.model, algorithm=r.algorithm, fan_in=r.config.get("fan_in"),
                  epochs_done=len(r.rows), active_weights=weights,
                  sparse_weights=extra.get("sparse_weights") if r.model == "sparse" else None,
                  train_rows=train_rows, test_rows=test_rows, seconds_per_epoch=per_epoch,
                  seconds_per_full_epoch=per_epoch * full / train_rows if full and train_rows else per_epoch,
                  epoch_seconds=" / ".join(f"{v:.1f}" for v in epoch_s),
                  redistribution_seconds=sum(redist) / len(redist) if redist else math.nan,
                  peak_rss_bytes=peak, build_peak_bytes=extra.get("build_peak_bytes", math.nan),
                  bytes_per_active_weight=bpw,
                  peak_rss_per_weight=peak / weights if weights and not math.isnan(peak) else math.nan,
                  dense_twin_parameters=extra.get("dense_twin_parameters"),
                  dense_twin_bytes=extra.get("dense_twin_bytes"),
                  test_acc_per_epoch=" / ".join(f"{100 * a:.2f}" for a in accs),
                  final_test_acc=accs[-1] if accs else math.nan, status=r.status)
    return table


def _bytes(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    for unit, scale in (("TiB", 2**40), ("GiB", GIB), ("MiB", 2**20)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value / 2**10:.0f} KiB"


def _count(value) -> str:
    if not value:
        return "-"
    return f"{value / 1e9:.2f}G" if value >= 1e9 else (f"{value / 1e6:.1f}M" if value >= 1e6 else f"{value:,}")


def scale_markdown(table: Table) -> str:
    return flat(table.records, [
        ("net", lambda r: r["net"]),
        ("model", lambda r: label(r["algorithm"]) + (f", fan-in {r['fan_in']}" if r["fan_in"] else "")),
        ("weights", lambda r: _count(r["active_weights"])),
        ("epochs", lambda r: f"{r['epochs_done']}" + ("" if r["status"] == "done" else f" ({r['status']})")),
        ("rows / epoch", lambda r: f"{r['train_rows']:,}" if isinstance(r["train_rows"], int) else "?"),
        ("s / epoch", lambda r: number(r["seconds_per_epoch"], 1)),
        ("s / full epoch", lambda r: number(r["seconds_per_full_epoch"], 0)
         + ("" if r["seconds_per_full_epoch"] == r["seconds_per_epoch"] else " (est.)")),
        ("redistribution s", lambda r: number(r["redistribution_seconds"], 1)),
        ("peak RSS", lambda r: _bytes(r["peak_rss_bytes"])),
        ("build peak", lambda r: _bytes(r["build_peak_bytes"])),
        ("bytes / active weight (tensors)", lambda r: number(r["bytes_per_active_weight"], 1)),
        ("peak RSS / weight", lambda r: number(r["peak_rss_per_weight"], 1)),
        ("dense twin: weights", lambda r: _count(r["dense_twin_parameters"])),
        ("dense twin: weights + Adam", lambda r: _bytes(r["dense_twin_bytes"])),
        ("test acc. per epoch, %", lambda r: r["test_acc_per_epoch"] or "-"),
    ])


def scale_figure(table: Table):
    from redr.experiments.report.figures import _plt

    plt = _plt()
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    sparse = [r for r in table.records if r["model"] == "sparse"]
    for algorithm in sorted({r["algorithm"] for r in sparse}):
        rows = sorted((r for r in sparse if r["algorithm"] == algorithm), key=lambda r: r["width"])
        style = dict(marker="o", color=COLORS.get(algorithm), label=label(algorithm))
        t = [(r["width"], r["seconds_per_epoch"]) for r in rows if not math.isnan(r["seconds_per_epoch"])]
        m = [(r["width"], r["peak_rss_bytes"] / GIB) for r in rows if not math.isnan(r["peak_rss_bytes"])]
        if t:
            ax_t.plot(*zip(*t), **style)
        if m:
            ax_m.plot(*zip(*m), **style)
    twin = sorted({(r["width"], r["dense_twin_bytes"]) for r in sparse if r["dense_twin_bytes"]})
    if twin:
        ax_m.plot([w for w, _ in twin], [b / GIB for _, b in twin], "k--", label="dense twin: weights + Adam (computed)")
    rows = sorted({r["train_rows"] for r in sparse if r.get("train_rows")})
    per = f"{rows[0]:,}-row epoch" if len(rows) == 1 else "epoch"  # the rows an epoch had, when the runs agree
    for ax, title, unit in ((ax_t, f"seconds per {per} (training)", "s"), (ax_m, "peak resident memory", "GiB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("hidden width W (784-W-W-10)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def scale_blocks(runs: RunSet) -> tuple[list[str], list[Table]]:
    """The report's scale section: settings, the table, the figure."""
    from redr.experiments.report.figures import placeholder, save

    found = scale_runs(runs)
    table = scale_table(found)
    path = runs.out / FIGURE
    path.parent.mkdir(parents=True, exist_ok=True)
    if any(r["model"] == "sparse" for r in table.records):
        save(scale_figure(table), path, dpi=90)
    else:
        placeholder(path, "scale", "no sparse scale runs: redr reproduce scale")
    blocks = ["## Scale: the width ladder (issue 15)\n", _settings(found) + "\n", scale_markdown(table),
              f"\n![seconds per epoch and peak memory against width]({FIGURE})\n", NOTES]
    return blocks, [table]


def _settings(found: list[Run]) -> str:
    sparse = [r for r in found if r.model == "sparse"]
    if not found:
        return "_No scale runs._"
    c = (sparse or found)[0].config
    from redr.experiments.report.names import dataset_title

    return (f"{dataset_title(c.get('dataset'))}, batch {c.get('batch_size')}, Adam lr {c.get('lr')}, "
            f"{c.get('epochs')} epochs asked, init {c.get('init')}, augmentation {'on' if c.get('augment') else 'off'}; "
            f"sparse nets: fan-in {c.get('fan_in')} in both hidden layers, last layer "
            f"{'dense' if c.get('dense_last') else 'sparse'}, redistribution schedule alpha0 {c.get('alpha0')} "
            f"(cosine to 0 at {c.get('end_fraction')} of the epochs), growth `auto` (sampled where the largest layer "
            "has more than 2**26 positions). Each run in a fresh process.")


NOTES = ("\nColumns: **s / epoch** is the training time of an epoch (no evaluation, no redistribution), mean over the "
         "epochs; **redistribution s** the mean over the redistributions done; **peak RSS** the largest resident set "
         "of the run's process (building the model, every epoch with its evaluation and redistribution; interpreter, "
         "libraries and the data included); **build peak** the resident set's peak until the model and optimizer "
         "were built; **bytes / active weight** the sparse layers' tensors (values, CSR indices, transposed companion, "
         "gradient, Adam moments) over their active weights; **peak RSS / weight** the peak over every weight of the "
         "net (dense last layer included); **dense twin** the 784-W-W-10 dense net's parameters and the memory its "
         "float32 weights and Adam's two moments would need (12 bytes per parameter; computed, never allocated).\n")
