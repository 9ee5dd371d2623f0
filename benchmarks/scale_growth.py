"""One Redr-Gradient-Global redistribution of a wide fan-in net, exact vs sampled growth (issue 15, item 2).

    nice -n 5 python benchmarks/scale_growth.py --hidden 65536 65536 --fan-in 16 --steps 40

For each path: a fresh Trainer on Fashion-MNIST (same seed, so the same net), ``--steps`` training steps
timed (zero_grad + forward + loss + backward + Adam, the preset's batch of 512), then one redistribution at
the schedule's first (largest) alpha, timed. The epoch is estimated as ``ceil(60000 / batch)`` times the
median step. Prints one line per path.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from redr.training.config import RunConfig
from redr.training.memory import peak_memory_bytes, reset_peak_memory
from redr.training.trainer import Trainer


def measure(path: str, args) -> str:
    config = RunConfig.from_options(dataset="fashion-mnist", hidden=args.hidden, fan_in=args.fan_in,
                                    algorithm="gradient-global", algorithm_options={"growth": path},
                                    data_dir=args.data_dir, download=False, augment=False, epochs=args.epochs,
                                    batch_size=args.batch_size, dense_last=args.dense_last)
    built = time.perf_counter()
    t = Trainer(config, None, progress=False, log=lambda *_: None)
    built = time.perf_counter() - built
    build_peak = peak_memory_bytes(torch.device("cpu"))
    reset_peak_memory(torch.device("cpu"))
    x_all, y_all = t.data.train_x, t.data.train_y
    b = config.batch_size
    times = []
    for s in range(args.steps):
        x, y = x_all[s * b % x_all.shape[0]:][:b], y_all[s * b % x_all.shape[0]:][:b]
        start = time.perf_counter()
        t.optimizer.zero_grad(set_to_none=True)
        t.loss_fn(t.model(x), y).backward()
        t.optimizer.step()
        times.append(time.perf_counter() - start)
        if args.verbose:
            print(f"  step {s}: {times[-1]:.2f} s, RSS peak {peak_memory_bytes(torch.device('cpu')) / 2**30:.2f} GiB", flush=True)
    step_peak = peak_memory_bytes(torch.device("cpu"))
    reset_peak_memory(torch.device("cpu"))
    step = statistics.median(times[2:] if len(times) > 4 else times)
    epoch = math.ceil(x_all.shape[0] / b) * step
    start = time.perf_counter()
    report = t.redistributor.step(1, t.redistribution_batches())
    seconds = time.perf_counter() - start
    redistribution_peak = peak_memory_bytes(torch.device("cpu"))
    grad = report.info["gradient"]
    return (f"{path}: redistribution {seconds:.2f} s (alpha {report.alpha:.3f}, moved {sum(report.grown):,}, "
            f"tiles {grad['tiles']}, sampled entries {grad['sampled_entries']:,}); step {step * 1000:.1f} ms, "
            f"epoch ~{epoch:.1f} s ({math.ceil(x_all.shape[0] / b)} steps) -> {100 * seconds / epoch:.1f}% of an epoch; "
            f"{t.memory_estimate.describe()}; build {built:.1f} s, peak RSS GiB: build {build_peak / 2**30:.2f}, "
            f"steps {step_peak / 2**30:.2f}, redistribution {redistribution_peak / 2**30:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, nargs="+", default=[65536, 65536])
    p.add_argument("--fan-in", type=int, default=16)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--paths", nargs="+", default=["sampled", "exact"])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's (512)")
    p.add_argument("--dense-last", action="store_true", help="the output layer dense (every hidden neuron reaches it)")
    p.add_argument("--verbose", action="store_true", help="one line per step")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    for path in args.paths:
        print(measure(path, args), flush=True)


if __name__ == "__main__":
    main()
