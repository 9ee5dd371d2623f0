"""The small CNN of ``redr train --arch cnn`` (LeNet/VGG-style, for 28x28 grey images such as Fashion-MNIST).

    input (N, 784) -> (N, 1, 28, 28)
    conv1  1 -> 32, 3x3, padding 1, ReLU, max-pool 2   (28 -> 14)
    conv2 32 -> 64, 3x3, padding 1, ReLU, max-pool 2   (14 -> 7)
    fc1   64*7*7 = 3136 -> 128, ReLU
    fc2   128 -> classes (logits)

The first convolution stays dense by default: it holds 288 of the net's ~421k weights, and each of its
channels has only 9 possible inputs (at density 0.1 one input per channel: a very lossy layer for no saving).
Every other layer is sparse, topology from the run's distribution over those layers; ``dense_last`` keeps
``fc2`` dense too, as for the MLPs. Dense layers use the paper's init (``+-1/k``, bias ``+-1/sqrt(k)``, ``k``
the fan-in), drawn from the given generator, so the dense twin and the sparse net are reproducible alike.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from redr.errors import UsageError
from redr.sparse.init import neuron_bounds, uniform_
from redr.sparse.sparsify import sparsify

__all__ = ["ARCHS", "build_cnn"]

#: The architectures ``redr train --arch`` builds.
ARCHS = ("mlp", "cnn")


def _init_dense_(module: nn.Module, generator: torch.Generator | None, init: str) -> nn.Module:
    """A dense layer's values by ``init`` (:func:`~redr.sparse.init.neuron_bounds`), ``k`` = its fan-in
    (``in_channels * kh * kw`` for a convolution)."""
    w_bound, b_bound = (float(b[0]) for b in neuron_bounds(torch.tensor([module.weight[0].numel()]), init))
    uniform_(module.weight, w_bound, generator)
    if module.bias is not None:
        uniform_(module.bias, b_bound, generator)
    return module


def build_cnn(num_features: int, num_outputs: int, density: float | None = None, *, distribution=None,
              fan_in: int | None = None, dense_first: bool = True, dense_last: bool = False,
              generator: torch.Generator | None = None, backend: str = "auto", device=None,
              init: str | None = None) -> nn.Sequential:
    """The CNN above for square one-channel images of ``num_features`` pixels; dense without a density.

    ``init``: the values rule of every layer; by default ``paper`` for a sparse net (its dense layers too) and
    ``kaiming`` (PyTorch's own rule) for the dense twin, as :func:`~redr.sparse.convert.build_mlp`.

    Layers are named by their index in the ``nn.Sequential``: ``"1"`` (conv1), ``"4"`` (conv2), ``"8"`` (fc1),
    ``"10"`` (fc2).
    """
    side = math.isqrt(num_features)
    if side * side != num_features or side % 4:
        raise UsageError(f"--arch cnn needs square one-channel images with a side divisible by 4 (e.g. 28x28 = 784 "
                         f"features), got {num_features} features; use --arch mlp for this dataset")
    layers = [nn.Unflatten(1, (1, side, side)),
              nn.Conv2d(1, 32, 3, padding=1, device=device), nn.ReLU(), nn.MaxPool2d(2),
              nn.Conv2d(32, 64, 3, padding=1, device=device), nn.ReLU(), nn.MaxPool2d(2),
              nn.Flatten(), nn.Linear(64 * (side // 4) ** 2, 128, device=device), nn.ReLU(),
              nn.Linear(128, num_outputs, device=device)]
    sparse = not (density is None and distribution is None and fan_in is None)
    init = init or ("paper" if sparse else "kaiming")
    for layer in layers:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            _init_dense_(layer, generator, init)
    model = nn.Sequential(*layers)
    if not sparse:
        return model
    keep = (["1"] if dense_first else []) + (["10"] if dense_last else [])
    return sparsify(model, density, keep_dense=keep, generator=generator, backend=backend,
                    distribution=distribution, fan_in=fan_in, init=init)
