"""``redr bench summary FILE...``: a short table of benchmark JSON lines, and the issue-8 targets they meet.

The targets (issue 8, "on this machine's CPU") are checked only against CPU records at full sizes
(not ``--quick``); on a GPU the numbers are shown without a verdict.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

from redr.bench.common import format_table, print_flush
from redr.errors import UsageError

LAYER_TARGETS = [
    ("layer 4096x4096 b512 d=0.1: dense/sparse >= 2.5 (goal 4)", dict(in_features=4096, out_features=4096, batch=512, density=0.1), 2.5),
    ("layer 784x256 b512 d=0.1: dense/sparse >= 1.5", dict(in_features=784, out_features=256, batch=512, density=0.1), 1.5),
]
EPOCH_TARGETS = [
    ("wide d=0.1 no redistribution: epoch <= 0.45x dense (goal 0.3)", "wide", 0.1, 0.45),
    ("wide d=0.03 no redistribution: epoch <= 0.2x dense", "wide", 0.03, 0.2),
    ("kmnist d=0.1 no redistribution: epoch <= 0.8x dense", "kmnist", 0.1, 0.8),
    ("higgs d=0.1 no redistribution: epoch <= 1.0x dense", "higgs", 0.1, 1.0),
]
REDISTRIBUTION_PCT_MAX = 5.0
CHEAP_ALGORITHMS = ("random", "gradient", "gradient-global", "loss")
MEMORY_BOUNDS = {"none": 0.40, "random": 0.40, "gradient": 0.40, "gradient-global": 0.40, "loss": 0.40,
                 "woodfisher": 1.0, "woodtaylor": 1.0}


def read_records(paths: Iterable[str | Path]) -> list[dict]:
    records = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"no such results file: {path}")
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise UsageError(f"{path}:{n}: not a JSON line ({exc})") from None
    return records


def _fmt(x: Optional[float], digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def summary_tables(records: list[dict]) -> str:
    parts = []
    heads = sorted({(r.get("device_name"), r.get("device"), r.get("torch_version"), (r.get("commit") or "")[:10])
                    for r in records})
    for name, dev, tv, commit in heads:
        parts.append(f"measured on {name} ({dev}), torch {tv}, commit {commit}")
    layer = [r for r in records if r["suite"] == "layer" and r["kind"] == "time"]
    if layer:
        rows = []
        for r in layer:
            c, res, rat = r["config"], r["results"], r["ratios"]
            best = max(rat, key=lambda k: rat[k] or 0) if rat else None
            rows.append([f"{c['in_features']}x{c['out_features']}", c["density"], c["batch"], res["linear_ms"],
                         res.get("auto_ms"), rat.get("auto"), c.get("auto_resolves_to"), best, rat.get(best) if best else None])
        parts.append("layer: forward+backward ms; x = nn.Linear ms / sparse ms\n" + format_table(
            ["shape", "density", "batch", "linear ms", "auto ms", "auto x", "auto=", "best", "best x"], rows))
    layer_mem = [r for r in records if r["suite"] == "layer" and r["kind"] == "memory"]
    if layer_mem:
        rows = [[f"{r['config']['in_features']}x{r['config']['out_features']}", r["config"]["density"],
                 r["results"]["sparse_bytes"] / 2**20, r["results"]["dense_bytes"] / 2**20, r["ratios"]["sparse_over_dense"]]
                for r in layer_mem]
        parts.append("layer persistent memory (values+grad+indices vs weight+grad), MiB\n" + format_table(
            ["shape", "density", "sparse", "dense", "ratio"], rows))
    epoch = [r for r in records if r["suite"] == "epoch"]
    if epoch:
        rows = []
        for r in epoch:
            c, res, rat = r["config"], r["results"], r["ratios"]
            label = {"dense": "dense", "dense-recheck": "dense recheck"}.get(r["kind"], c.get("algorithm"))
            rows.append([c["net"], c.get("density"), label, res.get("epoch_s"),
                         rat.get("epoch_vs_dense", rat.get("recheck_vs_first")), res.get("redistribution_pct"),
                         rat.get("total_vs_dense"), res.get("error")])
        parts.append("epoch: seconds per epoch; x = ratio to the dense twin\n" + format_table(
            ["net", "density", "config", "epoch s", "x dense", "redistr %", "total x", "error"], rows))
    memory = [r for r in records if r["suite"] == "memory"]
    if memory:
        rows = []
        for r in memory:
            c, res, rat = r["config"], r["results"], r["ratios"]
            label = "dense" if c["model"] != "sparse" else c["algorithm"]
            rows.append([c["net"], c["density"], label, res.get("peak_bytes", 0) / 2**20 if "peak_bytes" in res else None,
                         rat.get("peak_vs_dense"), res["state_bytes"] / 2**20 if "state_bytes" in res else None,
                         rat.get("state_vs_dense"), res.get("error")])
        parts.append("memory: peak above baseline and persistent state, MiB; x = ratio to the dense twin\n" + format_table(
            ["net", "density", "config", "peak MiB", "peak x", "state MiB", "state x", "error"], rows))
    return "\n\n".join(parts)


def target_checks(records: list[dict]) -> list[str]:
    """One line per issue-8 target found among CPU, full-size records: value, bound, ok / MISSED."""
    cpu = [r for r in records if str(r.get("device", "")).startswith("cpu") and not r.get("config", {}).get("quick")]
    lines = []

    def verdict(ok):
        return "ok" if ok else "MISSED"

    for what, match, bound in LAYER_TARGETS:
        for r in cpu:
            if r["suite"] == "layer" and r["kind"] == "time" and all(r["config"].get(k) == v for k, v in match.items()):
                x = r["ratios"].get("auto")
                if x is not None:
                    lines.append(f"{what}: auto {x:.2f} -> {verdict(x >= bound)}")
    for r in cpu:
        if r["suite"] == "layer" and r["kind"] == "memory" and r["config"]["in_features"] == 4096 \
                and r["config"]["out_features"] == 4096 and r["config"]["density"] == 0.1:
            x = r["ratios"]["sparse_over_dense"]
            lines.append(f"layer memory 4096x4096 d=0.1 <= 0.35 of dense weight+grad: {x:.3f} -> {verdict(x <= 0.35)}")
    for what, net, density, bound in EPOCH_TARGETS:
        for r in cpu:
            c = r["config"]
            if r["suite"] == "epoch" and r["kind"] == "sparse" and c["net"] == net and c["density"] == density:
                if c["algorithm"] == "none":
                    x = r["ratios"]["epoch_vs_dense"]
                    lines.append(f"{what}: {x:.3f} -> {verdict(x <= bound)}")
                elif c["algorithm"] in CHEAP_ALGORITHMS:
                    pct = r["results"]["redistribution_pct"]
                    lines.append(f"  {net} d={density} {c['algorithm']}: redistribution {pct:.2f}% of the epoch (<= 5%) "
                                 f"-> {verdict(pct <= REDISTRIBUTION_PCT_MAX)}")
    for r in cpu:
        c = r["config"]
        if r["suite"] == "memory" and r["kind"] == "sparse" and c["net"] == "wide" and c["density"] == 0.1 \
                and c["algorithm"] in MEMORY_BOUNDS and "peak_vs_dense" in r["ratios"]:
            x, bound = r["ratios"]["peak_vs_dense"], MEMORY_BOUNDS[c["algorithm"]]
            lines.append(f"memory wide d=0.1 {c['algorithm']}: peak {x:.3f}x dense (<= {bound}) -> {verdict(x <= bound)}")
    return lines


def print_summary(records: list[dict]) -> None:
    if not records:
        print_flush("no records")
        return
    print_flush(summary_tables(records))
    checks = target_checks(records)
    if checks:
        print_flush("\nissue-8 targets (CPU, full sizes):")
        for line in checks:
            print_flush("  " + line)
