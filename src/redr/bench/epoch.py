"""``redr bench epoch``: seconds per training epoch of whole nets vs their dense neuron-equivalent twin.

Every configuration is trained by the training engine itself (:class:`~redr.training.trainer.Trainer`,
Adam, index-permuted minibatches, no augmentation) on synthetic data of the net's shapes, in this one
process, after the dense twin of the same net. Per epoch:

* ``epoch_s``: the engine's own ``epoch_seconds`` (the training steps only; evaluation excluded);
* ``redistribution_s``: the Redistributor's own timing of its step after the epoch (plan + apply);
* ``hook_s``: for algorithms with a per-step hook (Woodfisher's Fisher accumulation) the time spent in
  that hook during the epoch; it is *part of* ``epoch_s``.

Ratios: ``epoch_s / dense_epoch_s`` and ``(epoch_s + redistribution_s) / dense_epoch_s`` (the paper's
Table 1 compares the latter: 13.64 s and 21.45 s vs 9.80 s dense on HIGGS). The dense twin is timed
again after the net's sparse configurations (``dense recheck``) to show how much the machine drifted.
The schedule is the paper's (alpha0 = 0.5, cosine) over 100 epochs, so epoch 1 moves alpha ~= 0.5 of the
weights: the largest, most expensive redistribution of a run. Before any timing every algorithm runs once
on a tiny net (untimed), so one-time costs (lazy imports, library initialisation) fall on no configuration.
"""
from __future__ import annotations

import gc
import time

import torch

from redr.bench.common import (QUICK_NETS, JsonLines, environment, runnable_algorithms, format_table, make_record, make_trainer,
                               median, net_specs, print_flush, ratio, rounded, spread, synthetic_dataset, sync)
from redr.redistribution.algorithms.registry import ALGORITHMS
from redr.sparse.convert import sparse_layers

DENSITIES = [0.1, 0.06, 0.03]
QUICK_DENSITIES = [0.1]
NET_NAMES = ["higgs", "kmnist", "wide"]


class HookTimer:
    """Wraps an algorithm's ``after_step`` to sum the time spent in it (CUDA events on a GPU: no syncs added)."""

    def __init__(self, algorithm, device: torch.device):
        self.inner = algorithm.after_step
        self.device = device
        self.seconds = 0.0
        self.events = []
        algorithm.after_step = self  # the Redistributor's hook looks the method up at every call

    def __call__(self, layers):
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            self.inner(layers)
            end.record()
            self.events.append((start, end))
        else:
            t = time.perf_counter()
            self.inner(layers)
            self.seconds += time.perf_counter() - t

    def take(self) -> float:
        sync(self.device)
        total = self.seconds + sum(s.elapsed_time(e) for s, e in self.events) / 1e3
        self.seconds, self.events = 0.0, []
        return total


def warm_up(trainer, steps: int = 2) -> None:
    """Forward+backward on one batch (kernels compiled/loaded, threads started); no optimizer step."""
    n = trainer.config.batch_size
    x, y = trainer.data.train_x[:n], trainer.data.train_y[:n]
    for _ in range(steps):
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.loss_fn(trainer.model(x), y).backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    sync(trainer.device)


def warm_up_process(algorithms, device: torch.device) -> None:
    """Every algorithm once on a tiny net, untimed: lazily imported modules and libraries (LAPACK for the
    Fisher, kernels) are loaded before any timing, instead of inside whichever configuration comes first."""
    spec = QUICK_NETS["kmnist"]
    data = synthetic_dataset(spec, 2 * spec.batch_size, device, test_rows=8)
    for name in algorithms:
        try:
            trainer = make_trainer(spec, data, device, "sparse", name, 0.1)
            trainer.run_epoch(1)
            trainer.redistributor.close()
        except Exception:  # the timed run reports the error
            pass
    dense = make_trainer(spec, data, device, "dense-neuron")
    dense.run_epoch(1)
    sync(device)


def time_epochs(trainer, repeats: int, first_epoch: int = 1, hook: HookTimer | None = None) -> dict:
    epoch_s, redist_s, hook_s, alphas = [], [], [], []
    for e in range(first_epoch, first_epoch + repeats):
        row = trainer.run_epoch(e)
        epoch_s.append(row["epoch_seconds"])
        redist_s.append(row["redistribution_seconds"])
        alphas.append(row["alpha"])
        hook_s.append(hook.take() if hook is not None else 0.0)
    return {"epoch_s": epoch_s, "redistribution_s": redist_s, "hook_s": hook_s, "alpha": alphas}


def run(args, device: torch.device, out: JsonLines) -> list[dict]:
    quick = args.quick
    specs = net_specs(args.nets or NET_NAMES, quick, higgs_rows=args.higgs_rows, image_rows=args.rows)
    densities = args.densities or (QUICK_DENSITIES if quick else DENSITIES)
    repeats = args.repeats or 1
    env = environment(device)
    print_flush(f"epoch suite on {env['device_name']} ({device}), torch {env['torch_version']}, "
                f"{env['torch_threads']} threads, commit {env['commit'][:10]}; median of {repeats} epoch(s) per configuration")
    runnable = runnable_algorithms(args.algorithms or list(ALGORITHMS))
    warm_up_process(runnable, device)
    records, table = [], []
    for spec in specs:
        data = synthetic_dataset(spec, spec.rows, device)
        steps = -(-spec.rows // spec.batch_size)
        base_config = {"net": spec.name, "sizes": list(spec.sizes), "batch": spec.batch_size, "rows": spec.rows,
                       "steps_per_epoch": steps, "dense_last": spec.dense_last, "repeats": repeats, "quick": quick,
                       "backend": args.backend}
        print_flush(f"{spec.name}: {'-'.join(map(str, spec.sizes))}, batch {spec.batch_size}, {spec.rows:,} rows "
                    f"({steps} steps) per epoch")
        dense = make_trainer(spec, data, device, "dense-neuron")
        warm_up(dense)
        d = time_epochs(dense, repeats)
        dense_s = median(d["epoch_s"])
        rec = make_record("epoch", "dense", env, {**base_config, "model": "dense-neuron", "algorithm": None, "density": 1.0},
                          {"epoch_s": rounded(dense_s), "epoch_s_all": [rounded(v) for v in d["epoch_s"]],
                           "epoch_spread": rounded(spread(d["epoch_s"]), 3), "weights": dense.summary.weights}, {"epoch_vs_dense": 1.0})
        out.write(rec)
        records.append(rec)
        table.append([spec.name, 1.0, "dense", dense_s, 1.0, None, None, None, 1.0])
        print_flush(f"  dense: {dense_s:.3f} s/epoch")
        for density in densities:
            for algorithm in runnable:
                config = {**base_config, "model": "sparse", "algorithm": algorithm, "density": density}
                try:
                    trainer = make_trainer(spec, data, device, "sparse", algorithm, density, backend=args.backend)
                    alg = trainer.redistributor.algorithm
                    hook = HookTimer(alg, device) if alg.needs_step_hook else None
                    warm_up(trainer)
                    m = time_epochs(trainer, repeats, hook=hook)
                except Exception as exc:  # an algorithm still being written must not stop the suite
                    msg = f"{type(exc).__name__}: {exc}"
                    print_flush(f"  d={density} {algorithm}: ERROR {msg}")
                    rec = make_record("epoch", "error", env, config, {"error": msg}, {})
                    out.write(rec)
                    records.append(rec)
                    table.append([spec.name, density, algorithm, None, None, None, None, None, None])
                    trainer = None
                    gc.collect()
                    continue
                layers = [layer for _, layer in sparse_layers(trainer.model)]
                config.update(algorithm_options=alg.options(), needs_step_hook=alg.needs_step_hook,
                              needs_batches=alg.needs_batches, weights=trainer.summary.weights,
                              layer_backends=[layer.resolved_backend() for layer in layers],
                              alpha=rounded(m["alpha"][0], 4))
                epoch_s, redist_s, hook_s = median(m["epoch_s"]), median(m["redistribution_s"]), median(m["hook_s"])
                results = {"epoch_s": rounded(epoch_s), "epoch_s_all": [rounded(v) for v in m["epoch_s"]],
                           "epoch_spread": rounded(spread(m["epoch_s"]), 3),
                           "redistribution_s": rounded(redist_s, 5), "redistribution_s_all": [rounded(v, 5) for v in m["redistribution_s"]],
                           "redistribution_pct": rounded(100 * redist_s / epoch_s, 3),
                           "hook_s": rounded(hook_s, 5), "hook_pct": rounded(100 * hook_s / epoch_s, 3),
                           "dense_epoch_s": rounded(dense_s)}
                ratios = {"epoch_vs_dense": ratio(epoch_s / dense_s),
                          "total_vs_dense": ratio((epoch_s + redist_s) / dense_s)}
                rec = make_record("epoch", "sparse", env, config, results, ratios)
                out.write(rec)
                records.append(rec)
                table.append([spec.name, density, algorithm, epoch_s, epoch_s / dense_s, redist_s,
                              100 * redist_s / epoch_s, hook_s if alg.needs_step_hook else None, (epoch_s + redist_s) / dense_s])
                print_flush(f"  d={density} {algorithm}: {epoch_s:.3f} s/epoch ({epoch_s / dense_s:.2f}x dense), "
                            f"redistribution {redist_s:.4f} s ({100 * redist_s / epoch_s:.2f}%)"
                            + (f", step hook {hook_s:.3f} s" if alg.needs_step_hook else ""))
                trainer.redistributor.close()
                del trainer, layers
                gc.collect()
        again = time_epochs(dense, repeats, first_epoch=repeats + 1)
        again_s = median(again["epoch_s"])
        rec = make_record("epoch", "dense-recheck", env, {**base_config, "model": "dense-neuron", "algorithm": None, "density": 1.0},
                          {"epoch_s": rounded(again_s), "epoch_s_all": [rounded(v) for v in again["epoch_s"]],
                           "first_epoch_s": rounded(dense_s), "drift_pct": rounded(100 * (again_s / dense_s - 1), 2)},
                          {"recheck_vs_first": ratio(again_s / dense_s)})
        out.write(rec)
        records.append(rec)
        table.append([spec.name, 1.0, "dense recheck", again_s, again_s / dense_s, None, None, None, None])
        print_flush(f"  dense again: {again_s:.3f} s/epoch (drift {100 * (again_s / dense_s - 1):+.1f}%)")
        del dense, data
        gc.collect()
    print_flush("\nseconds per epoch (training steps only); 'x dense' = epoch_s / dense epoch_s (below 1: sparse faster);"
                "\nredistribution after the epoch, separately, and as % of the epoch; 'hook' = per-step hook time inside the"
                "\nepoch; 'total x' = (epoch + redistribution) / dense")
    print_flush(format_table(["net", "density", "algorithm", "epoch s", "x dense", "redistr s", "redistr %", "hook s",
                              "total x"], table))
    return records
