"""The training loop behind ``redr train`` (and ``redr reproduce``); :mod:`redr.training.api` starts and
resumes it, :mod:`redr.training.rundir` is the format of what it writes.

One :class:`Trainer` runs one configuration: it loads the data onto the device, builds the model
(sparse, or a dense baseline), trains with Adam on index-permuted minibatches, evaluates after every
epoch, redistributes on the schedule (measuring the training loss on a fixed subset right before and
after, the paper's "induced loss"), writes ``metrics.csv`` and checkpoints atomically so that a run can
be resumed exactly (bit-identical on the CPU), also from the middle of an epoch after SIGINT/SIGTERM.

Every random choice comes from a named CPU generator derived from the run's seed: model init, data
order, augmentation, the batches given to the redistribution, and the redistributor's own choices.
"""
from __future__ import annotations

import math
import os
import platform
import random
import signal
import sys
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from redr import __version__
from redr.data.batching import batch_indices
from redr.data.validation import hold_out
from redr.errors import UsageError
from redr.redistribution import RedistributionSchedule, Redistributor
from redr.runtime import configure_threads, device_name, resolve_device
from redr.sparse.convert import sparse_layers
from redr.training import checkpoint
from redr.training.config import RunConfig
from redr.training.estimate import available_memory, estimate_run
from redr.training.memory import peak_memory_bytes, reset_peak_memory
from redr.training.model import build_model, make_adam
from redr.training.nonfinite import NonFiniteError, diagnose, nonfinite_gradients, nonfinite_parameters
from redr.training.rundir import CONFIG_FILE, METRICS_FILE, write_done, write_json_atomic, write_metrics

#: Rows per evaluation chunk (at least; a larger training batch is used as is). See Trainer.evaluate.
EVAL_CHUNK_ROWS = 1024

GENERATORS = ("init", "data", "augment", "redistribution-data")


def derive_seed(seed: int, name: str) -> int:
    """Independent, stable seeds per purpose (changing one stream never shifts another)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def load_data(config: RunConfig, device: torch.device, progress: bool):
    if config.dataset == "synthetic":
        from redr.data.synthetic import make_synthetic

        return make_synthetic(config.train_rows or 2048, config.test_rows or 512, device=device)
    from redr.data import load_dataset

    return load_dataset(config.dataset, data_dir=config.data_dir, device=device, train_rows=config.train_rows,
                        test_rows=config.test_rows, download=config.download, progress=progress)


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
        self.device = resolve_device(config.device)
        configure_threads()  # before any kernel runs: numba's pool started, torch's thread count kept as it is
        self.generators = {name: torch.Generator().manual_seed(derive_seed(config.seed, name)) for name in GENERATORS}
        self.data = dataset if dataset is not None else load_data(config, self.device, self.progress)
        if config.validation_rows:
            self.data = hold_out(self.data, config.validation_rows)
        if config.augment and self.data.image_shape is None:
            raise UsageError(f"--augment needs an image dataset; {config.dataset} has no image shape")
        num_outputs = 1 if self.data.task == "binary" else self.data.num_classes
        self.memory_estimate = estimate_run(config, self.data.num_features, num_outputs)
        self.memory_estimate.check(available_memory(self.device))  # refuse before building (exit 2)
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
        which would make evaluation, not training, set the run's peak memory); nets wider than 4096 use
        proportionally fewer rows (a 1M-wide one: the batch), down to the batch size."""
        widest = max(self.summary.sizes or [1])  # wider than 4096: fewer rows, so no chunk outgrows a training step
        chunk = chunk or max(self.config.batch_size, min(EVAL_CHUNK_ROWS, EVAL_CHUNK_ROWS * 4096 // widest))
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
        bad_weights = nonfinite_parameters(self.model)
        if self.config.on_nonfinite == "skip-batch" and not bad_weights:
            self.optimizer.zero_grad(set_to_none=True)
            self._skipped += 1
            return False
        value = float(loss.detach())
        what = (f"non-finite training loss ({value})" if not math.isfinite(value)
                else f"non-finite gradient ({', '.join(nonfinite_gradients(self.model))}; loss {value:.6g})")
        raise NonFiniteError(f"{what} at epoch {epoch}, step {step}/{self._epoch_steps}: {diagnose(self.model, x, bad_weights)}"
                             + self._last_good()
                             + ("" if bad_weights else "; if only some batches are bad (NaN/inf in the data), rerun with "
                                "--on-nonfinite skip-batch to skip them; a diverging run needs a smaller --lr"))

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
        bad = nonfinite_parameters(self.model)
        if bad:
            raise NonFiniteError(f"non-finite weights after epoch {epoch}, step {self._epoch_steps}: "
                                 + diagnose(self.model, self.data.train_x[:1], bad) + self._last_good())
        row = {"epoch": epoch, "train_loss": train_loss}
        row["test_loss"], row["test_acc"] = self.evaluate(self.data.test_x, self.data.test_y)
        if getattr(self.data, "val_x", None) is not None:  # reported beside, never instead of, the test accuracy
            row["val_loss"], row["val_acc"] = self.evaluate(self.data.val_x, self.data.val_y)
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
        self.log(self.memory_estimate.describe())
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
                write_done(self.out_dir)
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
        spread = "" if c.distribution == "uniform" and c.fan_in is None else (  # the paper's line as it was
            f", layer densities {'/'.join(f'{d:.3g}' for d in s.layer_densities)}")
        kind = {"sparse": f"sparse {c.layer_distribution().describe()}{spread} ({c.algorithm})",
                "dense-neuron": "dense (neuron-equivalent)",
                "dense-param": "dense (parameter-equivalent)"}[c.model]
        net = "-".join(map(str, s.sizes)) if c.arch == "mlp" else f"{c.arch} (docs/conv.md)"
        param_eq = (f", parameter-equivalent dense {'-'.join(map(str, s.parameter_equivalent_sizes))} "
                    f"{s.parameter_equivalent_weights:,}") if s.parameter_equivalent_sizes else ""  # an MLP notion
        return (f"{c.dataset}: {net} {kind}, {s.weights:,} weights; "
                f"sparse net {s.sparse_weights:,} weights, neuron-equivalent dense {s.neuron_equivalent_weights:,}"
                f"{param_eq}; {c.epochs} epochs, batch {c.batch_size}, lr {c.lr}, "
                f"init {c.init}, device {self.device}"
                + (f", {c.validation_rows:,} training rows held out for validation" if c.validation_rows else ""))

    @staticmethod
    def format_row(row: dict) -> str:
        text = (f"epoch {row['epoch']:3d}  train_loss {row['train_loss']:.4f}  test_loss {row['test_loss']:.4f}  "
                f"test_acc {row['test_acc']:.4f}  {row['epoch_seconds']:.1f}s")
        if "val_acc" in row:
            text += f"  val_acc {row['val_acc']:.4f}"
        if row["alpha"] > 0:
            text += (f"  redistributed alpha={row['alpha']:.3f} in {row['redistribution_seconds']:.2f}s, loss "
                     f"{row['loss_before_redistribution']:.4f} -> {row['loss_after_redistribution']:.4f}")
        return text

    # ------------------------------------------------------------------ files and state
    def state_dict(self) -> dict:
        return {
            "config": self.config.to_dict(), "sizes": list(self.summary.sizes),
            "redr_version": __version__, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
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
        bad = nonfinite_parameters(self.model)
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
            "versions": {"redr": __version__, "torch": torch.__version__, "numpy": np.__version__,
                         "python": platform.python_version()},
            "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                        "torch_threads": torch.get_num_threads()},
            "command": command if command is not None else sys.argv,
            "started": datetime.now(timezone.utc).isoformat(),
        }
        write_json_atomic(self.out_dir / CONFIG_FILE, info)
