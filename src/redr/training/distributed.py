"""Data-parallel training over ``torch.distributed``: one process per device, each with the whole sparse model.

Launch with ``torchrun --nproc-per-node N -m redr train ...`` (or ``redr train --nproc N``, which runs torchrun
for you); see docs/distributed.md. Every process holds the full model and the full dataset, and trains on its
slice of every global batch (:func:`redr.data.batch_indices` with ``rank``/``world_size``), so N processes with
``--batch-size B`` take the same optimizer steps as one process with ``--batch-size B``.

What keeps the ranks identical (:class:`DataParallel`, used by :class:`~redr.training.trainer.Trainer`):

* **Gradients** are averaged by our own bucketed all-reduce after ``backward`` and before ``optimizer.step``
  (:meth:`DataParallel.backward`), not by ``DistributedDataParallel``: a :class:`~redr.sparse.SparseLinear`
  changes the size of its ``values`` at every redistribution while DDP's buckets are built for fixed parameter
  shapes (it would have to be rebuilt after every topology change); DDP also needs every rank to run a backward
  even when its slice of the last batch is empty, and divides by the number of ranks rather than by samples.
  The price is no overlap of communication with the backward (DDP's advantage); the models here fit one or a
  few buckets (25 MiB = 6.5 M float32 weights), see docs/distributed.md for the measurement.
* **Loss weighting, one collective per step.** Each rank back-propagates its slice's *summed* loss
  (``n_local * mean``); the all-reduce of the gradients carries ``(n_local * loss, n_local, stop flag)`` in the
  same buffer, and the summed gradients are divided by the global batch size ``N``: exactly the gradient of the
  global batch's mean loss, also when slices differ by one sample or a slice is empty. Every rank gets the
  global batch's loss (reported, and checked for NaN/inf identically everywhere).
* **Redistribution**: random choices come from the redistributor's generator, seeded identically on all ranks;
  data-dependent statistics (dense gradients, Fisher blocks) go through :meth:`DataParallel.all_reduce`, and the
  redistributor's loss is weighted like the training loss (:meth:`DataParallel.global_mean_loss`) so that the
  summed gradient is the global batch's. The Woodfisher per-step hook runs after ``optimizer.step`` and so reads
  gradients that are already averaged. After every redistribution (and at the start)
  :meth:`DataParallel.check_topology` all-gathers a hash of every layer's indices and values and stops the run
  with :class:`TopologyMismatchError` on all ranks if any two differ.
* **Evaluation** is sharded: every rank evaluates a contiguous slice and the sums are all-reduced, so every rank
  gets the same metrics (equal, up to float rounding, to a one-process run's).
* **Augmentation** draws the random parameters of the *whole* global batch on every rank and uses its slice, so
  the augmented data equal the one-process run's and the augmentation generator stays identical on all ranks.
* **Stopping** (SIGINT/SIGTERM) is agreed through the per-step all-reduce, so all ranks stop after the same step.
* **Files**: only rank 0 writes metrics, checkpoints, ``config.json`` and progress; all ranks read the same
  checkpoint to resume (the output directory must be visible to every process, e.g. a shared file system).
"""
from __future__ import annotations

import datetime
import hashlib
import os
import socket
import subprocess
import sys
import time
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist

from redr.errors import RedrError, UsageError

#: Gradient bucket size for the all-reduce (bytes), like DDP's default.
BUCKET_BYTES = 25 * 1024 * 1024

#: How long a collective may wait for the other ranks before the run fails.
DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)


class TopologyMismatchError(RedrError):
    """The ranks hold different sparse topologies (or weights): the run cannot continue consistently."""


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``rank`` when ``n`` rows are split like ``Tensor.tensor_split(world_size)``
    (the first ``n % world_size`` ranks get one row more), as :func:`redr.data.batch_indices` splits a batch."""
    q, r = divmod(n, world_size)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (1 if rank < r else 0)


def _layer_digest(*tensors: torch.Tensor) -> int:
    h = hashlib.blake2b(digest_size=8)
    for t in tensors:
        t = t.detach().contiguous().cpu()
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return int.from_bytes(h.digest(), "little", signed=True)


class DataParallel:
    """The collectives a data-parallel :class:`~redr.training.trainer.Trainer` needs, over the default process
    group (initialise it first, e.g. with :func:`initialize`).

    ``device`` is where the collectives' tensors live: the training device for NCCL, the CPU for gloo.
    ``comm_seconds``/``steps`` count the time spent in the per-step collectives (for scaling measurements).
    """

    def __init__(self, device: torch.device | str | None = None, bucket_bytes: int = BUCKET_BYTES):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("DataParallel needs an initialised torch.distributed process group (see initialize())")
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.backend = str(dist.get_backend())
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")
        self.device = torch.device(device)
        self.bucket_bytes = int(bucket_bytes)
        self.comm_seconds = 0.0
        self.steps = 0

    def __repr__(self) -> str:
        return f"DataParallel(rank={self.rank}, world_size={self.world_size}, backend={self.backend}, device={self.device})"

    # ------------------------------------------------------------------ basic collectives
    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over all ranks, as a new tensor (``t`` is left unchanged)."""
        out = t.detach().clone(memory_format=torch.contiguous_format)
        moved = out.device != self.device and self.backend == "nccl"
        buf = out.to(self.device) if moved else out
        dist.all_reduce(buf)
        return buf.to(out.device) if moved else buf

    def barrier(self) -> None:
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def broadcast_object(self, obj, src: int = 0):
        """``obj`` of rank ``src`` on every rank (picklable objects)."""
        box = [obj]
        dist.broadcast_object_list(box, src=src, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def all_gather_object(self, obj) -> list:
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's ``[lo, hi)`` of ``n`` rows (evaluation)."""
        return shard_range(n, self.rank, self.world_size)

    def sum_numbers(self, *numbers: float) -> list[float]:
        """Python numbers summed over ranks (in float64)."""
        t = torch.tensor([float(v) for v in numbers], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    # ------------------------------------------------------------------ one training step
    def backward(self, loss: torch.Tensor, n_local: int, parameters: Sequence[torch.nn.Parameter],
                 stop: bool = False) -> tuple[torch.Tensor, bool]:
        """Backward and gradient averaging of one step; returns ``(global_loss, stop_any)``, equal on every rank.

        ``loss`` is the mean loss of this rank's ``n_local`` samples. This rank back-propagates ``loss * n_local``
        (its samples' summed loss; nothing for an empty slice), the gradients are summed over ranks by
        :meth:`reduce_gradients` together with ``(n_local * loss, n_local, stop)`` in the same all-reduce, and
        divided by the global batch size ``N``: exactly the gradient of the global batch's mean loss, also when the
        slices differ by one sample. ``global_loss`` (0-d, on the loss's device) is the mean loss over the global
        batch (NaN/inf on every rank if any rank's is); ``stop_any``: some rank asked to stop.
        """
        if n_local:
            (loss * n_local).backward()
        local = loss.detach().reshape(()) * n_local if n_local else torch.zeros((), device=loss.device)
        total, n, stops = self.reduce_gradients(parameters, extras=(local, float(n_local), 1.0 if stop else 0.0),
                                                divide_by_extra=1)
        return (total / max(n, 1.0)).to(loss.device, loss.dtype), bool(stops > 0)

    @torch.no_grad()
    def reduce_gradients(self, parameters: Sequence[torch.nn.Parameter], extras: Sequence = (),
                         divide_by_extra: Optional[int] = None) -> list[torch.Tensor]:
        """Sum every parameter's ``.grad`` over the ranks, bucketed: one flat all-reduce per bucket of about
        :data:`BUCKET_BYTES`, all started before the first is waited for.

        Call after ``backward`` and before ``optimizer.step``. A ``None`` gradient counts as zeros; a parameter
        whose gradient is ``None`` on every rank keeps ``None`` (the optimizer skips it, as it would in one
        process). Afterwards each ``.grad`` is a view into its bucket (no copy back). ``extras`` (numbers or
        0-d tensors) ride along in the first bucket and come back summed, as 0-d tensors; with
        ``divide_by_extra=i`` the gradients are divided by the summed ``extras[i]`` (if it is > 0).
        """
        start = time.perf_counter()
        params = [p for p in parameters if p.requires_grad]
        groups: dict = {}
        for p in params:
            groups.setdefault((p.device, p.dtype), []).append(p)
        pending = []
        for (device, dtype), ps in groups.items():
            limit = max(1, self.bucket_bytes // ps[0].element_size())
            buckets, size = [[]], 0
            for p in ps:
                if buckets[-1] and size + p.numel() > limit:
                    buckets.append([])
                    size = 0
                buckets[-1].append(p)
                size += p.numel()
            for bucket in buckets:
                pending.append(self._start_bucket(bucket, dtype, device, extras if not pending else ()))
        if not pending:  # no parameter at all: still sum the extras
            pending.append(self._start_bucket([], torch.float64, self.device, extras))
        summed = []
        for i, (work, bucket, flat, size) in enumerate(pending):
            work.wait()
            tail = flat[size + len(bucket):]
            if i == 0:
                summed = list(tail.unbind()) if tail.numel() else []
            if divide_by_extra is not None and size:
                denominator = float(pending[0][2][pending[0][3] + len(pending[0][1]) + divide_by_extra])
                if denominator > 0:
                    flat[:size].div_(denominator)
            present = flat[size:size + len(bucket)].tolist()
            o = 0
            for q, seen in zip(bucket, present):
                n = q.numel()
                if seen > 0:
                    q.grad = flat[o:o + n].view_as(q)
                o += n
        self.comm_seconds += time.perf_counter() - start
        self.steps += 1
        return summed

    @staticmethod
    def _start_bucket(bucket: list, dtype, device, extras: Sequence = ()):
        """Copy the bucket's gradients, one presence flag per parameter and the extras into a flat tensor, and
        start its all-reduce."""
        size = sum(q.numel() for q in bucket)
        flat = torch.empty(size + len(bucket) + len(extras), dtype=dtype, device=device)
        o = 0
        for q in bucket:
            n = q.numel()
            if q.grad is None:
                flat[o:o + n].zero_()
            else:
                flat[o:o + n].copy_(q.grad.reshape(-1))
            o += n
        if bucket:
            flat[size:size + len(bucket)] = torch.tensor([q.grad is not None for q in bucket], dtype=dtype)
        for i, e in enumerate(extras):
            flat[size + len(bucket) + i] = e
        return dist.all_reduce(flat, async_op=True), bucket, flat, size

    def global_mean_loss(self, loss_fn: Callable) -> Callable:
        """``loss_fn`` (a mean over the batch) weighted so that its sum over ranks is the mean over all ranks'
        samples: the loss given to the redistributor, whose algorithms all-reduce (sum) what they derive from it."""

        def weighted(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            n_local = int(output.shape[0])
            total = self.sum_numbers(n_local)[0]
            if n_local == 0:
                return output.sum() * 0.0
            return loss_fn(output, target) * (n_local / total)

        return weighted

    # ------------------------------------------------------------------ consistency checks
    def check_topology(self, model: torch.nn.Module, when: str = "") -> None:
        """All-gather a hash of every sparse layer's indices (and of all parameters' values); raise
        :class:`TopologyMismatchError` on every rank if the ranks differ. Cheap: one hash pass per layer."""
        from redr.sparse.convert import sparse_layers

        names, rows = [], []
        for name, layer in sparse_layers(model):
            names.append(name or "(the model)")
            rows.append([layer.nnz, _layer_digest(layer.crow, layer.col)])
        values = _layer_digest(*[p for p in model.parameters()])
        mine = torch.tensor([v for row in rows for v in row] + [values], dtype=torch.int64, device=self.device)
        gathered = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(gathered, mine)
        table = [g.tolist() for g in gathered]
        if all(t == table[0] for t in table):
            return
        where = f" {when}" if when else ""
        problems = []
        for i, name in enumerate(names):
            nnz = [t[2 * i] for t in table]
            digests = [t[2 * i + 1] for t in table]
            if len(set(digests)) > 1 or len(set(nnz)) > 1:
                problems.append(f"layer {name}: " + ", ".join(f"rank {r} nnz {nnz[r]} hash {digests[r] & 0xFFFFFFFF:08x}"
                                                         for r in range(self.world_size)))
        if problems:
            raise TopologyMismatchError(
                f"the ranks hold different sparse topologies{where} (this rank: {self.rank}): " + "; ".join(problems)
                + ". Every rank must make the same redistribution choices: an algorithm used a statistic without "
                "all-reducing it, or used randomness other than the redistributor's generator")
        differing = [r for r in range(self.world_size) if table[r][-1] != table[0][-1]]
        raise TopologyMismatchError(
            f"the ranks hold the same topology but different weights{where} (ranks {differing} differ from rank 0): "
            "the gradients or a value update were not identical on every rank")

    def check_same(self, what: str, obj) -> None:
        """Raise :class:`UsageError` on every rank unless ``obj`` (picklable, comparable) is equal on all ranks."""
        seen = self.all_gather_object(obj)
        if any(s != seen[0] for s in seen):
            diff = [r for r in range(self.world_size) if seen[r] != seen[0]]
            raise UsageError(f"the processes disagree on {what} (ranks {diff} differ from rank 0); launch every "
                             "process with the same options and data")


# ---------------------------------------------------------------------------------------------- set-up
def environment() -> Optional[dict]:
    """torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...) when launched with more than one
    process, else None."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return None
    if world <= 1 or "RANK" not in os.environ:
        return None
    return {"rank": int(os.environ["RANK"]), "world_size": world, "local_rank": int(os.environ.get("LOCAL_RANK", 0)),
            "local_world_size": int(os.environ.get("LOCAL_WORLD_SIZE", world))}


def match_threads(threads: Optional[int] = None) -> int:
    """Use ``threads`` (default: torch's current count, which torchrun's ``OMP_NUM_THREADS=1`` sets) in torch and in
    the numba kernels, so that N processes on one machine do not each start one thread per core.

    Order matters: starting numba's OpenMP thread pool resets the OpenMP thread count that torch reports and uses
    (measured: ``OMP_NUM_THREADS=1`` gave torch 2 threads once numba had started), so torch is set last."""
    n = max(1, int(threads)) if threads is not None else torch.get_num_threads()
    try:
        import numba

        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    except ImportError:  # pragma: no cover - numba is a dependency, but keep torch-only use working
        pass
    torch.set_num_threads(n)
    return n


def resolve_device(requested: Optional[str], local_rank: int, local_world_size: int) -> tuple[str, str]:
    """``(backend, device string for the collectives)``: NCCL on ``cuda:LOCAL_RANK``, gloo on the CPU."""
    name = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    kind = torch.device(name).type
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available in this process")
        if torch.device(name).index is not None and local_world_size > 1:
            raise UsageError(f"--device {name}: with several processes per machine give --device cuda "
                             "(process LOCAL_RANK uses cuda:LOCAL_RANK)")
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"process with LOCAL_RANK {local_rank} has no GPU (this machine has "
                             f"{torch.cuda.device_count()}); use --nproc-per-node <= the number of GPUs")
        if torch.device(name).index is None:
            torch.cuda.set_device(local_rank)
        return "nccl", f"cuda:{torch.cuda.current_device()}"
    if kind != "cpu":
        raise UsageError(f"--device {name}: data-parallel training supports cpu (gloo) and cuda (NCCL)")
    return "gloo", "cpu"


def initialize(requested_device: Optional[str] = None, timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> DataParallel:
    """Join the process group described by torchrun's environment (``env://``) and return a :class:`DataParallel`."""
    env = environment()
    if env is None:
        raise UsageError("not launched by torchrun with WORLD_SIZE > 1 (no RANK/WORLD_SIZE in the environment)")
    backend, device = resolve_device(requested_device, env["local_rank"], env["local_world_size"])
    match_threads()
    if not dist.is_initialized():
        _import_before_the_group()
        dist.init_process_group(backend, init_method="env://", timeout=timeout)
    return DataParallel(device)


def _import_before_the_group() -> None:
    """Import ``torch.distributed.nn.functional`` while no process group exists (call before init_process_group).

    Its functions take ``group=group.WORLD`` as a default argument, evaluated at import. Imported after
    init_process_group -- as the first ``torch.optim.Adam`` does, through torch._dynamo -- ten defaults hold the
    default group, so :func:`shutdown` cannot free it: the gloo group and its threads were destroyed only during
    interpreter finalization, where a rank sometimes died of ``terminate called without an active exception``."""
    import torch.distributed.nn.functional  # noqa: F401


def shutdown() -> None:
    """Destroy the process group (freed now, with its gloo threads; see :func:`_import_before_the_group`)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def staged(parallel: DataParallel, fn: Callable, local_rank: int = 0):
    """``fn()`` on global rank 0 first, then on the first process of every machine, then on all others, with
    barriers in between: a download or cache write happens once per file system, never concurrently."""
    result = None
    if parallel.rank == 0:
        result = fn()
    parallel.barrier()
    if parallel.rank != 0 and local_rank == 0:
        result = fn()
    parallel.barrier()
    if parallel.rank != 0 and local_rank != 0:
        result = fn()
    return result


def train(config, out_dir, *, overwrite: bool = False, resume: bool = False, progress: bool = True,
          log: Callable[[str], None] = print, command: Optional[list] = None, parallel: Optional[DataParallel] = None,
          local_rank: Optional[int] = None):
    """:func:`redr.training.trainer.train` in a data-parallel process (the process group already initialised).

    Checks that all ranks run the same configuration into the same directory, loads the data once per file system
    first (:func:`staged`), then trains; only rank 0 writes and logs. Returns the trainer.
    """
    from pathlib import Path

    from redr.training.trainer import check_out_dir, load_data
    from redr.training.trainer import train as train_one

    parallel = parallel or DataParallel()
    if local_rank is None:
        local_rank = (environment() or {}).get("local_rank", parallel.rank)
    same = {k: v for k, v in config.to_dict().items() if k not in ("data_dir", "download")}  # may differ per machine
    parallel.check_same("the run configuration", same)
    parallel.check_same("the output directory", str(out_dir) if out_dir is not None else None)
    if out_dir is not None:
        check_out_dir(Path(out_dir), overwrite, resume)  # fail before loading data (every rank, no side effects)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dataset = staged(parallel, lambda: load_data(config, device, progress and parallel.rank == 0), local_rank)
    # Every rank checked the directory above, before the barriers in staged(); rank 0 may already have written
    # config.json by the time another rank gets here, so the others (which never write) must not refuse it now.
    trainer = train_one(config, out_dir, overwrite=overwrite or (parallel.rank != 0 and not resume), resume=resume,
                        progress=progress,
                        log=log if parallel.rank == 0 else (lambda *_: None), command=command, dataset=dataset,
                        parallel=parallel)
    if parallel.rank == 0 and parallel.steps:
        log(f"data parallel: {parallel.world_size} processes ({parallel.backend}); gradient all-reduce "
            f"{1000 * parallel.comm_seconds / parallel.steps:.2f} ms/step on rank 0 (waits for slower processes included)")
    return trainer


# ---------------------------------------------------------------------------------------------- redr train
def cli_mode(args) -> Optional[str]:
    """``redr train``'s mode: ``"launch"`` (``--nproc N`` > 1: start torchrun), ``"worker"`` (a process started
    by torchrun with ``WORLD_SIZE`` > 1) or None (one process)."""
    nproc = getattr(args, "nproc", None)
    if environment() is not None:
        if nproc is not None:
            raise UsageError("--nproc starts torchrun itself; under torchrun leave --nproc out "
                             "(torchrun's --nproc-per-node sets the number of processes)")
        return "worker"
    if nproc is not None and nproc > 1:
        return "launch"
    return None


def argv_from_namespace(parser, args, drop: Sequence[str] = ("nproc",)) -> list[str]:
    """The command-line arguments that give ``args`` again (options left at their default are left out)."""
    import argparse

    argv: list[str] = []
    for action in parser._actions:
        if not action.option_strings or action.dest in drop or isinstance(action, argparse._HelpAction):
            continue
        value = getattr(args, action.dest, action.default)
        if value is None or value == action.default:
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def launch_cli(args, out) -> int:
    """``redr train --nproc N ...``: check the options and the output directory here, then run
    ``torchrun --standalone --nproc-per-node N -m redr train ... --out <the same directory>``."""
    from pathlib import Path

    from redr.training.trainer import check_out_dir

    nproc = args.nproc
    check_out_dir(Path(out), args.overwrite, bool(args.resume))
    device = getattr(args, "device", None) or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda":
        if torch.device(device).index is not None:
            raise UsageError(f"--nproc {nproc} --device {device}: give --device cuda (process i uses cuda:i)")
        if nproc > torch.cuda.device_count():
            raise UsageError(f"--nproc {nproc}: this machine has {torch.cuda.device_count()} GPU(s); one process per GPU")
    argv = ["train", *argv_from_namespace(args._train_parser, args, drop=("nproc", "out"))]
    if not args.resume:
        argv += ["--out", str(out)]  # one directory for all processes, also when it was chosen here
    print("running: " + " ".join(torchrun_command(nproc, argv)[1:]), file=sys.stderr)
    return launch(nproc, argv)


def train_cli(config, out, **kwargs):
    """``redr train`` in a process started by torchrun: join the group, train, leave."""
    parallel = initialize(config.device)
    try:
        out = parallel.broadcast_object(str(out) if out is not None else None)  # rank 0's (default names hold a time)
        return train(config, out, parallel=parallel, **kwargs)
    finally:
        shutdown()


# ---------------------------------------------------------------------------------------------- launching
def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def torchrun_command(nproc: int, module_args: Sequence[str]) -> list[str]:
    """The torchrun command ``redr train --nproc N`` runs: one machine, ``N`` processes, a free local port."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "redr", *module_args]


def launch(nproc: int, module_args: Sequence[str]) -> int:
    """Run ``torchrun --standalone --nproc-per-node nproc -m redr <module_args>`` and return its exit code.

    Ctrl-C goes to torchrun (same terminal), which forwards it to the workers; they finish the step, save a
    checkpoint and stop. This process only waits."""
    import signal

    if torch.distributed.is_available() is False:  # pragma: no cover
        raise UsageError("this torch build has no torch.distributed")
    cmd = torchrun_command(nproc, module_args)
    # torchrun in its own session: a Ctrl-C reaches it once, forwarded from here, and torchrun forwards it once
    # to every worker (a second signal would make the workers stop without saving)
    proc = subprocess.Popen(cmd, start_new_session=True)
    forwarded = []

    def forward(signum, frame):
        forwarded.append(signal.Signals(signum).name)
        proc.send_signal(signum)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, forward)
        except ValueError:  # not the main thread: signals reach only the main thread anyway
            pass
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if forwarded and code != 0:
        print(f"interrupted ({forwarded[0]}): the processes stopped after the same step and rank 0 saved a "
              "checkpoint; continue with the same command and --resume <out dir>", file=sys.stderr)
        return 130
    return code


def spawn(fn: Callable, nprocs: int, args: tuple = (), backend: str = "gloo", threads: Optional[int] = None,
          timeout: datetime.timedelta = datetime.timedelta(minutes=5)) -> None:
    """Run ``fn(parallel, *args)`` in ``nprocs`` fresh processes on this machine (a process group over
    ``tcp://127.0.0.1:<free port>``), e.g. for tests or notebooks. ``threads`` per process (default: the cores
    divided by ``nprocs``). Raises if any process fails."""
    import torch.multiprocessing as mp

    port = free_port()
    threads = threads or max(1, (os.cpu_count() or 1) // nprocs)
    mp.start_processes(_spawned, args=(fn, nprocs, port, backend, threads, timeout, args), nprocs=nprocs,
                       join=True, start_method="spawn")


def _spawned(rank, fn, nprocs, port, backend, threads, timeout, args):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(nprocs), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(nprocs),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    match_threads(threads)
    _import_before_the_group()
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=nprocs,
                            timeout=timeout)
    try:
        device = None
        if backend == "nccl":
            torch.cuda.set_device(rank)
            device = torch.device("cuda", rank)
        fn(DataParallel(device), *args)
    finally:
        shutdown()
