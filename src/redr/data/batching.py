"""Mini-batches as index tensors over whole-dataset tensors (no DataLoader, no per-sample Python loop).

One permutation per epoch is drawn on the CPU from the caller's generator, so a CPU and a CUDA run, or a
1-process and an N-process run, see the same samples in the same order. In a data-parallel run every rank
takes a contiguous slice of each *global* batch: rank r's slices, over all ranks, concatenate to exactly the
1-process batches. To get the same gradients as the 1-process run, sum each rank's per-sample losses and divide
by the global batch size (slices can differ by one sample when the batch size is not a multiple of the ranks).
"""
from __future__ import annotations

from typing import List

import torch

from redr.errors import UsageError


def batch_indices(
    num_rows: int,
    batch_size: int,
    generator: torch.Generator | None,
    shuffle: bool = True,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    device="cpu",
) -> List[torch.Tensor]:
    """This rank's index tensors (int64, on ``device``) for one epoch, one per global batch.

    Every rank gets the same number of batches (collectives stay in step); a rank's slice of a short last
    batch may be empty when it has fewer rows than ``world_size`` -- use ``drop_last`` to avoid that.
    """
    for name, value, low in (("num_rows", num_rows, 0), ("batch_size", batch_size, 1), ("world_size", world_size, 1)):
        if not isinstance(value, int) or value < low:
            raise UsageError(f"{name} must be an integer >= {low}, got {value!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise UsageError(f"rank must be in 0..{world_size - 1}, got {rank!r}")
    if shuffle:
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise UsageError("batch_indices needs a CPU torch.Generator to shuffle (so every device sees one order)")
        order = torch.randperm(num_rows, generator=generator)
    else:
        order = torch.arange(num_rows)
    order = order.to(device)
    batches = list(order.split(batch_size))
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    if world_size == 1:
        return batches
    return [batch.tensor_split(world_size)[rank] for batch in batches]
