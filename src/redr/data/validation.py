"""A validation split carved from the training rows, so that settings are chosen without looking at the test set.

The held-out rows are drawn once from a fixed seed (not the run's): every run, whatever its seed or
settings, is compared on the same rows, and none of them is ever trained on.
"""
from __future__ import annotations

import dataclasses

import torch

from redr.errors import UsageError

#: The seed of the held-out rows' draw (fixed, see above).
VALIDATION_SEED = 16


def hold_out(data, rows: int):
    """``data`` (a :class:`~redr.data.dataset.Dataset`) with ``rows`` random training rows moved to ``val_x``/``val_y``."""
    n = int(data.train_x.shape[0])
    if not 1 <= rows < n:
        raise UsageError(f"--validation-rows {rows} must leave training rows: use 1 to {n - 1} (the run has {n})")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    held, kept = (part.sort().values.to(data.train_x.device) for part in (order[:rows], order[rows:]))
    info = dict(data.info)
    info["validation"] = {"rows": rows, "from": f"the {n} training rows", "seed": VALIDATION_SEED,
                          "train_rows_left": n - rows}
    return dataclasses.replace(data, train_x=data.train_x[kept], train_y=data.train_y[kept],
                               val_x=data.train_x[held], val_y=data.train_y[held], info=info)
