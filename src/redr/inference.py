"""Use a trained run without the trainer: load a checkpoint for inference, export it for plain PyTorch.

    model, config = redr.load_checkpoint("runs/my-run")          # newest usable checkpoint, eval mode
    logits = model(x)                                            # x: (batch, features) floats
    state = redr.export_dense_state_dict(model)                  # nn.Linear-shaped weights

``load_checkpoint`` validates what it reads (format version, checksum, layer shapes, CSR index ranges,
no duplicate indices, finite values) and raises a :class:`~redr.training.checkpoint.CheckpointError`
that names the file and the problem. The model outputs logits: ``softmax`` for the image datasets,
``sigmoid`` of the single output for HIGGS.

``export_dense_state_dict`` turns every :class:`~redr.sparse.SparseLinear` (:class:`~redr.sparse.SparseConv2d`)
into the ``weight`` (zeros at inactive positions) and ``bias`` of an ``nn.Linear`` (``nn.Conv2d``) of the
same shape; other entries are copied.
The result loads into the dense MLP of the same layer sizes (``nn.Sequential`` of ``nn.Linear`` and
``nn.ReLU`` with the same indices), e.g. built by :func:`dense_mlp`.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import torch
from torch import nn

from redr.errors import UsageError
from redr.sparse.conv_net import build_cnn
from redr.sparse.convert import build_mlp
from redr.sparse.layer import SparseLinear
from redr.sparse.matrix import SparseMatrixModule
from redr.training import checkpoint
from redr.training.config import MODEL_KINDS, RunConfig
from redr.training.resume import validate_model_state

__all__ = ["LoadedCheckpoint", "dense_mlp", "export_dense_state_dict", "load_checkpoint"]


class LoadedCheckpoint(NamedTuple):
    model: nn.Module  # in eval mode, on the requested device
    config: RunConfig  # the run's configuration (options as trained)


def _model_for(state: dict) -> tuple[nn.Module, RunConfig]:
    """An untrained model with the checkpoint's architecture (its values are loaded afterwards)."""
    raw = state.get("config")
    if not isinstance(raw, dict):
        raise checkpoint.CheckpointError("the checkpoint holds no config")
    config = RunConfig.from_dict(raw)
    sizes = state.get("sizes")
    if not isinstance(sizes, list) or len(sizes) < 2 or any(not isinstance(s, int) or s < 1 for s in sizes):
        raise checkpoint.CheckpointError(f"the checkpoint holds no valid layer sizes (sizes={sizes!r})")
    if config.model not in MODEL_KINDS:
        raise checkpoint.CheckpointError(f"unknown model kind {config.model!r} in the checkpoint's config")
    try:  # the one validation of density / distribution / fan-in, and the layers they give
        if config.arch == "cnn":  # --arch cnn: sizes are [features, outputs]
            model = build_cnn(sizes[0], sizes[-1], dense_last=bool(config.dense_last),
                              distribution=config.layer_distribution() if config.model == "sparse" else None,
                              generator=torch.Generator().manual_seed(0))
            return model, config
        model = build_mlp(sizes, dense_last=bool(config.dense_last),
                          distribution=config.layer_distribution() if config.model == "sparse" else None,
                          generator=torch.Generator().manual_seed(0),
                          backend=config.backend if config.backend in ("auto", "numba", "torch", "dense") else "auto")
    except UsageError as exc:
        raise checkpoint.CheckpointError(f"the checkpoint's config cannot be built: {exc}") from None
    return model, config


def load_checkpoint(path_or_dir: str | os.PathLike, device="cpu") -> LoadedCheckpoint:
    """The trained model of a run directory (its newest usable checkpoint) or of one checkpoint file.

    Returns ``(model, config)``: the model in eval mode on ``device`` and the run's :class:`RunConfig`.
    A corrupt newest checkpoint of a directory falls back to the previous one with a
    :class:`~redr.training.checkpoint.CheckpointFallbackWarning`.
    """
    built = {}

    def validate(state: dict) -> None:
        model, config = _model_for(state)
        validate_model_state(state.get("model"), model)
        model.load_state_dict(state["model"])
        built["result"] = (model, config)

    checkpoint.load(path_or_dir, validate=validate, map_location="cpu")
    model, config = built["result"]
    return LoadedCheckpoint(model.to(device).eval(), config)


@torch.no_grad()
def export_dense_state_dict(source: nn.Module | str | os.PathLike) -> dict[str, torch.Tensor]:
    """A plain state dict in which every sparse layer is an ``nn.Linear`` or ``nn.Conv2d`` (``weight``, ``bias``).

    ``source``: a model, or a checkpoint file / run directory (loaded with :func:`load_checkpoint`).
    Tensors are copies (on the model's device); entry order follows the model's own state dict.
    """
    model = source if isinstance(source, nn.Module) else load_checkpoint(source).model
    sparse = {name: m for name, m in model.named_modules() if isinstance(m, SparseMatrixModule)}
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        layer = sparse.get(prefix)
        if layer is None:
            out[key] = value.detach().clone()
        elif leaf == "values":
            out[(prefix + "." if prefix else "") + "weight"] = layer.to_dense().clone()
        elif leaf == "bias":
            out[key] = value.detach().clone()
        # crow / col: the structure is in the dense weight's zeros
    return out


def dense_mlp(source: nn.Module | str | os.PathLike) -> nn.Sequential:
    """The equivalent dense ``nn.Sequential`` (``nn.Linear`` + ``nn.ReLU``) with the exported weights."""
    model = source if isinstance(source, nn.Module) else load_checkpoint(source).model
    layers = []
    for module in model.children() if isinstance(model, nn.Sequential) else []:
        if isinstance(module, SparseLinear):
            layers.append(nn.Linear(module.in_features, module.out_features, bias=module.bias is not None))
        elif isinstance(module, nn.Linear):
            layers.append(nn.Linear(module.in_features, module.out_features, bias=module.bias is not None))
        elif isinstance(module, nn.ReLU):
            layers.append(nn.ReLU())
        else:
            raise TypeError(f"dense_mlp handles nn.Sequential MLPs (Linear/SparseLinear and ReLU), found {type(module).__name__}")
    if not layers:
        raise TypeError("dense_mlp needs an nn.Sequential MLP (as built by redr.build_mlp)")
    dense = nn.Sequential(*layers)
    dense.load_state_dict(export_dense_state_dict(model))
    device = next(model.parameters()).device
    return dense.to(device).eval()
