"""The numba backward of one wide SparseLinear: two separate kernels vs the fused sweep, interleaved.

    python benchmarks/wide_backward.py --width 65536 --fan-in 66 --batch 256 --rounds 3

Separate (what runs below ``kernels.FUSED_BACKWARD_MIN_BYTES``): the values gathered into the transposed
order, the transposed SpMM (input gradient) and the SDDMM (values gradient). Fused: both in one sweep
(:func:`redr.sparse.kernels.backward_input_and_values`). Each round times both, one after the other; the
minimum over rounds is printed, and the results are checked to agree."""
from __future__ import annotations

import argparse
import os
import time

import torch

from redr.sparse import kernels
from redr.sparse.layout import CSRLayout
from redr.sparse.topology import partitioned_topology


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--width", type=int, default=65536)
    p.add_argument("--fan-in", type=int, default=66)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    w, g = args.width, torch.Generator().manual_seed(0)
    layout = CSRLayout.from_sorted_coo(*partitioned_topology(w, w, args.fan_in, g), (w, w))
    values = torch.randn(layout.nnz, generator=g)
    xT, gT = torch.randn(w, args.batch, generator=g), torch.randn(w, args.batch, generator=g)

    def separate():
        vals_t = kernels.gather_values(values, layout.perm_t, "numba")
        gx = kernels.spmm(layout.crow_t, layout.row_t, vals_t, gT, (w, w), None, "numba")
        return gx, kernels.sddmm(layout.crow, layout.col, gT, xT, (w, w), "numba")

    def fused():
        return kernels.backward_input_and_values(layout, values, gT, xT)

    a, b = separate(), fused()
    err = max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(a, b))
    times = {"separate": [], "fused": []}
    for _ in range(args.rounds):
        for name, f in (("separate", separate), ("fused", fused)):
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    s, f = min(times["separate"]), min(times["fused"])
    print(f"{w}x{w} fan-in {args.fan_in} ({layout.nnz:,} weights) batch {args.batch}: separate {s * 1e3:.0f} ms, "
          f"fused {f * 1e3:.0f} ms, {s / f:.2f}x; max rel diff {err:.1e}; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
