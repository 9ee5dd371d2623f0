"""Where the time of one training step goes on a wide sparse MLP (torch.profiler, CPU).

    python benchmarks/profile_step.py --hidden 65536 65536 --density 0.001 --batch 256 --steps 4

Builds ``redr.build_mlp`` with ReLU between layers, runs Adam steps like the trainer (zero_grad, forward,
cross-entropy, backward, the finiteness sum, step) on random inputs and prints the profiler's table of
self CPU time per op (the numba kernels appear as the autograd Function's forward/backward)."""
from __future__ import annotations

import argparse
import time

import torch

import redr


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hidden", type=int, nargs="+", default=[65536, 65536])
    p.add_argument("--density", type=float)
    p.add_argument("--fan-in", type=int)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rows", type=int, default=15)
    args = p.parse_args()
    sizes = [784, *args.hidden, 10]
    gen = torch.Generator().manual_seed(0)
    model = redr.build_mlp(sizes, density=args.density, fan_in=args.fan_in, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(args.batch, 784, generator=gen)
    y = torch.randint(0, 10, (args.batch,), generator=gen)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        total = loss.detach() + sum(q.grad.sum() for q in model.parameters() if q.grad is not None)
        bool(torch.isfinite(total))
        opt.step()

    step()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    print(f"{'-'.join(map(str, sizes))} batch {args.batch}: {(time.perf_counter() - t) / args.steps * 1e3:.1f} ms/step")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
