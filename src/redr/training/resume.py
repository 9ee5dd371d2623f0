"""Validation of a checkpoint against the run that loads it: say what is wrong instead of crashing later."""
from __future__ import annotations

import torch

from redr.sparse.convert import sparse_layers
from redr.sparse.validate import validate_csr
from redr.training.checkpoint import CheckpointError

REQUIRED = ("config", "epoch", "step_in_epoch", "model", "optimizer", "generators", "rng", "metrics")


def validate_checkpoint(state: dict, trainer) -> None:
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"incomplete checkpoint: missing {', '.join(missing)}")
    model_state = state["model"]
    expected = set(trainer.model.state_dict())
    if set(model_state) != expected:
        extra, lacking = sorted(set(model_state) - expected), sorted(expected - set(model_state))
        raise CheckpointError(f"model does not match the run's architecture (unexpected {extra[:4]}, missing {lacking[:4]})")
    for name, layer in sparse_layers(trainer.model):
        prefix = f"{name}." if name else ""
        values = model_state[prefix + "values"]
        validate_csr(model_state[prefix + "crow"], model_state[prefix + "col"], values,
                     (layer.out_features, layer.in_features), name=name or "layer")
    for name, param in trainer.model.named_parameters():
        if name.endswith("values") or name not in model_state:
            continue
        if tuple(model_state[name].shape) != tuple(param.shape):
            raise CheckpointError(f"{name}: shape {tuple(model_state[name].shape)} in the checkpoint, the model has {tuple(param.shape)}")
    names = [n for n, _ in trainer.model.named_parameters()]
    opt_state = state["optimizer"].get("state", {})
    for idx, entry in opt_state.items():
        pname = names[idx] if isinstance(idx, int) and idx < len(names) else None
        if pname is None:
            raise CheckpointError(f"optimizer state for unknown parameter index {idx}")
        size = model_state[pname].shape
        for key, value in entry.items():
            if torch.is_tensor(value) and value.dim() > 0 and tuple(value.shape) != tuple(size):
                raise CheckpointError(f"optimizer state {key!r} of {pname} has shape {tuple(value.shape)}, "
                                      f"the parameter {tuple(size)} (nnz inconsistent)")
    if not 0 <= state["epoch"] <= trainer.config.epochs:
        raise CheckpointError(f"checkpoint epoch {state['epoch']} outside 0..{trainer.config.epochs}")
