"""Cost of Redr-Woodfisher/-Woodtaylor: per-step Fisher update time and peak memory vs. the dense net.

    python benchmarks/woodfisher_cost.py                 # 784-4096-4096-10, d=0.1, batch 512
    python benchmarks/woodfisher_cost.py --sizes 784,256,256,10 --steps 10

Every configuration runs in a fresh subprocess (so peak RSS, ``ru_maxrss``, is that configuration's
alone); each imports the same modules (torch, redr), builds its net, runs ``--steps`` training steps
(forward, backward, Adam) on random data of the given batch size, then for sparse configurations a
redistribution through ``redr.Redistributor`` (the paper's cosine schedule), ``--cycles`` times, and
``--steps`` more steps at the end (the Fisher is allocated again after every redistribution, so the
steady state after a few cycles is what counts; the dense net runs the same number of steps).
Configurations:

* ``dense``: the neuron-equivalent ``nn.Linear`` net with Adam (the memory budget);
* ``none`` / ``random``: the sparse net without redistribution / with Redr-Random (for reference);
* ``woodfisher`` / ``woodtaylor``: the sparse net with the algorithm and its per-step Fisher hook;
* ``time``: the sparse net; times training steps without the hook, then with the Woodfisher hook, and
  the hook itself (``after_step``, amortised over the buffer flushes), and one redistribution. The hook's
  share is given against the median plain step and against the training part (total minus hook) of the
  very same hooked steps; on a shared machine the second is the one that load drift cannot skew.

Prints a table, then one JSON line per configuration.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(args) -> dict:
    import torch

    import redr

    torch.manual_seed(0)
    sizes = [int(s) for s in args.sizes.split(",")]
    gen = torch.Generator().manual_seed(0)
    kind = args.child
    model = redr.build_mlp(sizes, None if kind == "dense" else args.density, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch, sizes[0])
    y = torch.randint(0, sizes[-1], (args.batch,))
    loss_fn = torch.nn.functional.cross_entropy

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()  # the loss is not kept: no graph alive across a redistribution
        opt.step()

    out = {"config": kind, "sizes": sizes, "batch": args.batch, "threads": torch.get_num_threads()}
    if kind != "dense":
        out["nnz"] = sum(layer.nnz for _, layer in redr.sparse_layers(model))
        out["density"] = args.density
    if kind == "time":
        for _ in range(2):
            step()
        plain = []
        for _ in range(args.steps):
            t = time.perf_counter()
            step()
            plain.append(time.perf_counter() - t)
        red = redr.Redistributor(model, opt, "woodfisher", total_epochs=4, block_size=args.block_size,
                                 buffer_steps=args.buffer_steps)
        algo = red.algorithm
        hook_times = []
        inner = algo.after_step

        def timed(layers):
            t = time.perf_counter()
            inner(layers)
            hook_times.append(time.perf_counter() - t)

        algo.after_step = timed
        hooked = []
        n_hooked = max(args.steps, 2 * args.buffer_steps)
        for _ in range(n_hooked):
            t = time.perf_counter()
            step()
            hooked.append(time.perf_counter() - t)
        t = time.perf_counter()
        report = red.step(1)
        redistribution = time.perf_counter() - t
        step_s = statistics.median(plain)
        hook_s = sum(hook_times) / len(hook_times)  # mean: includes the flushes every buffer_steps steps
        # the same steps, split: training part (forward, backward, Adam) vs. the hook; robust to load drift
        out["hook_fraction_same_steps"] = sum(hook_times) / (sum(hooked) - sum(hook_times))
        out.update(step_s=step_s, step_with_hook_s=statistics.median(hooked), step_mean_s=statistics.mean(plain),
                   step_with_hook_mean_s=statistics.mean(hooked), hook_mean_s=hook_s,
                   hook_fraction=hook_s / step_s, redistribution_s=redistribution, fisher_steps=report.info["fisher_steps"],
                   block_size=args.block_size, buffer_steps=args.buffer_steps)
    else:
        red = None
        if kind != "dense":
            opts = {"block_size": args.block_size, "buffer_steps": args.buffer_steps} if kind.startswith("wood") else {}
            red = redr.Redistributor(model, opt, kind, total_epochs=4 * args.cycles, **opts)
        peaks = []
        for cycle in range(1, args.cycles + 1):  # the dense net runs the same steps, without redistribution
            for _ in range(args.steps):
                step()
            if red is not None and kind.startswith("wood"):
                out["fisher_bytes"] = red.algorithm.fisher.nbytes
            if red is not None:
                red.step(cycle)
            peaks.append(peak_rss_mb())
        for _ in range(args.steps):
            step()
        out["cycles"] = args.cycles
        out["steps"] = args.steps * (args.cycles + 1)
        out["peak_after_each_cycle_mb"] = peaks
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def run_child(config: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", config, "--sizes", args.sizes, "--density",
           str(args.density), "--batch", str(args.batch), "--steps", str(args.steps), "--block-size",
           str(args.block_size), "--buffer-steps", str(args.buffer_steps), "--cycles", str(args.cycles)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{config} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="784,4096,4096,10")
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10, help="training steps per cycle (and for the timing)")
    ap.add_argument("--cycles", type=int, default=3, help="redistributions in the memory runs")
    ap.add_argument("--block-size", type=int, default=34)
    ap.add_argument("--buffer-steps", type=int, default=8)
    ap.add_argument("--configs", default="time,dense,none,random,woodfisher,woodtaylor")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    import torch

    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
               "python": platform.python_version(), "loadavg_before": os.getloadavg()[0]}
    results = [run_child(c, args) for c in args.configs.split(",")]
    machine["loadavg_after"] = os.getloadavg()[0]
    dense = next((r for r in results if r["config"] == "dense"), None)
    print(f"# {args.sizes} d={args.density} batch={args.batch} B={args.block_size} buffer={args.buffer_steps} | {machine}")
    for r in results:
        if r["config"] == "time":
            print(f"time: sparse step median {r['step_s'] * 1e3:.1f} ms (mean {r['step_mean_s'] * 1e3:.1f}), with the hook "
                  f"median {r['step_with_hook_s'] * 1e3:.1f} ms (mean {r['step_with_hook_mean_s'] * 1e3:.1f}), "
                  f"Fisher update {r['hook_mean_s'] * 1e3:.2f} ms/step = {100 * r['hook_fraction']:.1f}% of the step "
                  f"({100 * r['hook_fraction_same_steps']:.1f}% of the training part of the same hooked steps), "
                  f"one redistribution {r['redistribution_s']:.2f} s")
    print(f"{'config':<12}{'peak RSS MB':>12}{'x dense':>9}{'Fisher MB':>11}")
    for r in results:
        if r["config"] == "time":
            continue
        ratio = r["peak_rss_mb"] / dense["peak_rss_mb"] if dense else float("nan")
        fisher = f"{r['fisher_bytes'] / 2**20:.1f}" if "fisher_bytes" in r else "-"
        print(f"{r['config']:<12}{r['peak_rss_mb']:>12.1f}{ratio:>9.2f}{fisher:>11}")
    for r in results:
        r["machine"] = machine
        if dense and r["config"] != "time":
            r["x_dense"] = r["peak_rss_mb"] / dense["peak_rss_mb"]
        print(json.dumps(r))


if __name__ == "__main__":
    main()
