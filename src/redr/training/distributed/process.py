"""One data-parallel process: join the process group torchrun describes, pick its device and threads, train,
leave (see :mod:`redr.training.distributed.collectives` for what keeps the ranks identical)."""
from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist

from redr.errors import UsageError
from redr.runtime import configure_threads, resolve_device
from redr.training.api import train as train_one
from redr.training.distributed.collectives import DataParallel
from redr.training.rundir import check_out_dir
from redr.training.trainer import load_data

#: How long a collective may wait for the other ranks before the run fails.
DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)


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


def process_device(requested: Optional[str], local_rank: int, local_world_size: int) -> tuple[str, str]:
    """``(backend, device string for the collectives)``: NCCL on ``cuda:LOCAL_RANK``, gloo on the CPU."""
    device = resolve_device(requested)  # the default and the checks every run has
    name = requested or device.type
    if device.type == "cuda":
        if device.index is not None and local_world_size > 1:
            raise UsageError(f"--device {name}: with several processes per machine give --device cuda "
                             "(process LOCAL_RANK uses cuda:LOCAL_RANK)")
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"process with LOCAL_RANK {local_rank} has no GPU (this machine has "
                             f"{torch.cuda.device_count()}); use --nproc-per-node <= the number of GPUs")
        if device.index is None:
            torch.cuda.set_device(local_rank)
        return "nccl", f"cuda:{torch.cuda.current_device()}"
    return "gloo", "cpu"


def initialize(requested_device: Optional[str] = None, timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> DataParallel:
    """Join the process group described by torchrun's environment (``env://``) and return a :class:`DataParallel`."""
    env = environment()
    if env is None:
        raise UsageError("not launched by torchrun with WORLD_SIZE > 1 (no RANK/WORLD_SIZE in the environment)")
    backend, device = process_device(requested_device, env["local_rank"], env["local_world_size"])
    # torchrun's OMP_NUM_THREADS (1) for torch and numba alike: N processes must not each use every core
    configure_threads(torch.get_num_threads())
    if not dist.is_initialized():
        import_before_the_group()
        dist.init_process_group(backend, init_method="env://", timeout=timeout)
    return DataParallel(device)


def import_before_the_group() -> None:
    """Import ``torch.distributed.nn.functional`` while no process group exists (call before init_process_group).

    Its functions take ``group=group.WORLD`` as a default argument, evaluated at import. Imported after
    init_process_group -- as the first ``torch.optim.Adam`` does, through torch._dynamo -- ten defaults hold the
    default group, so :func:`shutdown` cannot free it: the gloo group and its threads were destroyed only during
    interpreter finalization, where a rank sometimes died of ``terminate called without an active exception``."""
    import torch.distributed.nn.functional  # noqa: F401


def shutdown() -> None:
    """Destroy the process group (freed now, with its gloo threads; see :func:`import_before_the_group`)."""
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
    """:func:`redr.training.api.train` in a data-parallel process (the process group already initialised).

    Checks that all ranks run the same configuration into the same directory, loads the data once per file system
    first (:func:`staged`), then trains; only rank 0 writes and logs. Returns the trainer.
    """
    parallel = parallel or DataParallel()
    if local_rank is None:
        local_rank = (environment() or {}).get("local_rank", parallel.rank)
    same = {k: v for k, v in config.to_dict().items() if k not in ("data_dir", "download")}  # may differ per machine
    parallel.check_same("the run configuration", same)
    parallel.check_same("the output directory", str(out_dir) if out_dir is not None else None)
    if out_dir is not None:
        check_out_dir(Path(out_dir), overwrite, resume)  # fail before loading data (every rank, no side effects)
    device = resolve_device(config.device)
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
