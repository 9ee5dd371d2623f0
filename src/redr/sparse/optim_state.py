"""Make an optimizer's per-parameter state follow a topology change, without patching the optimizer.

Any state tensor shaped like the parameter (Adam's ``exp_avg``/``exp_avg_sq``, SGD's
``momentum_buffer``, ...) is gathered for kept weights and zeroed for new ones; scalars such as
Adam's ``step`` are left alone.
"""
from __future__ import annotations

import torch


def remap_optimizer_state(optimizer: torch.optim.Optimizer, param: torch.Tensor, change) -> None:
    state = optimizer.state.get(param)
    if not state:
        return
    for key in list(state):
        old = state[key]
        if torch.is_tensor(old) and old.dim() >= 1 and old.shape[0] == change.old_nnz and old.shape == param.shape:
            new = old.new_zeros((change.new_nnz,) + tuple(old.shape[1:]))
            new[change.kept_new] = old[change.kept_old]
            state[key] = new
        del old  # one moment's old copy alive at a time, not all of them
