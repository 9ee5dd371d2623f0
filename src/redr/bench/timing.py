"""The timed step of ``redr bench layer`` (linear and convolution layers alike)."""
from __future__ import annotations

import time

import torch
from torch import nn

from redr.bench.common import sync


def step(layer: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> None:
    """What training does to a layer: forward, then backward of the input, weights/values and bias (grads reset first)."""
    x.grad = None
    for p in layer.parameters():
        p.grad = None
    layer(x).backward(grad_out)


def time_layers(layers: dict, x: torch.Tensor, grad_out: torch.Tensor, warmup: int, repeats: int, device) -> dict:
    """Milliseconds of ``repeats`` steps of every layer after ``warmup`` rounds, all layers in each round (so a change
    in machine load hits all of them alike)."""
    times = {name: [] for name in layers}
    for round_ in range(warmup + repeats):
        for name, layer in layers.items():
            sync(device)
            start = time.perf_counter()
            step(layer, x, grad_out)
            sync(device)
            if round_ >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return times
