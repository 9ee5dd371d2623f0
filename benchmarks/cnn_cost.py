"""The CNN of ``redr train --arch cnn`` at d=0.1 against its dense twin: epoch time, peak memory, redistribution cost.

    flock /tmp/redr-bench.lock python benchmarks/cnn_cost.py [--rows 10000] [--json benchmarks/results/cnn-cost.jsonl]

Each model runs in its own fresh process, one after the other: ``dense`` (the dense twin, ``--model
dense-neuron``), ``sparse`` (``build_cnn(784, 10, 0.1)``, conv2 on the numba backend's ``auto`` algorithm)
and ``sparse-unfold`` (the same net with conv2 on unfold + SpMM, the kernel before the direct one). Each
trains ``--rows`` synthetic rows (the time does not depend on the values) at batch 128 with Adam and
cross-entropy after two warm-up steps, and reports the seconds, the time extrapolated to a Fashion-MNIST
epoch (60,000 rows) and the process's peak resident set during those steps (VmHWM reset first, as the
trainer does; the interpreter, torch and the data are in it alike for every model). The ``sparse`` process
then times one redistribution per algorithm on a copy of the trained net and optimizer (``plan`` +
``apply_plan`` with optimizer state + the heap trim, alpha 0.5, one batch of 128), as a share of its
extrapolated epoch.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time

import torch

from redr.redistribution import RedistributionContext, apply_plan, make_algorithm
from redr.sparse.conv_net import build_cnn
from redr.sparse.convert import sparse_layers
from redr.training.memory import peak_memory_bytes, reset_peak_memory

MODELS = ("dense", "sparse", "sparse-unfold")
ALGORITHMS = ("random", "gradient", "gradient-global", "loss", "woodfisher", "woodtaylor")
EPOCH_ROWS, BATCH = 60000, 128

try:
    from redr.redistribution.mechanism import release_free_heap
except ImportError:  # pragma: no cover
    release_free_heap = None


def rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def train(model, opt, x, y, steps: int) -> float:
    start = time.perf_counter()
    for s in range(steps):
        lo = (s * BATCH) % x.shape[0]
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x[lo:lo + BATCH]), y[lo:lo + BATCH]).backward()
        opt.step()
    return time.perf_counter() - start


def redistribution_seconds(name: str, model, opt, batch) -> float:
    layers = [m for _, m in sparse_layers(model)]
    ctx = RedistributionContext(model, layers, 0.5, torch.Generator().manual_seed(0),
                                torch.nn.functional.cross_entropy, [batch])
    start = time.perf_counter()
    plan = make_algorithm(name).plan(ctx)
    apply_plan(layers, plan, [opt])
    if release_free_heap is not None:
        release_free_heap()
    return time.perf_counter() - start


def worker(kind: str, rows: int, redistribute: bool = True) -> dict:
    gen = torch.Generator().manual_seed(0)
    model = build_cnn(784, 10, None if kind == "dense" else 0.1, generator=gen)
    for _, layer in sparse_layers(model):
        if hasattr(layer, "algorithm") and kind == "sparse-unfold":
            layer.algorithm = "unfold"
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(rows, 784, generator=gen), torch.randint(0, 10, (rows,), generator=gen)
    train(model, opt, x, y, 2)  # warm-up: numba kernels loaded, Adam state created
    steps = -(-rows // BATCH)
    base = rss_bytes()
    reset_peak_memory(torch.device("cpu"))
    seconds = train(model, opt, x, y, steps)
    out = {"bench": "cnn-epoch", "model": kind, "rows": rows, "steps": steps, "seconds": seconds,
           "epoch_s": seconds * EPOCH_ROWS / rows, "peak_rss_bytes": peak_memory_bytes(torch.device("cpu")),
           "rss_before_bytes": base, "weights": sum(p.numel() for p in model.parameters()),
           "threads": torch.get_num_threads(), "load": os.getloadavg()}
    if kind == "sparse" and redistribute:
        batch = (x[:BATCH], y[:BATCH])
        out["redistribution_s"] = {}
        for name in ALGORITHMS:
            m, o = copy.deepcopy((model, opt))
            out["redistribution_s"][name] = redistribution_seconds(name, m, o, batch)
            del m, o
        out["redistribution_share"] = {n: s / out["epoch_s"] for n, s in out["redistribution_s"].items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10000, help="training rows timed per model (default 10000)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--json", default=None, help="append the JSON lines here")
    parser.add_argument("--skip-redistribution", action="store_true",
                        help="epoch and peak memory only (e.g. an untimed memory run at nice 19, one thread)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.rows, not args.skip_redistribution)))
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    results = []
    for kind in args.models.split(","):
        command = [sys.executable, __file__, "--worker", kind, "--rows", str(args.rows)]
        done = subprocess.run(command + (["--skip-redistribution"] if args.skip_redistribution else []),
                              capture_output=True, text=True, check=True)
        record = json.loads(done.stdout.strip().splitlines()[-1])
        record["commit"] = commit
        results.append(record)
        print(f"{kind:<14} {record['seconds']:7.1f} s for {args.rows} rows ({record['epoch_s']:6.1f} s per 60k epoch), "
              f"peak RSS {record['peak_rss_bytes'] / 2**20:7.1f} MiB (before {record['rss_before_bytes'] / 2**20:.1f}), "
              f"load {record['load'][0]:.1f}", flush=True)
        for name, share in record.get("redistribution_share", {}).items():
            print(f"    redistribution {name:<16} {record['redistribution_s'][name]:7.2f} s = {100 * share:5.2f}% of the epoch")
    dense = next((r for r in results if r["model"] == "dense"), None)
    for r in results:
        if dense and r is not dense:
            print(f"{r['model']}: epoch {r['seconds'] / dense['seconds']:.2f}x the dense twin's, "
                  f"peak RSS {r['peak_rss_bytes'] / dense['peak_rss_bytes']:.2f}x")
    if args.json:
        with open(args.json, "a") as fh:
            for r in results:
                fh.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
