"""Data-parallel training over ``torch.distributed`` (see docs/distributed.md):

* :mod:`~redr.training.distributed.collectives`: :class:`DataParallel`, the collectives that keep the ranks
  identical (gradient all-reduce, sharded evaluation, topology checks);
* :mod:`~redr.training.distributed.process`: one process joins the group, picks its device, trains;
* :mod:`~redr.training.distributed.launch`: torchrun for ``redr train --nproc N``, :func:`spawn` for tests;
* :mod:`~redr.training.distributed.cli`: the ``redr train`` glue (imported by the CLI only).
"""
from redr.training.distributed.collectives import BUCKET_BYTES, DataParallel, TopologyMismatchError, shard_range
from redr.training.distributed.launch import free_port, launch, spawn, torchrun_command
from redr.training.distributed.process import DEFAULT_TIMEOUT, environment, initialize, process_device, shutdown, staged, train

__all__ = ["BUCKET_BYTES", "DEFAULT_TIMEOUT", "DataParallel", "TopologyMismatchError", "environment", "free_port",
           "initialize", "launch", "process_device", "shutdown", "shard_range", "spawn", "staged", "torchrun_command",
           "train"]
