"""Cost of one redistribution against one training epoch, and the global algorithm's extra memory.

    python benchmarks/redistribution_cost.py                       # both parts, the issue's setting
    python benchmarks/redistribution_cost.py --skip-memory --epoch-steps 20   # quicker, extrapolated epoch
    python benchmarks/redistribution_cost.py --skip-memory --tune-malloc      # glibc keeps freed memory
    OMP_WAIT_POLICY=PASSIVE python benchmarks/redistribution_cost.py --skip-memory   # see benchmarks/README.md

Run it on a quiet machine: torch's and numba's OpenMP runtimes both spin-wait by default, and with other
processes on the 2 cores the redistribution (many large tensor ops) slows down far more than a training step.

Time (issue 5: one redistribution of each algorithm must take at most 5% of an epoch). In one process:
the ``784-4096-4096-10`` MLP at ``d=0.1`` (all layers sparse, auto backend), batch 512, Adam; an epoch
is ``ceil(60000 / 512)`` steps of zero_grad + forward + cross-entropy + backward + Adam step on
synthetic data (the time does not depend on the values). Then, for each algorithm, on a copy of the
trained model and optimizer: one ``plan`` + ``apply_plan`` (optimizer state remapped, invariants
checked) + the heap trim the ``Redistributor`` does after it, at ``alpha = 0.5`` (the largest fraction
of the paper's schedule), with one batch of 512.
Wall-clock; the median of ``--repeat`` runs is reported (all runs are in the JSON lines). On a shared
machine the load can drift between the epoch and the redistributions, so a second ratio ("local") divides
each redistribution by an epoch estimated from ``--bracket-steps`` training steps timed right before and
after it, and a third ("CPU") compares process CPU seconds, which do not count time spent descheduled.

Memory (issue 5: the global algorithm's extra memory must not grow with the number of layers). For
``784-4096 x h-10`` nets with ``h`` hidden layers, the live bytes of every tensor *allocated during*
one Redr-Gradient-Global plan are tracked exactly: a ``TorchDispatchMode`` sees every aten op
(forward, backward and the selection), counts each new storage once when it appears and subtracts it
when it is freed (weakref finalizer on the storage); outputs that alias an input (views, in-place ops)
are not new. Tensors that existed before (weights, the batch) are not counted. Reported: the peak of
all such bytes ("pass + selection"), the peak of those allocated inside the per-layer selection
(``stream_layer_into``: dense-gradient tiles, masks, sampled entries, the running candidate buffer),
the same tracker's peak for a plain training forward+backward of the same batch, and what holding
every layer's dense gradient would take. The tracker itself is not timed.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import time
import weakref
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import redr
from redr.redistribution import RedistributionContext, apply_plan, make_algorithm
from redr.sparse import SparseLinear

try:
    from redr.redistribution.mechanism import release_free_heap
except ImportError:  # an older tree without the heap trim
    release_free_heap = None

ALGORITHMS = ("none", "random", "gradient", "gradient-global", "loss")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def sparse(model):
    return [m for m in model.modules() if isinstance(m, SparseLinear)]


# ------------------------------------------------------------------------------------------------ time
def time_epoch(model, opt, x, y, batch, steps, cpu=False):
    """Wall-clock seconds of ``steps`` training steps (and the process CPU seconds with ``cpu``)."""
    loss_fn = torch.nn.functional.cross_entropy
    n = x.shape[0]
    start, start_cpu = time.perf_counter(), time.process_time()
    for s in range(steps):
        lo = (s * batch) % n
        xb, yb = x[lo:lo + batch], y[lo:lo + batch]
        opt.zero_grad(set_to_none=True)
        loss_fn(model(xb), yb).backward()
        opt.step()
    wall = time.perf_counter() - start
    return (wall, time.process_time() - start_cpu) if cpu else wall


def time_redistribution(name, model, opt, batch, alpha, tile_rows):
    options = {"tile_rows": tile_rows} if name in ("gradient", "gradient-global", "loss") else {}
    algo = make_algorithm(name, **options)
    layers = sparse(model)
    ctx = RedistributionContext(model, layers, alpha, torch.Generator().manual_seed(0),
                                torch.nn.functional.cross_entropy, [batch])
    c0, t0 = time.process_time(), time.perf_counter()
    plan = algo.plan(ctx)
    t1 = time.perf_counter()
    apply_plan(layers, plan, [opt])
    if release_free_heap is not None:
        release_free_heap()  # the Redistributor does this after every CPU redistribution
    t2, c2 = time.perf_counter(), time.process_time()
    return t1 - t0, t2 - t1, c2 - c0, plan


def step_times(model, opt, x, y, batch, steps, start=0):
    """Wall-clock seconds of each of ``steps`` training steps."""
    out = []
    for s in range(start, start + steps):
        out.append(time_epoch(model, opt, x[s * batch % x.shape[0]:][:batch], y[s * batch % x.shape[0]:][:batch], batch, 1))
    return out


def tune_malloc() -> bool:
    """Ask glibc to keep freed memory (no mmap/munmap per large tensor, no trimming): on this VM every fresh
    page costs a fault, and both training and redistribution allocate tens of MiB per step. Same effect as
    ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_TOP_PAD_=268435456``."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    ok = libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    return bool(ok and libc.mallopt(M_TOP_PAD, 256 * 2**20))


def run_time(args) -> None:
    if args.tune_malloc and not tune_malloc():
        print("# --tune-malloc: mallopt unavailable, running with the default allocator settings")
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    torch.manual_seed(0)
    model = redr.build_mlp(sizes, args.density, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(args.samples, sizes[0])
    y = torch.randint(0, sizes[-1], (args.samples,))
    full_steps = math.ceil(args.samples / args.batch)
    steps = args.epoch_steps or full_steps
    time_epoch(model, opt, x, y, args.batch, 2)  # warm-up: numba kernels loaded, Adam state created
    measured, measured_cpu = time_epoch(model, opt, x, y, args.batch, steps, cpu=True)
    epoch = measured * full_steps / steps
    epoch_cpu = measured_cpu * full_steps / steps
    print(f"# {cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"malloc {'tuned' if args.tune_malloc else 'default'}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"# net {args.sizes} d={args.density} batch {args.batch}; nnz per layer {[l.nnz for l in sparse(model)]}")
    print(f"# epoch ({full_steps} steps){'' if steps == full_steps else f', extrapolated from {steps} steps'}: "
          f"{epoch:.2f} s ({measured / steps * 1000:.0f} ms/step, {epoch_cpu:.1f} CPU s); 5% of it: {0.05 * epoch:.2f} s")
    print(f"# 'local %': against {full_steps} x the median of the {args.bracket_steps} training steps timed right "
          f"before and after each redistribution (robust to a load that drifts during the run); 'CPU %': process "
          f"CPU seconds of the redistribution over those of the epoch (time spent descheduled does not count)")
    print(f"{'algorithm':<16} {'plan s':>8} {'apply s':>8} {'total s':>8} {'% epoch':>8} {'local %':>8} {'CPU %':>8}")
    snapshot = copy.deepcopy((model, opt))
    batch = (x[:args.batch], y[:args.batch])
    rows = []
    for name in ALGORITHMS:
        runs, local, cpus = [], [], []
        for _ in range(args.repeat):
            m, o = copy.deepcopy(snapshot)
            around = step_times(model, opt, x, y, args.batch, args.bracket_steps)
            plan_s, apply_s, cpu_s, plan = time_redistribution(name, m, o, batch, args.alpha, args.tile_rows)
            around += step_times(model, opt, x, y, args.batch, args.bracket_steps, start=args.bracket_steps)
            runs.append((plan_s, apply_s))
            cpus.append(cpu_s)
            local.append((plan_s + apply_s) / (full_steps * statistics.median(around)))
            del m, o
        plan_s = statistics.median(r[0] for r in runs)
        apply_s = statistics.median(r[1] for r in runs)
        total = plan_s + apply_s
        local_ratio = statistics.median(local)
        cpu_ratio = statistics.median(cpus) / epoch_cpu
        print(f"{name:<16} {plan_s:8.3f} {apply_s:8.3f} {total:8.3f} {100 * total / epoch:7.2f}% {100 * local_ratio:7.2f}% "
              f"{100 * cpu_ratio:7.2f}%")
        rows.append({"bench": "redistribution_time", "algorithm": name, "plan_s": plan_s, "apply_s": apply_s,
                     "seconds": total, "epoch_s": epoch, "ratio": total / epoch, "local_ratio": local_ratio,
                     "cpu_ratio": cpu_ratio, "epoch_cpu_s": epoch_cpu, "runs": runs, "local_ratios": local, "cpu_s": cpus,
                     "moved": sum(lp.remove.numel() for lp in plan.layers), "alpha": args.alpha,
                     "net": args.sizes, "density": args.density, "batch": args.batch, "tile_rows": args.tile_rows,
                     "epoch_steps_measured": steps, "cpu": cpu_name(), "threads": torch.get_num_threads(),
                     "malloc": "tuned" if args.tune_malloc else "default",
                     "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")})
    for row in rows:
        print(json.dumps(row))


# ---------------------------------------------------------------------------------------------- memory
class LiveBytes(TorchDispatchMode):
    """Bytes of storages allocated while active and still alive; peak overall and per tag."""

    def __init__(self):
        super().__init__()
        self.tag = "pass"
        self.live: dict[int, tuple[int, str]] = {}
        self.current = 0
        self.peak = 0
        self.by_tag = defaultdict(int)
        self.peak_by_tag = defaultdict(int)

    def _free(self, key):
        n, tag = self.live.pop(key, (0, None))
        self.current -= n
        if tag is not None:
            self.by_tag[tag] -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            key = st.data_ptr()
            if key == 0 or key in inputs or key in self.live:
                continue
            n = st.nbytes()
            self.live[key] = (n, self.tag)
            self.current += n
            self.by_tag[self.tag] += n
            self.peak = max(self.peak, self.current)
            self.peak_by_tag[self.tag] = max(self.peak_by_tag[self.tag], self.by_tag[self.tag])
            weakref.finalize(st, self._free, key)
        return out


def measure_memory(hidden: int, width: int, density: float, batch: int, alpha: float, tile_rows: int) -> dict:
    import redr.redistribution.algorithms.growth as gradient_module

    sizes = [784] + [width] * hidden + [10]
    model = redr.build_mlp(sizes, density, generator=torch.Generator().manual_seed(0))
    x, y = torch.randn(batch, 784), torch.randint(0, 10, (batch,))
    layers = sparse(model)
    loss_fn = torch.nn.functional.cross_entropy
    # a plain training forward + backward, for reference
    with LiveBytes() as train:
        loss_fn(model(x), y).backward()
    for p in model.parameters():
        p.grad = None
    algo = make_algorithm("gradient-global", tile_rows=tile_rows)
    original = gradient_module.stream_layer_into
    tracker = LiveBytes()

    def tagged(*a, **k):
        tracker.tag = "selection"
        try:
            return original(*a, **k)
        finally:
            tracker.tag = "pass"

    gradient_module.stream_layer_into = tagged
    try:
        ctx = RedistributionContext(model, layers, alpha, torch.Generator().manual_seed(0), loss_fn, [(x, y)])
        with tracker:
            plan = algo.plan(ctx)
    finally:
        gradient_module.stream_layer_into = original
    k = sum(lp.remove.numel() for lp in plan.layers)
    mib = 2.0 ** 20
    return {"bench": "global_memory", "hidden_layers": hidden, "width": width, "density": density, "batch": batch,
            "alpha": alpha, "tile_rows": tile_rows, "nnz": sum(l.nnz for l in layers), "grown": k,
            "peak_mib": tracker.peak / mib, "selection_peak_mib": tracker.peak_by_tag["selection"] / mib,
            "train_step_peak_mib": train.peak / mib,
            "plan_mib": sum(lp.remove.numel() * lp.remove.element_size() + lp.grow.numel() * lp.grow.element_size()
                            for lp in plan.layers) / mib,
            "tile_mib": tile_rows * max(l.in_features for l in layers) * 4 / mib,
            "dense_gradients_mib": sum(l.in_features * l.out_features for l in layers) * 4 / mib,
            "candidates_admitted": plan.info.get("candidates_admitted"),
            "resweeps": plan.info["gradient"]["resweeps"]}


def run_memory(args) -> None:
    rows = []
    print(f"# extra live tensor bytes of one Redr-Gradient-Global plan (alpha={args.alpha}, batch {args.batch}, d={args.density})")
    print(f"{'hidden':>6} {'tile':>5} {'nnz':>10} {'grown':>9} {'all MiB':>8} {'selection MiB':>13} {'plan MiB':>8} "
          f"{'train step MiB':>14} {'dense grads MiB':>15}")
    for tile_rows in args.memory_tiles:
        for hidden in args.memory_hidden:
            r = measure_memory(hidden, args.memory_width, args.density, args.batch, args.alpha, tile_rows)
            rows.append(r)
            print(f"{hidden:>6} {tile_rows:>5} {r['nnz']:>10} {r['grown']:>9} {r['peak_mib']:>8.1f} "
                  f"{r['selection_peak_mib']:>13.1f} {r['plan_mib']:>8.1f} {r['train_step_peak_mib']:>14.1f} "
                  f"{r['dense_gradients_mib']:>15.1f}")
    for row in rows:
        print(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="784,4096,4096,10")
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--epoch-steps", type=int, default=0, help="time this many steps and extrapolate (0: a whole epoch)")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tile-rows", type=int, default=512)
    parser.add_argument("--tune-malloc", action="store_true", help="glibc keeps freed memory (see tune_malloc)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for the time part (0: torch's default)")
    parser.add_argument("--bracket-steps", type=int, default=5, help="training steps timed before and after each redistribution")
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-hidden", type=int, nargs="+", default=[2, 6])
    parser.add_argument("--memory-width", type=int, default=4096)
    parser.add_argument("--memory-tiles", type=int, nargs="+", default=[128, 512])
    args = parser.parse_args()
    if not args.skip_time:
        run_time(args)
    if not args.skip_memory:
        run_memory(args)


if __name__ == "__main__":
    main()
