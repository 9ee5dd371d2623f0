"""The training engine behind ``redr train`` (and ``redr reproduce``).

One :class:`Trainer` runs one configuration: it loads the data onto the device, builds the model
(sparse, or a dense baseline), trains with Adam on index-permuted minibatches, evaluates after every
epoch, redistributes on the schedule (measuring the training loss on a fixed subset right before and
after, the paper's "induced loss"), writes ``metrics.csv`` and checkpoints atomically so that a run can
be resumed exactly (bit-identical on the CPU), also from the middle of an epoch after SIGINT/SIGTERM.

Every random choice comes from a named CPU generator derived from the run's seed: model init, data
order, augmentation, the batches given to the redistribution, and the redistributor's own choices.
"""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import random
import signal
import sys
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from redr.data.batching import batch_indices
from redr.errors import RedrError, UsageError
from redr.redistribution import RedistributionSchedule, Redistributor
from redr.sparse.convert import build_mlp, count_parameters, count_weights, parameter_equivalent_sizes, sparse_layers
from redr.training import checkpoint
from redr.training.config import RunConfig

#: Rows per evaluation chunk (at least; a larger training batch is used as is). See Trainer.evaluate.
EVAL_CHUNK_ROWS = 1024

GENERATORS = ("init", "data", "augment", "redistribution-data")
CONFIG_FILE, METRICS_FILE = "config.json", "metrics.csv"
OUR_FILES = (CONFIG_FILE, METRICS_FILE, checkpoint.CHECKPOINT, checkpoint.PREVIOUS, checkpoint.TEMPORARY,
             checkpoint.PREVIOUS + ".tmp", "DONE")


class NonFiniteError(RedrError):
    """A NaN/inf loss or weight; the message names the epoch, the step and the layer."""


def derive_seed(seed: int, name: str) -> int:
    """Independent, stable seeds per purpose (changing one stream never shifts another)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak for :func:`peak_memory_bytes` (the trainer does at every epoch start). CUDA: the
    allocator's peak statistics. CPU (Linux >= 4.0): the process's VmHWM, reset to the current resident set
    through ``/proc/self/clear_refs``; where that is not allowed the CPU peak stays the one since the
    process started (loading the data included) and this returns False."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:  # not Linux, an old kernel, or a restricted container
        return False


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: the caching allocator's peak since the last reset. CPU: the process's peak resident set
    size since the last :func:`reset_peak_memory` (VmHWM: interpreter, libraries and data included; compare
    configurations in fresh processes, against a baseline process)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - non-Linux
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


def memory_measuring_env() -> dict:
    """``os.environ`` for a subprocess that measures its peak memory on the CPU: glibc's mmap threshold fixed
    at 128 KiB (unless already set). By default glibc raises the threshold after the first large free, so later
    large blocks come from the heap, whose freed pages stay resident, and the peak RSS then measures the
    allocator's caching rather than what the run needs; with it fixed, every large tensor is its own mapping,
    returned to the OS when freed."""
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    return env


def make_adam(params, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam (the paper's optimizer). The fused implementation where torch has one for the device: on the
    CPU it measured 3-7x faster than the per-parameter loop (for the sparse and the dense nets alike)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch, or a device without a fused kernel
        return torch.optim.Adam(params, lr=lr)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_data(config: RunConfig, device: torch.device, progress: bool):
    if config.dataset == "synthetic":
        from redr.data.synthetic import make_synthetic

        return make_synthetic(config.train_rows or 2048, config.test_rows or 512, device=device)
    from redr.data import load_dataset

    return load_dataset(config.dataset, data_dir=config.data_dir, device=device, train_rows=config.train_rows,
                        test_rows=config.test_rows, download=config.download, progress=progress)


@dataclass
class ModelSummary:
    sizes: list
    weights: int
    parameters: int
    sparse_weights: int  # the sparse net's connections at this density (what param-eq matches)
    neuron_equivalent_weights: int
    parameter_equivalent_sizes: list
    parameter_equivalent_weights: int
    layer_densities: list

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def build_model(config: RunConfig, num_features: int, num_outputs: int, generator: torch.Generator, device):
    """The model of ``config.model`` and a summary with the counts the paper compares."""
    sizes = config.sizes(num_features, num_outputs)
    config.check_layer_sizes(sizes)
    sparse = build_mlp(sizes, config.density, dense_last=config.dense_last, generator=generator,
                       backend=config.backend, device=device)
    sparse_weights = count_weights(sparse)
    param_sizes = parameter_equivalent_sizes(sizes, sparse_weights)
    if config.model == "sparse":
        model = sparse
    else:
        del sparse
        model = build_mlp(sizes if config.model == "dense-neuron" else param_sizes, None, generator=generator, device=device)
    dims = list(zip(sizes[:-1], sizes[1:]))
    summary = ModelSummary(
        sizes=sizes if config.model != "dense-param" else param_sizes,
        weights=count_weights(model), parameters=count_parameters(model), sparse_weights=sparse_weights,
        neuron_equivalent_weights=sum(a * b for a, b in dims), parameter_equivalent_sizes=param_sizes,
        parameter_equivalent_weights=sum(a * b for a, b in zip(param_sizes[:-1], param_sizes[1:])),
        layer_densities=[round(layer.density, 6) for _, layer in sparse_layers(model)])
    return model, summary


class Trainer:
    """Runs one configuration. ``out_dir=None`` trains without writing files (library use, tests).

    ``rank``/``world_size``/``all_reduce`` are set by the data-parallel launcher; only rank 0 writes.
    ``parallel`` (a :class:`redr.training.distributed.DataParallel`) sets all three and also averages the
    gradients, shards evaluation and checks that the ranks keep one topology (see docs/distributed.md).
    """

    def __init__(self, config: RunConfig, out_dir: Optional[str | os.PathLike] = None, *, progress: bool = True,
                 log: Callable[[str], None] = print, dataset=None, rank: int = 0, world_size: int = 1,
                 wrap_model: Optional[Callable] = None, all_reduce: Optional[Callable] = None, parallel=None):
        config.validate(custom_data=dataset is not None)  # the one shared validation, whoever builds the trainer
        self.config = config
        self.parallel = parallel
        if parallel is not None:
            rank, world_size, all_reduce = parallel.rank, parallel.world_size, all_reduce or parallel.all_reduce
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.rank, self.world_size = rank, world_size
        self.is_writer = rank == 0
        self.progress = progress and self.is_writer
        self.log = log if self.is_writer else (lambda *_: None)
        self.device = torch.device(config.device or default_device())
        self.generators = {name: torch.Generator().manual_seed(derive_seed(config.seed, name)) for name in GENERATORS}
        self.data = dataset if dataset is not None else load_data(config, self.device, self.progress)
        if config.augment and self.data.image_shape is None:
            raise UsageError(f"--augment needs an image dataset; {config.dataset} has no image shape")
        num_outputs = 1 if self.data.task == "binary" else self.data.num_classes
        self.model, self.summary = build_model(config, self.data.num_features, num_outputs, self.generators["init"], self.device)
        self.train_model = wrap_model(self.model) if wrap_model is not None else self.model
        self.optimizer = make_adam(self.model.parameters(), config.lr, self.device)
        self.augment = None
        if config.augment:
            from redr.data import RandomAffine

            self.augment = RandomAffine(**config.augment_options)
        self.redistributor = None
        if config.model == "sparse":
            schedule = RedistributionSchedule(config.epochs, config.redistribute_every, config.alpha0, config.end_fraction)
            extra = {"all_reduce": all_reduce} if all_reduce is not None else {}
            self.redistributor = Redistributor(self.model, self.optimizer, config.algorithm, schedule=schedule,
                                               seed=derive_seed(config.seed, "redistributor"),
                                               loss_fn=self.loss_fn if parallel is None else parallel.global_mean_loss(self.loss_fn),
                                               **extra, **config.algorithm_options)
        self.metrics: list[dict] = []
        self.epoch = 0  # finished epochs
        self.step_in_epoch = 0  # finished steps of the epoch in progress (a mid-epoch checkpoint)
        self._epoch_data_state = None  # data generator state at the start of the epoch in progress
        self._epoch_loss_sum = 0.0
        self._epoch_batches = 0
        self._skipped = 0
        self._epoch_steps = 0
        self._stop_signal = None
        self._stop_requested = None  # data parallel: a signal this rank received, agreed on at the next step

    # ------------------------------------------------------------------ pieces
    def loss_fn(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.data.task == "binary":
            return F.binary_cross_entropy_with_logits(output.squeeze(-1), target)  # the stable form of sigmoid+BCE
        return F.cross_entropy(output, target)

    def _batches(self, generator: torch.Generator):
        return batch_indices(self.data.train_x.shape[0], self.config.batch_size, generator, shuffle=True,
                             rank=self.rank, world_size=self.world_size, device=self.device)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, chunk: Optional[int] = None) -> tuple[float, float]:
        """Mean loss and accuracy over ``x``/``y``, in chunks (no augmentation, eval mode).

        Chunks default to ``max(batch_size, EVAL_CHUNK_ROWS)`` rows: evaluation then needs about the activation
        memory of a training step, not more (a 4096-wide net's activations for 8,192 rows are 128 MiB each,
        which would make evaluation, not training, set the run's peak memory)."""
        chunk = chunk or max(self.config.batch_size, EVAL_CHUNK_ROWS)
        was = self.model.training
        self.model.eval()
        loss_sum, correct = 0.0, 0
        lo, hi = (0, x.shape[0]) if self.parallel is None else self.parallel.shard(x.shape[0])  # this rank's rows
        for start in range(lo, hi, chunk):
            out = self.model(x[start:min(start + chunk, hi)])
            target = y[start:min(start + chunk, hi)]
            if self.data.task == "binary":
                logits = out.squeeze(-1)
                loss_sum += float(F.binary_cross_entropy_with_logits(logits, target, reduction="sum"))
                correct += int(((logits > 0).float() == target).sum())
            else:
                loss_sum += float(F.cross_entropy(out, target, reduction="sum"))
                correct += int((out.argmax(1) == target).sum())
        self.model.train(was)
        if self.parallel is not None:
            loss_sum, correct = self.parallel.sum_numbers(loss_sum, correct)
        n = max(1, x.shape[0])
        return loss_sum / n, correct / n

    def induced_loss_subset(self):
        n = min(self.config.induced_loss_rows, self.data.train_x.shape[0])
        return self.data.train_x[:n], self.data.train_y[:n]

    def _check_finite(self, loss: torch.Tensor, x: torch.Tensor, epoch: int, step: int) -> bool:
        """After backward: True if the loss and every gradient are finite. Otherwise skip the batch
        (``--on-nonfinite skip-batch``, weights still finite) or stop with a :class:`NonFiniteError`
        naming the epoch, the step and the layer. One device sync per step.

        The fast test sums every gradient (one read pass; a NaN/inf anywhere makes the sum non-finite);
        only a non-finite sum, which a huge but finite gradient can also give, runs the exact test."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        total = loss.detach().float() + sum(g.sum(dtype=torch.float32) for g in grads)
        if bool(torch.isfinite(total)) or (bool(torch.isfinite(loss.detach()))
                                           and all(bool(torch.isfinite(g).all()) for g in grads)):
            return True
        bad_weights = self._nonfinite_parameters()
        if self.config.on_nonfinite == "skip-batch" and not bad_weights:
            self.optimizer.zero_grad(set_to_none=True)
            self._skipped += 1
            return False
        value = float(loss.detach())
        what = (f"non-finite training loss ({value})" if not math.isfinite(value)
                else f"non-finite gradient ({', '.join(self._nonfinite_gradients())}; loss {value:.6g})")
        raise NonFiniteError(f"{what} at epoch {epoch}, step {step}/{self._epoch_steps}: {self._diagnose(x, bad_weights)}"
                             + self._last_good()
                             + ("" if bad_weights else "; if only some batches are bad (NaN/inf in the data), rerun with "
                                "--on-nonfinite skip-batch to skip them; a diverging run needs a smaller --lr"))

    def _nonfinite_parameters(self) -> list[str]:
        return [name for name, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]

    def _nonfinite_gradients(self) -> list[str]:
        return [name for name, p in self.model.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]

    @torch.no_grad()
    def _diagnose(self, x: torch.Tensor, bad_weights: list[str]) -> str:
        """Where the non-finite numbers come from: the weights of a layer, the input batch, or the first
        layer whose output is not finite."""
        if bad_weights:
            return "non-finite weights in " + ", ".join(f"layer {n.rpartition('.')[0] or n} ({n})" for n in bad_weights)
        if not bool(torch.isfinite(x).all()):
            rows = (~torch.isfinite(x)).any(1).nonzero().squeeze(1).tolist()
            return f"the input batch has NaN/inf in {len(rows)} of its rows (data; first row {rows[0]} of the batch)"
        found = []

        def hook(module, inputs, output, name=None):
            if not found and torch.is_tensor(output) and not bool(torch.isfinite(output).all()):
                shape = f" {module.in_features} -> {module.out_features}" if hasattr(module, "in_features") else ""
                found.append(f"layer {name} ({type(module).__name__}{shape}) is the first with a non-finite output")

        handles = [m.register_forward_hook(lambda mod, i, o, n=name: hook(mod, i, o, n))
                   for name, m in self.model.named_children()]
        try:
            self.model(x)
        finally:
            for h in handles:
                h.remove()
        return found[0] if found else "finite forward pass (the loss or a gradient overflowed)"

    def _last_good(self) -> str:
        if self.out_dir is None or not self.is_writer:
            return ""
        if (self.out_dir / checkpoint.CHECKPOINT).exists():
            return f"; the last good checkpoint (after epoch {self.epoch}) stays in {self.out_dir}"
        return "; no checkpoint was written yet"

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self, epoch: int) -> float:
        """Train one epoch (or its rest, after a mid-epoch resume); returns the mean training loss."""
        gen = self.generators["data"]
        if self.step_in_epoch == 0:
            self._epoch_data_state = gen.get_state()
            self._epoch_loss_sum, self._epoch_batches, self._skipped = 0.0, 0, 0
        else:  # resume inside the epoch: redraw the same order, skip the finished steps
            gen.set_state(self._epoch_data_state)
        batches = self._batches(gen)
        self._epoch_steps = len(batches)
        self.model.train()
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            # disable=None: no bar when stderr is not a terminal (log files, grids run in the background)
            bar = tqdm(total=len(batches), initial=self.step_in_epoch, desc=f"epoch {epoch}/{self.config.epochs}",
                       leave=False, dynamic_ncols=True, file=sys.stderr, disable=None)
        # continue the epoch's float64 sum exactly where a mid-epoch checkpoint left it
        loss_sum = torch.full((), self._epoch_loss_sum, dtype=torch.float64, device=self.device)
        for step in range(self.step_in_epoch, len(batches)):
            idx = batches[step]
            x, y = self.data.train_x[idx], self.data.train_y[idx]
            if self.augment is not None:
                x = self._augment(x, step)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.train_model(x), y)
            if self.parallel is None:
                loss.backward()
            else:  # the global batch's gradient and loss on every rank; all ranks agree on stopping
                loss, stop = self.parallel.backward(loss, x.shape[0], list(self.model.parameters()),
                                                    self._stop_requested is not None)
                if stop and self._stop_signal is None:
                    self._stop_signal = self._stop_requested or "a signal to another process"
            if self._check_finite(loss, x, epoch, step + 1):
                self.optimizer.step()
                loss_sum += loss.detach()
                self._epoch_batches += 1
            self.step_in_epoch = step + 1
            if bar is not None:
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            if self._stop_signal is not None:
                break
        if bar is not None:
            bar.close()
        self._epoch_loss_sum = float(loss_sum)
        return self._epoch_loss_sum / self._epoch_batches if self._epoch_batches else math.nan

    def _augment(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """``x`` augmented. Data parallel: every rank draws the random parameters of the whole global batch and
        uses its slice's, so the data equal a one-process run's and the generator stays the same on all ranks."""
        gen, shape = self.generators["augment"], self.data.image_shape
        if self.parallel is None:
            return self.augment(x.view(-1, *shape), gen).view(x.shape[0], -1)
        n_global = min(self.config.batch_size, self.data.train_x.shape[0] - step * self.config.batch_size)
        lo, hi = self.parallel.shard(n_global)
        assert hi - lo == x.shape[0], (lo, hi, x.shape)
        if lo:
            self.augment.theta(lo, shape[-2], shape[-1], gen)  # the draws of the ranks before this one
        if hi > lo:
            x = self.augment(x.view(-1, *shape), gen).view(x.shape[0], -1)
        if n_global > hi:
            self.augment.theta(n_global - hi, shape[-2], shape[-1], gen)  # ... and after it
        return x

    def redistribution_batches(self):
        """The minibatch(es) given to gradient-based growth: drawn from their own generator, so the
        training data order is the same for every algorithm."""
        batches = self._batches(self.generators["redistribution-data"])[: self.config.redistribution_batches]
        return [(self.data.train_x[i], self.data.train_y[i]) for i in batches]

    def run_epoch(self, epoch: int) -> Optional[dict]:
        """Train, evaluate, redistribute; returns the metrics row (None if stopped by a signal mid-epoch)."""
        reset_peak_memory(self.device)
        start = time.perf_counter()
        train_loss = self.train_epoch(epoch)
        if self.step_in_epoch < self._epoch_steps:
            return None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        train_seconds = time.perf_counter() - start
        if self._epoch_batches == 0 and self._skipped:
            raise NonFiniteError(f"every batch of epoch {epoch} ({self._skipped}) had a non-finite loss or gradient and "
                                 "was skipped; the run diverged (try a smaller --lr)" + self._last_good())
        bad = self._nonfinite_parameters()
        if bad:
            raise NonFiniteError(f"non-finite weights after epoch {epoch}, step {self._epoch_steps}: "
                                 + self._diagnose(self.data.train_x[:1], bad) + self._last_good())
        row = {"epoch": epoch, "train_loss": train_loss}
        row["test_loss"], row["test_acc"] = self.evaluate(self.data.test_x, self.data.test_y)
        row.update(alpha=0.0, loss_before_redistribution=math.nan, loss_after_redistribution=math.nan,
                   redistribution_seconds=0.0)
        if self.redistributor is not None and self.redistributor.will_redistribute(epoch):
            sub_x, sub_y = self.induced_loss_subset()
            row["loss_before_redistribution"] = self.evaluate(sub_x, sub_y)[0]
            batches = self.redistribution_batches() if self.redistributor.algorithm.needs_batches else None
            report = self.redistributor.step(epoch, batches)
            if self.parallel is not None:
                self.parallel.check_topology(self.model, f"after the redistribution of epoch {epoch}")
            row["loss_after_redistribution"] = self.evaluate(sub_x, sub_y)[0]
            row["alpha"], row["redistribution_seconds"] = report.alpha, report.seconds
        for name, layer in sparse_layers(self.model):
            row[f"nnz[{name}]"] = layer.nnz
        row["epoch_seconds"] = train_seconds
        row["peak_memory_bytes"] = peak_memory_bytes(self.device)
        row["skipped_batches"] = self._skipped
        self.step_in_epoch = 0
        return row

    # ------------------------------------------------------------------ the run
    def run(self) -> list[dict]:
        self.log(self.describe())
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            try:
                signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                previous = {}
                break
        try:
            if self.parallel is not None:
                self.parallel.check_topology(self.model, "at the start")
            while self.epoch < self.config.epochs:
                epoch = self.epoch + 1
                row = self.run_epoch(epoch)
                if row is None:  # interrupted inside the epoch: save where we are and stop
                    self.save_checkpoint()
                    raise KeyboardInterrupt(f"stopped by {self._stop_signal} at epoch {epoch}, step {self.step_in_epoch}")
                self.epoch = epoch
                self.metrics.append(row)
                self.log(self.format_row(row))
                self.save_checkpoint()
                if self._stop_signal is not None:
                    raise KeyboardInterrupt(f"stopped by {self._stop_signal} after epoch {epoch}")
            if self.out_dir is not None and self.is_writer:
                (self.out_dir / "DONE").write_text(datetime.now(timezone.utc).isoformat() + "\n")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.metrics

    def _on_signal(self, signum, frame):
        if self._stop_signal is not None or self._stop_requested is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        if self.parallel is None:
            self._stop_signal = name
        else:  # every rank must stop after the same step: agreed in the next step's all-reduce
            self._stop_requested = name
        self.log(f"{name} received: finishing this step, saving a checkpoint, then stopping")

    def describe(self) -> str:
        c, s = self.config, self.summary
        kind = {"sparse": f"sparse d={c.density} ({c.algorithm})", "dense-neuron": "dense (neuron-equivalent)",
                "dense-param": "dense (parameter-equivalent)"}[c.model]
        return (f"{c.dataset}: {'-'.join(map(str, s.sizes))} {kind}, {s.weights:,} weights; "
                f"sparse net {s.sparse_weights:,} weights, neuron-equivalent dense {s.neuron_equivalent_weights:,}, "
                f"parameter-equivalent dense {'-'.join(map(str, s.parameter_equivalent_sizes))} "
                f"{s.parameter_equivalent_weights:,}; {c.epochs} epochs, batch {c.batch_size}, lr {c.lr}, "
                f"device {self.device}")

    @staticmethod
    def format_row(row: dict) -> str:
        text = (f"epoch {row['epoch']:3d}  train_loss {row['train_loss']:.4f}  test_loss {row['test_loss']:.4f}  "
                f"test_acc {row['test_acc']:.4f}  {row['epoch_seconds']:.1f}s")
        if row["alpha"] > 0:
            text += (f"  redistributed alpha={row['alpha']:.3f} in {row['redistribution_seconds']:.2f}s, loss "
                     f"{row['loss_before_redistribution']:.4f} -> {row['loss_after_redistribution']:.4f}")
        return text

    # ------------------------------------------------------------------ files and state
    def state_dict(self) -> dict:
        return {
            "config": self.config.to_dict(), "sizes": list(self.summary.sizes),
            "redr_version": __import__("redr").__version__, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "epoch_data_state": self._epoch_data_state, "epoch_loss_sum": self._epoch_loss_sum,
            "epoch_batches": self._epoch_batches, "skipped": self._skipped,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "redistributor": self.redistributor.state_dict() if self.redistributor else None,
            "generators": {k: g.get_state() for k, g in self.generators.items()},
            "rng": {"torch": torch.get_rng_state(), "numpy": checkpoint.numpy_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "metrics": self.metrics,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.redistributor is not None:
            self.redistributor.load_state_dict({**state["redistributor"], "generator": state["redistributor"]["generator"].cpu()})
        for k, g in self.generators.items():  # generator states are CPU tensors whatever map_location was
            g.set_state(state["generators"][k].cpu())
        torch.set_rng_state(state["rng"]["torch"].cpu())
        checkpoint.set_numpy_rng_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        if state["rng"].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        data_state = state["epoch_data_state"]
        self._epoch_data_state = data_state.cpu() if torch.is_tensor(data_state) else data_state
        self._epoch_loss_sum, self._epoch_batches = state["epoch_loss_sum"], state["epoch_batches"]
        self._skipped = state["skipped"]
        self.metrics = list(state["metrics"])

    def save_checkpoint(self) -> None:
        if self.out_dir is None or not self.is_writer:
            return
        bad = self._nonfinite_parameters()
        if bad:  # never replace a good checkpoint by one that cannot be resumed
            raise NonFiniteError(f"non-finite weights in {', '.join(bad)} at epoch {self.epoch + 1}, step "
                                 f"{self.step_in_epoch}; no checkpoint written" + self._last_good())
        checkpoint.save(self.out_dir, self.state_dict())
        write_metrics(self.out_dir / METRICS_FILE, self.metrics)

    def write_config(self, command: Optional[list] = None) -> None:
        if self.out_dir is None or not self.is_writer:
            return
        info = {
            "config": self.config.to_dict(),
            # every option of the algorithm as it ran, defaults included (a changed default stays visible)
            "algorithm": {"name": self.config.algorithm,
                          "options": self.redistributor.algorithm.options() if self.redistributor else {},
                          "schedule": self.redistributor.schedule.to_dict() if self.redistributor else None},
            "model": self.summary.to_dict(),
            "data": self.data.info,
            "device": {"type": self.device.type, "name": device_name(self.device), "world_size": self.world_size},
            "versions": {"redr": __import__("redr").__version__, "torch": torch.__version__, "numpy": np.__version__,
                         "python": platform.python_version()},
            "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                        "torch_threads": torch.get_num_threads()},
            "command": command if command is not None else sys.argv,
            "started": datetime.now(timezone.utc).isoformat(),
        }
        write_json_atomic(self.out_dir / CONFIG_FILE, info)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def write_metrics(path: Path, rows: list[dict]) -> None:
    """The whole CSV, rewritten atomically from the rows (so it always matches the checkpoint)."""
    tmp = path.with_suffix(".csv.tmp")
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """metrics.csv back as dicts of floats (ints where whole)."""
    rows = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            parsed = {}
            for k, v in row.items():
                try:
                    f = float(v)
                    parsed[k] = int(f) if k == "epoch" or k.startswith("nnz[") else f
                except (TypeError, ValueError):
                    parsed[k] = v
            rows.append(parsed)
    return rows


def check_out_dir(out_dir: Path, overwrite: bool = False, resume: bool = False) -> list[str]:
    """Refuse to touch an existing run unless asked (no side effects); returns our files found there."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} exists and is not a directory")
    existing = [name for name in OUR_FILES if (out_dir / name).exists()]
    if resume:
        if not any((out_dir / name).exists() for name in (checkpoint.CHECKPOINT, checkpoint.PREVIOUS, CONFIG_FILE)):
            raise UsageError(f"--resume {out_dir}: no checkpoint there to resume from")
    elif existing and not overwrite:
        raise UsageError(f"output dir {out_dir} already holds a run ({', '.join(existing)}); "
                         "pass --overwrite to replace it or --resume to continue it")
    return existing


def saved_config(out: Path) -> dict:
    """The ``config`` of a run directory's config.json (a UsageError if missing or unreadable)."""
    try:
        return json.loads((out / CONFIG_FILE).read_text())["config"]
    except FileNotFoundError:
        raise UsageError(f"--resume {out}: no {CONFIG_FILE} there (not a redr run directory)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"--resume {out}: {CONFIG_FILE} is unreadable ({type(exc).__name__}: {exc})") from None


def resume_from(trainer: Trainer, out: Path, log: Callable[[str], None] = print) -> None:
    """Load the newest usable checkpoint of ``out`` into ``trainer`` (see :mod:`redr.training.resume`).

    The requested config must equal the saved one (except :data:`~redr.training.resume.RESUMABLE_CHANGES`);
    a checkpoint that does not load, fails its checksum or its validation is skipped for the previous one
    (a :class:`~redr.training.checkpoint.CheckpointFallbackWarning`). A run killed before its first
    checkpoint starts again from epoch 1.
    """
    from redr.training.resume import check_resume_config, validate_checkpoint

    requested = trainer.config.to_dict()
    if not any((out / name).exists() for name in (checkpoint.CHECKPOINT, checkpoint.PREVIOUS)):
        changes = check_resume_config(saved_config(out), requested, out)
        log(f"resuming {out}: no checkpoint yet (stopped during its first epoch); starting again from epoch 1")
        if changes and trainer.is_writer:
            trainer.write_config()
        return
    changes: list[str] = []

    def validate(state: dict) -> None:
        if not isinstance(state.get("config"), dict):
            raise checkpoint.CheckpointError("the checkpoint holds no config")
        changes[:] = check_resume_config(state["config"], requested, out)
        validate_checkpoint(state, trainer)
        try:
            trainer.load_state_dict(state)
        except Exception as exc:  # whatever validation missed: still one line naming the problem
            raise checkpoint.CheckpointError(f"cannot be loaded into the run ({type(exc).__name__}: {exc})") from exc

    checkpoint.load(out, validate=validate, map_location=trainer.device)
    if changes:
        log(f"resuming with changed option(s): {'; '.join(changes)}")
    if trainer.is_writer:  # metrics.csv may lag the checkpoint by one epoch after a kill
        write_metrics(out / METRICS_FILE, trainer.metrics)
    if trainer.epoch >= trainer.config.epochs:
        log(f"{out}: the run is already complete ({trainer.epoch} epochs); nothing to train")
    else:
        log(f"resuming {out} after epoch {trainer.epoch}" + (f", step {trainer.step_in_epoch}" if trainer.step_in_epoch else ""))


def train(config: RunConfig, out_dir: Optional[str | os.PathLike] = None, *, overwrite: bool = False, resume: bool = False,
          progress: bool = True, log: Callable[[str], None] = print, command: Optional[list] = None, **trainer_kwargs) -> Trainer:
    """Run ``config`` (writing into ``out_dir`` if given); with ``resume`` continue the run saved there.

    Everything that can fail on bad input (options, output dir, data files) fails before anything is written.
    """
    out = Path(out_dir) if out_dir is not None else None
    if resume and out is None:
        raise UsageError("resume needs the run's output directory")
    if resume and overwrite:
        raise UsageError("--resume continues the run in its directory and --overwrite replaces it: give one of them")
    existing = check_out_dir(out, overwrite, resume) if out is not None else []
    trainer = Trainer(config, out, progress=progress, log=log, **trainer_kwargs)
    if resume:
        resume_from(trainer, out, log)
    elif out is not None and trainer.is_writer:
        out.mkdir(parents=True, exist_ok=True)
        for name in existing:
            (out / name).unlink()
        trainer.write_config(command)
    trainer.run()
    return trainer
