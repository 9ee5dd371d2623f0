"""``redr bench layer``: one forward+backward of a :class:`~redr.sparse.SparseLinear` vs ``nn.Linear``
(and of a :class:`~redr.sparse.SparseConv2d` vs ``nn.Conv2d``: :mod:`redr.bench.conv_layer`).

For every shape (in x out), density and batch size the dense layer and the sparse layer under each
backend are timed *in the same loop*: each round runs dense, then every backend once, so a change in
machine load hits all of them alike. After ``warmup`` rounds, the median of ``repeats`` rounds is
reported, with ``ratio = dense_ms / sparse_ms`` where ``dense_ms`` is ``nn.Linear``'s time (JSON key
``linear_ms``; ``dense_ms`` there is the sparse layer's *dense backend*) -- above 1: sparse is faster.

One step is what training does: ``y = layer(x)`` for an input that requires grad, then
``y.backward(g)`` (grad of the input, of the weights/values and of the bias), grads reset to ``None``
before each step. All backends of one configuration share one topology (same seed).

Also the layer's persistent memory after a step: ``values`` + their grad + the index structures (CSR and
transposed companion), against a dense weight + its grad (biases, equal on both sides, left out).
"""
from __future__ import annotations

import gc

import torch
from torch import nn

from redr.bench.common import JsonLines, environment, format_table, make_record, median, mib, print_flush, ratio, rounded, spread
from redr.bench.conv_layer import run_conv
from redr.bench.timing import time_layers
from redr.sparse import SparseLinear, kernels

SHAPES = [(784, 256), (256, 256), (4096, 4096)]
DENSITIES = [0.1, 0.06, 0.03]
BATCHES = [128, 512]
QUICK_SHAPES = [(64, 32), (32, 32), (256, 256)]
QUICK_BATCHES = [16, 64]
LINEAR = "nn.Linear"  # the dense reference (not the sparse layer's "dense" backend)


def available_backends(device: torch.device, requested=None) -> list[str]:
    names = list(requested) if requested else ["numba", "torch", "dense", "auto"]
    out = []
    for name in names:
        if name not in kernels.BACKENDS:
            from redr.errors import UsageError

            raise UsageError(f"unknown backend {name!r}; choose from {', '.join(kernels.BACKENDS)}")
        if name == "numba" and (device.type != "cpu" or not kernels.HAVE_NUMBA):
            print_flush(f"skip backend numba: {'not on ' + device.type if device.type != 'cpu' else 'numba not installed'}")
            continue
        out.append(name)
    return out


def persistent_bytes(sparse: SparseLinear, dense: nn.Linear) -> dict:
    """Bytes held between steps (after a backward): sparse values + grad + index buffers vs dense weight + grad."""
    values = sparse.values.numel() * sparse.values.element_size()
    grad = values if sparse.values.grad is not None else 0
    index = sum(b.numel() * b.element_size() for b in sparse.buffers())
    weight = dense.weight.numel() * dense.weight.element_size()
    dense_grad = weight if dense.weight.grad is not None else 0
    return {"sparse_values_bytes": values, "sparse_grad_bytes": grad, "sparse_index_bytes": index,
            "sparse_bytes": values + grad + index, "dense_weight_bytes": weight, "dense_grad_bytes": dense_grad,
            "dense_bytes": weight + dense_grad, "index_dtype": str(sparse.col.dtype).replace("torch.", "")}


def run(args, device: torch.device, out: JsonLines) -> list[dict]:
    quick = args.quick
    shapes = args.shapes or (QUICK_SHAPES if quick else SHAPES)
    densities = args.densities or DENSITIES
    batches = args.batches or (QUICK_BATCHES if quick else BATCHES)
    repeats = args.repeats or (3 if quick else 20)
    warmup = args.warmup if args.warmup is not None else (1 if quick else 3)
    backends = available_backends(device, args.backends)
    env = environment(device)
    print_flush(f"layer suite on {env['device_name']} ({device}), torch {env['torch_version']}, "
                f"{env['torch_threads']} threads, commit {env['commit'][:10]}; median of {repeats} after {warmup} warm-up")
    records, table, mem_table = [], [], []
    if getattr(args, "conv_shapes", None) and args.shapes is None:  # convolutions asked for alone
        return run_conv(args, device, out, backends, env, repeats, warmup, densities)
    for in_f, out_f in shapes:
        for density in densities:
            memory_done = False
            for batch in batches:
                gen = torch.Generator().manual_seed(1234)
                dense = nn.Linear(in_f, out_f, device=device)
                layers = {LINEAR: dense}
                for name in backends:
                    layers[name] = SparseLinear(in_f, out_f, density, generator=torch.Generator().manual_seed(0),
                                                backend=name, device=device)
                x = torch.randn(batch, in_f, generator=gen).to(device).requires_grad_()
                grad_out = torch.randn(batch, out_f, generator=gen).to(device)
                times = time_layers(layers, x, grad_out, warmup, repeats, device)
                dense_ms = median(times[LINEAR])
                some = next(iter(l for n, l in layers.items() if n != LINEAR), None)
                config = {"in_features": in_f, "out_features": out_f, "density": density, "batch": batch,
                          "nnz": some.nnz if some is not None else None, "repeats": repeats, "warmup": warmup,
                          "quick": quick}
                results = {"linear_ms": rounded(dense_ms, 6), "linear_spread": rounded(spread(times[LINEAR]), 3)}
                ratios = {}
                row = [f"{in_f}x{out_f}", density, batch, dense_ms]
                for name in backends:
                    ms = median(times[name])
                    results[f"{name}_ms"] = rounded(ms, 6)
                    results[f"{name}_spread"] = rounded(spread(times[name]), 3)
                    ratios[f"{name}"] = ratio(dense_ms / ms)
                    row += [ms, dense_ms / ms]
                if "auto" in layers:
                    config["auto_resolves_to"] = layers["auto"].resolved_backend()
                    row.append(config["auto_resolves_to"])
                record = make_record("layer", "time", env, config, results, ratios)
                out.write(record)
                records.append(record)
                table.append(row)
                if not memory_done and some is not None:  # once per shape x density (independent of the batch)
                    mem = persistent_bytes(some, dense)
                    mrec = make_record("layer", "memory", env, {k: config[k] for k in ("in_features", "out_features",
                                       "density", "nnz")}, mem, {"sparse_over_dense": ratio(mem["sparse_bytes"] / mem["dense_bytes"])})
                    out.write(mrec)
                    records.append(mrec)
                    mem_table.append([f"{in_f}x{out_f}", density, some.nnz, mib(mem["sparse_values_bytes"]),
                                      mib(mem["sparse_grad_bytes"]), mib(mem["sparse_index_bytes"]), mib(mem["sparse_bytes"]),
                                      mib(mem["dense_bytes"]), mem["sparse_bytes"] / mem["dense_bytes"]])
                    memory_done = True
                print_flush(f"  {in_f}x{out_f} d={density} batch {batch}: nn.Linear {dense_ms:.3f} ms; "
                            + ", ".join(f"{n} {results[n + '_ms']:.3f} ms ({ratios[n]:.2f}x)" for n in backends))
                del layers, dense, x, grad_out
                gc.collect()
    headers = ["shape", "density", "batch", "linear ms"]
    for name in backends:
        headers += [f"{name} ms", f"{name} x"]
    if "auto" in backends:
        headers.append("auto=")
    print_flush("\nforward+backward, median ms; 'x' = nn.Linear ms / sparse ms (above 1: sparse faster);"
                "\n'dense' is the sparse layer's dense backend (values scattered into a matrix, then BLAS)")
    print_flush(format_table(headers, table))
    print_flush("\npersistent memory (MiB): sparse values + grad + indices vs dense weight + grad (biases left out)")
    print_flush(format_table(["shape", "density", "nnz", "values", "grad", "indices", "sparse", "dense", "ratio"], mem_table))
    if args.shapes is None or getattr(args, "conv_shapes", None):  # convolutions (issue 17)
        records += run_conv(args, device, out, backends, env, repeats, warmup, densities)
    return records
