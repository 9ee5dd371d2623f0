"""Table 1 (seconds per epoch) and Table 2 (peak memory): ours beside the paper's, as ratios to the dense
neuron-equivalent net so that machines compare."""
from __future__ import annotations

import math

from redr.experiments import paper
from redr.experiments.report.names import DYNAMIC, STATIC, dataset_title, label, order
from redr.experiments.report.runset import RunSet, fmt_rows, group, rows_used
from redr.experiments.report.table import Table, flat, number
from redr.experiments.results import Run, mean

MB = 1e6  # the paper's megabytes; we report MB = 10^6 bytes too

TIMING_COLUMNS = ("dataset", "model", "density", "seeds", "train_seconds", "redistribution_seconds", "epoch_seconds",
                  "ratio_to_dense_neuron", "paper_seconds", "paper_ratio", "device")
MEMORY_COLUMNS = ("dataset", "device", "model", "density", "seeds", "peak_bytes", "above_baseline_bytes",
                  "ratio_to_dense_neuron", "paper_mb", "paper_ratio")


def _finite(values) -> list:
    return [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]


def _median(values: list) -> float:
    if not values:
        return math.nan
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _after_first(values: list) -> list:
    """From the second value on (the first epoch compiles kernels), unless there is only one."""
    return values[1:] if len(values) > 1 else values


def _epoch_seconds(run: Run) -> float:
    return _median(_after_first(_finite(run.column("epoch_seconds"))))


def _redistribution_seconds(run: Run) -> float:
    return mean(_after_first([row["redistribution_seconds"] for row in run.rows if row.get("alpha", 0) > 0]))


def _peak(run: Run) -> float:
    values = _finite(run.column("peak_memory_bytes"))
    return max(values) if values else math.nan


def shape_text(runs: list) -> str:
    """'5 epochs of 38,533 training rows on cpu, 1 torch thread(s)' for the runs of a table."""
    epochs = sorted({len(r.rows) for r in runs})
    rows = sorted({rows_used(r.info.get("data") or {}, "train") or 0 for r in runs})
    devices = sorted({(r.info.get("device") or {}).get("type", "?") for r in runs})
    threads = sorted({str((r.info.get("machine") or {}).get("torch_threads", "?")) for r in runs})
    return (f"{'/'.join(map(str, epochs))} epochs of {'/'.join(fmt_rows(x) for x in rows)} training rows on "
            f"{', '.join(devices)}, {'/'.join(threads)} torch thread(s)")


# ---------------------------------------------------------------------- Table 1
def timing_table(runs: RunSet) -> Table:
    table = Table("timing", TIMING_COLUMNS)
    stats, base = {}, {}
    for (ds, model, d), rs in group(runs.of_kind("timing"), lambda r: (r.dataset, r.algorithm, r.density)).items():
        train = mean(_epoch_seconds(r) for r in rs)
        redis = mean(_redistribution_seconds(r) for r in rs)
        total = train + (0.0 if math.isnan(redis) else redis)
        stats[(ds, model, d)] = (train, redis, total, rs)
        if model == "dense-neuron":
            base[ds] = total
    for (ds, model, d), (train, redis, total, rs) in sorted(stats.items(), key=lambda kv: (kv[0][0], order(kv[0][1]))):
        table.add(dataset=ds, model=model, density=d, seeds=len(rs), train_seconds=train, redistribution_seconds=redis,
                  epoch_seconds=total, ratio_to_dense_neuron=total / base[ds] if ds in base else math.nan,
                  paper_seconds=paper.TABLE1_SECONDS.get(model) if ds == "higgs" else None,
                  paper_ratio=paper.table1_ratio(model) if ds == "higgs" else None,
                  device=", ".join(sorted({f"{(r.info.get('device') or {}).get('type', '?')}" for r in rs})))
    return table


def timing_markdown(table: Table) -> str:
    return flat(table.records, [
        ("dataset", lambda r: dataset_title(r["dataset"])), ("model", lambda r: label(r["model"])),
        ("d", lambda r: f"{r['density']:g}" if r["model"] == STATIC or r["model"] in DYNAMIC else "-"),
        ("train s/epoch", lambda r: number(r["train_seconds"])),
        ("redistribution s", lambda r: number(r["redistribution_seconds"])),
        ("s/epoch", lambda r: number(r["epoch_seconds"])),
        ("ratio to dense-neuron", lambda r: number(r["ratio_to_dense_neuron"])),
        ("paper s/epoch", lambda r: number(r["paper_seconds"])), ("paper ratio", lambda r: number(r["paper_ratio"])),
        ("device", lambda r: r["device"])])


# ---------------------------------------------------------------------- Table 2
def memory_baselines(runs: RunSet) -> dict:
    """(dataset, device) -> peaks of the processes that only loaded the data and ran the kernels once."""
    baselines: dict = {}
    for r in runs.of_kind("memory-baseline"):
        baselines.setdefault((r.dataset, r.config.get("device")), []).append(_peak(r))
    return baselines


def memory_table(runs: RunSet) -> Table:
    table = Table("memory", MEMORY_COLUMNS)
    baselines = memory_baselines(runs)
    stats = {}
    keyed = group(runs.of_kind("memory"), lambda r: (r.dataset, r.config.get("device"), r.algorithm, r.density))
    for (ds, dev, model, d), rs in keyed.items():
        peak = mean(_peak(r) for r in rs)
        base = mean(baselines.get((ds, dev), [math.nan]))
        stats[(ds, dev, model, d)] = (peak, peak - base if not math.isnan(base) else math.nan, len(rs))
    for (ds, dev, model, d), (peak, above, n) in sorted(
            stats.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", order(kv[0][2]), -kv[0][3])):
        dense = next((v for k, v in stats.items() if k[:3] == (ds, dev, "dense-neuron")), None)
        ratio = above / dense[1] if dense and dense[1] and not math.isnan(dense[1]) else math.nan
        table.add(dataset=ds, device=dev, model=model, density=d, seeds=n, peak_bytes=peak, above_baseline_bytes=above,
                  ratio_to_dense_neuron=ratio, paper_mb=paper.table2_mb(model, d), paper_ratio=paper.table2_ratio(model, d))
    return table


def memory_markdown(table: Table) -> str:
    return flat(table.records, [
        ("dataset", lambda r: dataset_title(r["dataset"])), ("device", lambda r: r["device"]),
        ("model", lambda r: label(r["model"])),
        ("d", lambda r: "-" if r["model"].startswith("dense-") else f"{r['density']:g}"),
        ("peak MB", lambda r: number(r["peak_bytes"], 1, MB)),
        ("above baseline MB", lambda r: number(r["above_baseline_bytes"], 1, MB)),
        ("ratio to dense-neuron", lambda r: number(r["ratio_to_dense_neuron"])),
        ("paper MB", lambda r: number(r["paper_mb"], 1)), ("paper ratio", lambda r: number(r["paper_ratio"]))])


def baseline_text(runs: RunSet) -> str:
    return ", ".join(f"{dataset_title(ds)} on {dev}: {mean(v) / MB:.1f} MB" for (ds, dev), v in memory_baselines(runs).items())
