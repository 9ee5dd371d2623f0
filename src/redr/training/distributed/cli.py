"""``redr train`` with several processes: which mode this process is in, and the torchrun command that
``--nproc N`` runs (the user's own arguments, minus ``--nproc`` and ``--out``)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from redr.errors import UsageError
from redr.runtime import resolve_device
from redr.training.distributed.launch import launch, torchrun_command
from redr.training.distributed.process import environment, initialize, shutdown, train
from redr.training.rundir import check_out_dir

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


def without_options(argv: Sequence[str], options: Sequence[str]) -> list[str]:
    """``argv`` (already accepted by the parser) without ``options`` and the one value each takes, however they
    were written: ``--nproc 2``, ``--nproc=2`` or a prefix argparse accepts, ``--np 2``. Accepted means a prefix
    was unambiguous, so any option-like token that begins one of ``options`` is that option."""
    kept: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        name, has_value, _ = token.partition("=")
        if name.startswith("--") and len(name) > 2 and any(option.startswith(name) for option in options):
            if not has_value:
                next(tokens, None)
            continue
        kept.append(token)
    return kept


def launch_cli(args, out, argv: Sequence[str]) -> int:
    """``redr train --nproc N ...``: check the options and the output directory here, then run
    ``torchrun --standalone --nproc-per-node N -m redr train ... --out <the same directory>`` with the user's
    own ``redr train`` arguments ``argv`` (less ``--nproc`` and ``--out``)."""
    nproc = args.nproc
    check_out_dir(Path(out), args.overwrite, bool(args.resume))
    device = resolve_device(args.device)
    if device.type == "cuda":
        if device.index is not None:
            raise UsageError(f"--nproc {nproc} --device {args.device}: give --device cuda (process i uses cuda:i)")
        if nproc > torch.cuda.device_count():
            raise UsageError(f"--nproc {nproc}: this machine has {torch.cuda.device_count()} GPU(s); one process per GPU")
    worker_argv = ["train", *without_options(argv, ("--nproc", "--out"))]
    if not args.resume:
        worker_argv += ["--out", str(out)]  # one directory for all processes, also when it was chosen here
    print("running: " + " ".join(torchrun_command(nproc, worker_argv)[1:]), file=sys.stderr)
    return launch(nproc, worker_argv)


def train_cli(config, out, **kwargs):
    """``redr train`` in a process started by torchrun: join the group, train, leave."""
    parallel = initialize(config.device)
    try:
        out = parallel.broadcast_object(str(out) if out is not None else None)  # rank 0's (default names hold a time)
        return train(config, out, parallel=parallel, **kwargs)
    finally:
        shutdown()
