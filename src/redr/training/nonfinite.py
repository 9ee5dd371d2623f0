"""NaN/inf in a training run: which parameters or gradients, and where they come from (the weights of a
layer, the input batch, or the first layer whose output is not finite), for one-line error messages."""
from __future__ import annotations

import torch

from redr.errors import RedrError


class NonFiniteError(RedrError):
    """A NaN/inf loss or weight; the message names the epoch, the step and the layer."""


def nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]


def nonfinite_gradients(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]


@torch.no_grad()
def diagnose(model: torch.nn.Module, x: torch.Tensor, bad_weights: list[str]) -> str:
    """Where the non-finite numbers come from: the weights of a layer, the input batch, or the first
    layer whose output is not finite."""
    if bad_weights:
        return "non-finite weights in " + ", ".join(f"layer {n.rpartition('.')[0] or n} ({n})" for n in bad_weights)
    if not bool(torch.isfinite(x).all()):
        rows = (~torch.isfinite(x)).any(1).nonzero().squeeze(1).tolist()
        return f"the input batch has NaN/inf in {len(rows)} of its rows (data; first row {rows[0]} of the batch)"
    found = []

    def hook(module, inputs, output, name=None):
        if not found and torch.is_tensor(output) and not bool(torch.isfinite(output).all()):
            shape = f" {module.in_features} -> {module.out_features}" if hasattr(module, "in_features") else ""
            found.append(f"layer {name} ({type(module).__name__}{shape}) is the first with a non-finite output")

    handles = [m.register_forward_hook(lambda mod, i, o, n=name: hook(mod, i, o, n))
               for name, m in model.named_children()]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else "finite forward pass (the loss or a gradient overflowed)"
