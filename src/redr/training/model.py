"""The network of a run and its optimizer: the sparse net or a dense baseline of ``config.model``, with the
counts the paper compares (:class:`ModelSummary`), and Adam."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from redr.sparse.convert import build_mlp, count_parameters, count_weights, parameter_equivalent_sizes, sparse_layers
from redr.training.config import RunConfig


def make_adam(params, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam (the paper's optimizer). The fused implementation where torch has one for the device: on the
    CPU it measured 3-7x faster than the per-parameter loop (for the sparse and the dense nets alike)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch, or a device without a fused kernel
        return torch.optim.Adam(params, lr=lr)


@dataclass
class ModelSummary:
    sizes: list
    weights: int
    parameters: int
    sparse_weights: int  # the sparse net's connections at this density (what param-eq matches)
    neuron_equivalent_weights: int
    parameter_equivalent_sizes: list
    parameter_equivalent_weights: int
    layer_densities: list

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def build_model(config: RunConfig, num_features: int, num_outputs: int, generator: torch.Generator, device):
    """The model of ``config.model`` and a summary with the counts the paper compares."""
    if config.arch != "mlp":
        return build_cnn_model(config, num_features, num_outputs, generator, device)
    sizes = config.sizes(num_features, num_outputs)
    config.check_layer_sizes(sizes)
    sparse = build_mlp(sizes, dense_last=config.dense_last, distribution=config.layer_distribution(),
                       generator=generator, backend=config.backend, device=device, init=config.init)
    sparse_weights = count_weights(sparse)
    param_sizes = parameter_equivalent_sizes(sizes, sparse_weights)
    if config.model == "sparse":
        model = sparse
    else:
        del sparse
        model = build_mlp(sizes if config.model == "dense-neuron" else param_sizes, None, generator=generator, device=device,
                          init=config.init)
    dims = list(zip(sizes[:-1], sizes[1:]))
    summary = ModelSummary(
        sizes=sizes if config.model != "dense-param" else param_sizes,
        weights=count_weights(model), parameters=count_parameters(model), sparse_weights=sparse_weights,
        neuron_equivalent_weights=sum(a * b for a, b in dims), parameter_equivalent_sizes=param_sizes,
        parameter_equivalent_weights=sum(a * b for a, b in zip(param_sizes[:-1], param_sizes[1:])),
        layer_densities=[round(layer.density, 6) for _, layer in sparse_layers(model)])
    return model, summary


def build_cnn_model(config: RunConfig, num_features: int, num_outputs: int, generator: torch.Generator, device):
    """``--arch cnn`` (:mod:`redr.sparse.conv_net`): the sparse CNN, or its dense twin (``--model dense-neuron``)."""
    from redr.errors import UsageError
    from redr.sparse.conv_net import ARCHS, build_cnn

    if config.arch not in ARCHS:
        raise UsageError(f"unknown --arch {config.arch!r}; choose one of {', '.join(ARCHS)}")
    if config.model == "dense-param":
        raise UsageError("--model dense-param sizes an MLP; with --arch cnn use --model dense-neuron (the dense twin)")
    sparse = build_cnn(num_features, num_outputs, distribution=config.layer_distribution(), dense_last=config.dense_last,
                       generator=generator, backend=config.backend, device=device, init=config.init)
    sparse_weights = count_weights(sparse)
    if config.model == "sparse":
        model = sparse
    else:
        del sparse
        model = build_cnn(num_features, num_outputs, generator=generator, device=device, init=config.init)
    weights = count_weights(model)
    summary = ModelSummary(sizes=[num_features, num_outputs], weights=weights, parameters=count_parameters(model),
                           sparse_weights=sparse_weights, neuron_equivalent_weights=count_weights(
                               build_cnn(num_features, num_outputs, generator=torch.Generator().manual_seed(0))),
                           parameter_equivalent_sizes=[], parameter_equivalent_weights=0,
                           layer_densities=[round(layer.density, 6) for _, layer in sparse_layers(model)])
    return model, summary
