"""``redr bench memory``: peak memory of training per algorithm x density, against the dense twin (with Adam).

Every configuration runs in a **fresh subprocess** (``python -m redr.bench.memory --worker CONFIG``):

1. import torch and redr, create the synthetic data (``steps`` batches of the net's shape) on the device;
2. warm up: a tiny forward/backward/Adam step through ``nn.Linear`` and through ``SparseLinear`` with every
   backend of the device, so that kernels, libraries, thread pools and numba's compiled code are loaded;
3. **baseline**: CUDA: ``torch.cuda.memory_allocated``, then ``reset_peak_memory_stats``. CPU: the
   process's resident set (``VmRSS``), then the peak (``VmHWM``) is reset to it through
   ``/proc/self/clear_refs`` (Linux >= 4.0);
4. build the model, Adam and the Redistributor exactly as the training engine does (``Trainer``), run
   ``steps`` training steps, then one redistribution (alpha ~= 0.5, the largest of the paper's schedule);
5. **peak** = CUDA: ``torch.cuda.max_memory_allocated`` - baseline (tensors only, as the allocator sees
   them); CPU: ``VmHWM`` - baseline RSS (everything the process touched: tensors, allocator slack,
   temporaries of numba kernels, Python objects). The peak is taken twice, over the training steps
   (``train_peak_bytes``) and, after a reset, over the redistribution (``redistribution_peak_bytes``);
   ``peak_bytes`` is the larger, both above the same baseline.

On the CPU every worker runs with glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``,
unless already set): by default glibc raises the threshold after the first large free, so later large
blocks come from the heap, whose freed pages stay resident; the resident set then measures the
allocator's caching rather than the memory the computation needs. With the threshold fixed, every large
tensor is its own mapping, returned to the OS when freed, for the dense twin and the sparse nets alike.

So a configuration is charged for what training it needs on top of the same process with the same data
loaded; imports, the CUDA context and the data are not counted on either side. Also reported is the
**state** after the last training step (before the redistribution): exact bytes of the tensors the model,
Adam and the algorithm hold (parameters, grads, index buffers, optimizer moments, e.g. Woodfisher's
Fisher blocks), counted once per storage. It has no noise and no allocator effects; the difference
peak - state is what the step's temporaries (activations, kernel buffers, redistribution) add.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from redr.bench.common import (PACKAGE_ROOT, JsonLines, environment, runnable_algorithms, format_table, make_record,
                               make_trainer, mib, net_specs, print_flush, ratio, synthetic_dataset, sync)
from redr.redistribution.algorithms.registry import ALGORITHMS
from redr.runtime import configure_threads
from redr.training.memory import memory_measuring_env, peak_memory_bytes, reset_peak_memory

DENSITIES = [0.1, 0.06, 0.03]
QUICK_DENSITIES = [0.1]
STEPS = 3


# ---------------------------------------------------------------------------------------------------- in the worker

def _proc_status() -> dict:
    out = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - non-Linux
        pass
    return out


def _peak_since_reset(device: torch.device) -> int:
    sync(device)
    return peak_memory_bytes(device)


def tensor_state_bytes(*roots) -> int:
    """Bytes of every distinct tensor storage reachable from ``roots`` (modules, dicts, lists, objects),
    tensors' ``.grad`` included; each storage counted once."""
    seen, total = set(), 0

    def visit(obj, depth):
        nonlocal total
        if depth > 8 or obj is None or isinstance(obj, (str, bytes, int, float, bool, type)):
            return
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if torch.is_tensor(obj):
            storage = obj.untyped_storage()
            key = ("storage", obj.device, storage.data_ptr())
            if key not in seen and storage.nbytes():
                seen.add(key)
                total += storage.nbytes()
            if obj.grad is not None:
                visit(obj.grad, depth + 1)
        elif isinstance(obj, dict):
            for k, v in obj.items():
                visit(k, depth + 1)
                visit(v, depth + 1)
        elif isinstance(obj, (list, tuple, set, frozenset)):
            for v in obj:
                visit(v, depth + 1)
        elif hasattr(obj, "__dict__") and not callable(obj) or isinstance(obj, nn.Module):
            visit(vars(obj), depth + 1)

    for root in roots:
        visit(root, 0)
    return total


#: issue 15's target for the bytes one active weight costs in training (values, indices, gradient, Adam)
BYTES_PER_WEIGHT_TARGET = 32


def bytes_per_active_weight(model: nn.Module, optimizer) -> dict:
    """Bytes per active weight of the sparse layers, measured on their tensors, by part: ``values``, ``indices``
    (CSR ``col`` and ``crow``), ``transposed`` (the companion ``row_t``, ``perm_t``, ``crow_t``), ``gradient``
    and ``adam`` (the two moments); ``total`` their sum. Empty for a net without sparse layers."""
    from redr.sparse import SparseLinear

    def size(*ts):
        return sum(t.numel() * t.element_size() for t in ts if torch.is_tensor(t))

    parts = dict.fromkeys(("values", "indices", "transposed", "gradient", "adam"), 0)
    nnz = 0
    for layer in (m for m in model.modules() if isinstance(m, SparseLinear)):
        nnz += layer.nnz
        state = optimizer.state.get(layer.values, {})
        parts["values"] += size(layer.values)
        parts["indices"] += size(layer.col, layer.crow)
        parts["transposed"] += size(layer.row_t, layer.perm_t, layer.crow_t)
        parts["gradient"] += size(layer.values.grad)
        parts["adam"] += size(state.get("exp_avg"), state.get("exp_avg_sq"))
    if nnz == 0:
        return {}
    out = {k: round(v / nnz, 3) for k, v in parts.items()}
    out["total"] = round(sum(parts.values()) / nnz, 3)
    return out


def _warm_up(device: torch.device) -> None:
    from redr.sparse import SparseLinear, kernels

    backends = ["torch", "dense"] + (["numba"] if device.type == "cpu" and kernels.HAVE_NUMBA else [])
    layers = [nn.Linear(64, 32, device=device)] + [SparseLinear(64, 32, 0.25, backend=b, device=device) for b in backends]
    opt = torch.optim.Adam([p for layer in layers for p in layer.parameters()], lr=1e-3)
    x = torch.rand(16, 64, device=device, requires_grad=True)
    target = torch.zeros(16, dtype=torch.long, device=device)
    for _ in range(2):
        outs = [torch.relu(layer(x)) for layer in layers]
        loss = sum(nn.functional.cross_entropy(o, target) for o in outs)
        loss = loss + nn.functional.binary_cross_entropy_with_logits(outs[0][:, 0], target.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)


def worker(config: dict) -> dict:
    device = torch.device(config["device"])
    spec = net_specs([config["net"]], config["quick"])[0]
    steps = config["steps"]
    data = synthetic_dataset(spec, steps * spec.batch_size, device, test_rows=8)
    _warm_up(device)
    gc.collect()
    sync(device)
    result = {"peak_method": None}
    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device)
        reset_peak_memory(device)
        result.update(peak_method="torch.cuda.max_memory_allocated - memory_allocated at baseline", baseline_bytes=base)
    else:
        base = _proc_status().get("VmRSS")
        reset = reset_peak_memory(device)
        result.update(baseline_bytes=base,
                      peak_method="VmHWM - VmRSS at baseline" + ("" if reset else " (VmHWM reset unavailable: peak since start)"))
    start = time.perf_counter()
    trainer = make_trainer(spec, data, device, config["model"], config["algorithm"] or "none", config["density"])
    trainer.train_epoch(1)
    sync(device)
    algorithm = trainer.redistributor.algorithm if trainer.redistributor is not None else None
    result["state_bytes"] = tensor_state_bytes(trainer.model, trainer.optimizer.state, algorithm)
    result["bytes_per_weight"] = bytes_per_active_weight(trainer.model, trainer.optimizer)
    result["train_peak_bytes"] = _peak_since_reset(device) - base
    if trainer.redistributor is not None:
        reset_peak_memory(device)
        batches = trainer.redistribution_batches() if algorithm.needs_batches else None
        report = trainer.redistributor.step(1, batches)
        result["alpha"] = report.alpha if report is not None else 0.0
        result["redistribution_s"] = report.seconds if report is not None else 0.0
        sync(device)
        result["redistribution_peak_bytes"] = _peak_since_reset(device) - base
    result["seconds"] = time.perf_counter() - start
    result["peak_bytes"] = max(result["train_peak_bytes"], result.get("redistribution_peak_bytes", 0))
    if device.type == "cuda":
        result["max_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    else:
        result["rss_end_bytes"] = _proc_status().get("VmRSS")
    result["weights"] = trainer.summary.weights
    result["nnz"] = [layer.nnz for layer in trainer.model.modules() if hasattr(layer, "nnz")]
    return result


def worker_main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "--worker":
        print("usage: python -m redr.bench.memory --worker JSON-CONFIG", file=sys.stderr)
        return 2
    config = json.loads(argv[1])
    if config.get("threads"):
        configure_threads(config["threads"])
    print(json.dumps(worker(config)), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------- the suite

def _run_worker(config: dict, timeout: float) -> dict:
    env = memory_measuring_env()  # glibc's mmap threshold fixed: see the module docstring
    src = str(PACKAGE_ROOT.parent)
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "redr.bench.memory", "--worker", json.dumps(config)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"worker exited with {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def run(args, device: torch.device, out: JsonLines) -> list[dict]:
    quick = args.quick
    specs = net_specs(args.nets or ["wide"], quick)
    densities = args.densities or (QUICK_DENSITIES if quick else DENSITIES)
    steps = args.steps or STEPS
    env = environment(device)
    what = "CUDA allocator peak" if device.type == "cuda" else "peak RSS (VmHWM)"
    print_flush(f"memory suite on {env['device_name']} ({device}), torch {env['torch_version']}, commit {env['commit'][:10]}; "
                f"{what} above the baseline of a fresh process per configuration; {steps} training steps + 1 redistribution")
    runnable = runnable_algorithms(args.algorithms or list(ALGORITHMS))
    records, table = [], []
    for spec in specs:
        print_flush(f"{spec.name}: {'-'.join(map(str, spec.sizes))}, batch {spec.batch_size}")
        configs = [("dense-neuron", None, 1.0)] + [("sparse", a, d) for d in densities for a in runnable]
        worker_configs = [{"net": spec.name, "quick": quick, "device": str(device), "model": model, "algorithm": algorithm,
                           "density": density if model == "sparse" else 0.1, "steps": steps, "threads": args.threads}
                          for model, algorithm, density in configs]
        dense = None
        # each configuration is its own process; --jobs > 1 runs several at once (memory is per process, so
        # the numbers do not change; only the wall time does). Results come back in order.
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = pool.map(lambda c: _run_worker(c, args.worker_timeout), worker_configs)
            for (model, algorithm, density), r in zip(configs, results):
                config = {"net": spec.name, "sizes": list(spec.sizes), "batch": spec.batch_size, "model": model,
                          "algorithm": algorithm, "density": density, "steps": steps, "quick": quick, "optimizer": "Adam"}
                label = "dense" if model != "sparse" else algorithm
                if "error" in r:
                    print_flush(f"  d={density} {label}: ERROR {r['error']}")
                    rec = make_record("memory", "error", env, config, r, {})
                    out.write(rec)
                    records.append(rec)
                    table.append([spec.name, density, label, None, None, None, None, None, None])
                    continue
                if model != "sparse":
                    dense = r
                ratios = {}
                if dense is not None:
                    ratios = {"peak_vs_dense": ratio(r["peak_bytes"] / dense["peak_bytes"]),
                              "state_vs_dense": ratio(r["state_bytes"] / dense["state_bytes"])}
                rec = make_record("memory", "dense" if model != "sparse" else "sparse", env, config, r, ratios)
                out.write(rec)
                records.append(rec)
                table.append([spec.name, density, label, mib(r["peak_bytes"]), ratios.get("peak_vs_dense"),
                              mib(r["train_peak_bytes"]), mib(r.get("redistribution_peak_bytes")),
                              mib(r["state_bytes"]), ratios.get("state_vs_dense")])
                print_flush(f"  d={density} {label}: peak {mib(r['peak_bytes']):.1f} MiB"
                            + (f" ({ratios['peak_vs_dense']:.3f}x dense)" if ratios else "")
                            + f", state {mib(r['state_bytes']):.1f} MiB"
                            + (f", {r['bytes_per_weight']['total']:.1f} bytes per active weight (target <= "
                               f"{BYTES_PER_WEIGHT_TARGET})" if r.get("bytes_per_weight") else ""))
    print_flush(f"\npeak = {what} above the process's baseline (imports, data, warm-up excluded), MiB; state = exact "
                "bytes of\nparameters, grads, index buffers, Adam moments and algorithm tensors after the last step; "
                "'x' = ratio to the dense twin;\n"
                "train peak / redistr peak: the peak over the training steps / over the redistribution alone")
    print_flush(format_table(["net", "density", "config", "peak MiB", "peak x", "train peak", "redistr peak", "state MiB",
                              "state x"], table))
    return records


if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1:]))
