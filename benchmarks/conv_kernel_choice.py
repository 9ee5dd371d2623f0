"""The first direct sparse convolution, in NCHW, timed against unfold + SpMM (kept for the record).

It lost to unfold + SpMM at d=0.1 (short inner loops over one row of 14); the layer's direct kernels now use
the (C, H, W, N) layout instead (:mod:`redr.sparse.conv_direct`, compared with ``redr bench layer
--conv-algorithms direct,unfold``). This script forces ``algorithm="unfold"`` for the layer's side.
The NCHW direct kernels below (numba, no unfold; for this measurement only) loop over each output channel's
active weights and add ``w * x[n, c, shifted window]`` into the output, scatter the input gradient the same
way and reduce the value gradient over batch and positions. Both are timed forward + backward on the
issue's shape, and nn.Conv2d (dense, MKL-DNN) for reference:

    nice -n 5 python benchmarks/conv_kernel_choice.py [--batch 128] [--density 0.1 0.03] [--repeats 5]
"""
from __future__ import annotations

import argparse
import time

import numba
import numpy as np
import torch
from numba import njit, prange

import redr

C, H, K, PAD = 64, 14, 3, 1


@njit(cache=True)
def _tap(col_k, width, ow_n):  # pragma: no cover - compiled
    """Input channel, kernel row, kernel column of a matrix column, and the output columns it reaches."""
    j = col_k % K
    return col_k // (K * K), (col_k // K) % K, j, max(0, PAD - j), min(ow_n, width + PAD - j)


@njit(parallel=True, fastmath=True, cache=True)
def _direct_forward(crow, col, vals, x, bias, out):  # pragma: no cover - compiled
    n_b, n_o, oh_n, ow_n = out.shape
    height, width = x.shape[2], x.shape[3]
    for job in prange(n_b * n_o):
        n, o = job // n_o, job % n_o
        acc = np.full((oh_n, ow_n), bias[o], dtype=out.dtype)
        for k in range(crow[o], crow[o + 1]):
            c, i, j, lo, hi = _tap(col[k], width, ow_n)
            for oh in range(max(0, PAD - i), min(oh_n, height + PAD - i)):
                for ow in range(lo, hi):
                    acc[oh, ow] += vals[k] * x[n, c, oh - PAD + i, ow - PAD + j]
        out[n, o] = acc


@njit(parallel=True, fastmath=True, cache=True)
def _direct_grad_input(crow, col, vals, g, gx):  # pragma: no cover - compiled
    n_b, n_o, oh_n, ow_n = g.shape
    height, width = gx.shape[2], gx.shape[3]
    for n in prange(n_b):
        for o in range(n_o):
            for k in range(crow[o], crow[o + 1]):
                c, i, j, lo, hi = _tap(col[k], width, ow_n)
                w = vals[k]
                for oh in range(max(0, PAD - i), min(oh_n, height + PAD - i)):
                    for ow in range(lo, hi):
                        gx[n, c, oh - PAD + i, ow - PAD + j] += w * g[n, o, oh, ow]


@njit(parallel=True, fastmath=True, cache=True)
def _direct_grad_values(crow, col, g, x, out):  # pragma: no cover - compiled
    n_b, n_o, oh_n, ow_n = g.shape
    height, width = x.shape[2], x.shape[3]
    for o in prange(n_o):
        for k in range(crow[o], crow[o + 1]):
            c, i, j, lo, hi = _tap(col[k], width, ow_n)
            acc = numba.float32(0.0)
            for n in range(n_b):
                for oh in range(max(0, PAD - i), min(oh_n, height + PAD - i)):
                    for ow in range(lo, hi):
                        acc += g[n, o, oh, ow] * x[n, c, oh - PAD + i, ow - PAD + j]
            out[k] = acc


def direct_step(layer, x, g):
    """Forward, input gradient and value gradient of the direct kernels (numpy arrays)."""
    crow, col, vals = layer.crow.numpy(), layer.col.numpy(), layer.values.detach().numpy()
    out = np.empty((x.shape[0], layer.out_channels, H, H), dtype=np.float32)
    _direct_forward(crow, col, vals, x, layer.bias.detach().numpy(), out)
    gx = np.zeros_like(x)
    _direct_grad_input(crow, col, vals, g, gx)
    gv = np.empty(layer.nnz, dtype=np.float32)
    _direct_grad_values(crow, col, g, x, gv)
    return out, gx, gv


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up (compilation, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--density", type=float, nargs="+", default=[0.1, 0.03])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, C, H, H, generator=gen)
    g = torch.randn(args.batch, C, H, H, generator=gen)
    dense = torch.nn.Conv2d(C, C, K, padding=PAD)

    def dense_step():
        xi = x.clone().requires_grad_(True)
        dense(xi).backward(g)

    print(f"{C}->{C} {K}x{K} {H}x{H} batch {args.batch}, threads {torch.get_num_threads()}; forward+backward, best of {args.repeats}")
    print(f"nn.Conv2d dense: {best_of(dense_step, args.repeats) * 1e3:.1f} ms")
    for d in args.density:
        layer = redr.SparseConv2d(C, C, K, padding=PAD, density=d, generator=gen, backend="numba", algorithm="unfold")

        def unfold_step():
            xi = x.clone().requires_grad_(True)
            layer(xi).backward(g)

        xn, gn = x.numpy(), g.numpy()
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        y.backward(g)
        out, gx, gv = direct_step(layer, xn, gn)  # both paths compute the same numbers
        for mine, ref in ((out, y), (gx, xi.grad), (gv, layer.values.grad)):
            torch.testing.assert_close(torch.from_numpy(mine), ref.detach(), rtol=1e-3, atol=1e-3)
        layer.values.grad = None
        t_unfold = best_of(unfold_step, args.repeats)
        t_direct = best_of(lambda: direct_step(layer, xn, gn), args.repeats)
        print(f"d={d}: unfold+SpMM {t_unfold * 1e3:.1f} ms, direct {t_direct * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
