"""The convolution part of ``redr bench layer``: :class:`~redr.sparse.SparseConv2d` vs ``nn.Conv2d``.

Shapes are ``IN x OUT x KERNEL x SIDE`` (square kernel, padding ``KERNEL // 2``, stride 1, a ``SIDE x SIDE``
input); the default is the issue's 64 -> 64, 3x3 on 14x14 at batch 128 (``--batches`` for others).
``--conv-algorithms direct,unfold`` times the numba backend's algorithms side by side (columns
``numba:direct``, ``numba:unfold``; plain ``numba`` is ``auto``, the rule of :func:`redr.sparse.conv_direct.use_direct`). The same step and timing loop as the
linear suite (:func:`redr.bench.timing.time_layers`): every backend and the dense layer in each round, the
median of ``repeats`` after ``warmup``; ``ratio = conv2d_ms / sparse_ms`` (above 1: sparse is faster).
"""
from __future__ import annotations

import gc

import torch
from torch import nn

from redr.bench.common import format_table, make_record, median, print_flush, ratio, rounded, spread
from redr.bench.timing import time_layers
from redr.sparse import SparseConv2d

CONV_SHAPES = [(64, 64, 3, 14)]
CONV_BATCH = 128
QUICK_CONV_SHAPES = [(8, 8, 3, 8)]
QUICK_CONV_BATCH = 16
CONV = "nn.Conv2d"


def parse_conv_shapes(text: str) -> list[tuple[int, int, int, int]]:
    """``64x64x3x14,32x64x3x14`` -> [(in, out, kernel, side), ...]."""
    from redr.errors import UsageError

    shapes = []
    for part in text.split(","):
        try:
            dims = tuple(int(v) for v in part.lower().split("x"))
        except ValueError:
            dims = ()
        if len(dims) != 4 or min(dims) < 1:
            raise UsageError(f"--conv-shapes: {part!r} is not INxOUTxKERNELxSIDE with positive sizes (e.g. 64x64x3x14)")
        shapes.append(dims)
    return shapes


def conv_backends(backends: list[str], algorithms) -> list[str]:
    """The timed sparse layers: ``numba`` becomes ``numba:<algorithm>`` per asked algorithm (``auto`` stays ``numba``)."""
    from redr.errors import UsageError
    from redr.sparse.conv_direct import CONV_ALGORITHMS

    for name in algorithms or ():
        if name not in CONV_ALGORITHMS:
            raise UsageError(f"--conv-algorithms: unknown {name!r}; choose from {', '.join(CONV_ALGORITHMS)}")
    out = []
    for name in backends:
        if name == "numba" and algorithms:
            out += ["numba" if a == "auto" else f"numba:{a}" for a in algorithms]
        else:
            out.append(name)
    return out


def run_conv(args, device: torch.device, out, backends: list[str], env: dict, repeats: int, warmup: int,
             densities: list[float]) -> list[dict]:
    quick = args.quick
    shapes = getattr(args, "conv_shapes", None) or (QUICK_CONV_SHAPES if quick else CONV_SHAPES)
    batches = args.batches or [QUICK_CONV_BATCH if quick else CONV_BATCH]
    backends = conv_backends(backends, getattr(args, "conv_algorithms", None))
    records, table = [], []
    for (cin, cout, k, side), batch in ((shape, batch) for shape in shapes for batch in batches):
        for density in densities:
            gen = torch.Generator().manual_seed(1234)
            layers = {CONV: nn.Conv2d(cin, cout, k, padding=k // 2, device=device)}
            for name in backends:
                backend, _, algorithm = name.partition(":")
                layers[name] = SparseConv2d(cin, cout, k, padding=k // 2, density=density, backend=backend, device=device,
                                            generator=torch.Generator().manual_seed(0), algorithm=algorithm or "auto")
            x = torch.randn(batch, cin, side, side, generator=gen).to(device).requires_grad_()
            grad_out = torch.randn(batch, cout, side, side, generator=gen).to(device)
            times = time_layers(layers, x, grad_out, warmup, repeats, device)
            dense_ms = median(times[CONV])
            config = {"conv": f"{cin}x{cout}x{k}x{side}", "in_channels": cin, "out_channels": cout, "kernel": k,
                      "side": side, "density": density, "batch": batch, "nnz": layers[backends[0]].nnz if backends else None,
                      "repeats": repeats, "warmup": warmup, "quick": quick}
            results = {"conv2d_ms": rounded(dense_ms, 6), "conv2d_spread": rounded(spread(times[CONV]), 3)}
            ratios = {}
            row = [config["conv"], density, batch, dense_ms]
            for name in backends:
                ms = median(times[name])
                results[f"{name}_ms"], results[f"{name}_spread"] = rounded(ms, 6), rounded(spread(times[name]), 3)
                ratios[name] = ratio(dense_ms / ms)
                row += [ms, dense_ms / ms]
            record = make_record("layer", "conv-time", env, config, results, ratios)
            out.write(record)
            records.append(record)
            table.append(row)
            print_flush(f"  conv {config['conv']} d={density} batch {batch}: nn.Conv2d {dense_ms:.3f} ms; "
                        + ", ".join(f"{n} {results[n + '_ms']:.3f} ms ({ratios[n]:.2f}x)" for n in backends))
            del layers, x, grad_out
            gc.collect()
    headers = ["conv in x out x k x side", "density", "batch", "conv2d ms"]
    for name in backends:
        headers += [f"{name} ms", f"{name} x"]
    print_flush("\nconvolutions, forward+backward, median ms; 'x' = nn.Conv2d ms / sparse ms (above 1: sparse faster)")
    print_flush(format_table(headers, table))
    return records
