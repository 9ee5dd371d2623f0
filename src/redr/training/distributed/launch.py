"""Starting data-parallel processes on this machine: torchrun for ``redr train --nproc N``, or
:func:`spawn` for tests and notebooks."""
from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import sys
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist

from redr.errors import UsageError
from redr.runtime import configure_threads
from redr.training.distributed.collectives import DataParallel
from redr.training.distributed.process import import_before_the_group, shutdown

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
    configure_threads(threads)
    import_before_the_group()
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
