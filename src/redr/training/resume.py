"""Validation of a checkpoint: say what is wrong (which entry, which layer) instead of crashing later.

Three levels, each raising :class:`~redr.training.checkpoint.CheckpointError` with one line:

* :func:`validate_model_state`: a model state dict against a model of the run's architecture: the same
  entries; dense tensors of the same shapes; for every sparse layer a valid CSR structure (``crow`` of
  ``out + 1`` non-decreasing offsets from 0 to nnz, column indices in range, sorted, no duplicates,
  ``values`` of length nnz); every number finite. Used by :func:`redr.load_checkpoint` too.
* :func:`validate_checkpoint`: a whole training checkpoint against the :class:`Trainer` that resumes
  it: the model as above; the optimizer (one state per parameter, every per-weight state tensor as long
  as the layer's nnz); the generators; epoch/step ranges; metrics rows ``1..epoch`` whose nnz columns
  match the layers; the redistributor's state (an algorithm's Fisher statistics of the same nnz).
* :func:`config_differences`: the saved config against the requested one (a :class:`UsageError`).
"""
from __future__ import annotations

import torch

from redr.errors import UsageError
from redr.sparse.convert import sparse_layers
from redr.sparse.validate import validate_csr
from redr.training.checkpoint import CheckpointError
from redr.training.config import with_legacy_defaults

REQUIRED = ("config", "epoch", "step_in_epoch", "model", "optimizer", "generators", "rng", "metrics")

#: Config fields that may differ on resume: they do not change what is computed (where the data files
#: are, whether to download them) or only decide what happens on a NaN/inf (resume a run stopped by a
#: non-finite loss with ``--on-nonfinite skip-batch``).
RESUMABLE_CHANGES = ("data_dir", "download", "on_nonfinite")


def _fail(msg: str):
    raise CheckpointError(msg)


def validate_model_state(model_state, model: torch.nn.Module) -> None:
    if not isinstance(model_state, dict):
        _fail(f"model state is a {type(model_state).__name__}, expected a dict of tensors")
    expected = model.state_dict()
    if set(model_state) != set(expected):
        extra, lacking = sorted(set(model_state) - set(expected)), sorted(set(expected) - set(model_state))
        _fail("model does not match the run's architecture"
              + (f"; unexpected entries {extra[:4]}" if extra else "") + (f"; missing entries {lacking[:4]}" if lacking else ""))
    for name, value in model_state.items():
        if not torch.is_tensor(value):
            _fail(f"model entry {name} is a {type(value).__name__}, expected a tensor")
    sparse_keys = set()
    for name, layer in sparse_layers(model):
        prefix = f"{name}." if name else ""
        sparse_keys |= {prefix + "values", prefix + "crow", prefix + "col"}
        label = f"layer {name or '<root>'} ({layer.in_features} -> {layer.out_features})"
        values, crow, col = model_state[prefix + "values"], model_state[prefix + "crow"], model_state[prefix + "col"]
        if not values.is_floating_point() or crow.is_floating_point() or col.is_floating_point():
            _fail(f"{label}: values must be floating point and crow/col integer, got {values.dtype}, {crow.dtype}, {col.dtype}")
        try:
            validate_csr(crow, col, values, (layer.out_features, layer.in_features), name=label)
        except ValueError as exc:
            _fail(str(exc))
    for name, value in model_state.items():
        if name in sparse_keys:
            continue
        ref = expected[name]
        if tuple(value.shape) != tuple(ref.shape):
            _fail(f"model entry {name}: shape {tuple(value.shape)} in the checkpoint, the run's model has {tuple(ref.shape)}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            _fail(f"model entry {name} contains NaN or inf")


def _parameter_names(model: torch.nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()]


def validate_optimizer_state(opt_state, model_state: dict, model: torch.nn.Module) -> None:
    if not isinstance(opt_state, dict) or "state" not in opt_state or "param_groups" not in opt_state:
        _fail("optimizer state is not an optimizer state_dict (needs 'state' and 'param_groups')")
    names = _parameter_names(model)
    in_groups = [i for g in opt_state["param_groups"] for i in g.get("params", [])]
    if sorted(in_groups) != list(range(len(names))):
        _fail(f"optimizer state covers {len(in_groups)} parameters, the model has {len(names)}")
    for idx, entry in opt_state["state"].items():
        if not isinstance(idx, int) or not 0 <= idx < len(names):
            _fail(f"optimizer state for unknown parameter index {idx!r}")
        pname = names[idx]
        size = tuple(model_state[pname].shape)
        for key, value in entry.items():
            if torch.is_tensor(value) and value.dim() > 0:
                if tuple(value.shape) != size:
                    what = "nnz" if pname.endswith("values") else "shape"
                    _fail(f"optimizer state {key!r} of {pname} has shape {tuple(value.shape)}, the parameter {size} "
                          f"({what} inconsistent)")
                if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    _fail(f"optimizer state {key!r} of {pname} contains NaN or inf")


def _find_nnz_lists(obj, path=""):
    """(path, list) of every ``nnz`` entry in an algorithm state (e.g. a Fisher's per-layer layout)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "nnz" and isinstance(v, (list, tuple)):
                yield f"{path}.{k}".lstrip("."), list(v)
            else:
                yield from _find_nnz_lists(v, f"{path}.{k}")


def validate_checkpoint(state: dict, trainer) -> None:
    """Everything :meth:`Trainer.load_state_dict` relies on (see the module docstring)."""
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        _fail(f"incomplete checkpoint: missing {', '.join(missing)}")
    config = trainer.config
    validate_model_state(state["model"], trainer.model)
    model_state = state["model"]
    validate_optimizer_state(state["optimizer"], model_state, trainer.model)
    nnz = {name: int(model_state[(f"{name}." if name else "") + "values"].numel()) for name, _ in sparse_layers(trainer.model)}

    epoch, step = state["epoch"], state["step_in_epoch"]
    if not isinstance(epoch, int) or not 0 <= epoch <= config.epochs:
        _fail(f"checkpoint epoch {epoch!r} outside 0..{config.epochs}")
    if not isinstance(step, int) or step < 0 or (step > 0 and epoch >= config.epochs):
        _fail(f"checkpoint step {step!r} is not a valid position inside epoch {epoch + 1}")
    if step > 0 and not torch.is_tensor(state.get("epoch_data_state")):
        _fail("mid-epoch checkpoint without the data order of its epoch (epoch_data_state)")

    gens = state["generators"]
    if not isinstance(gens, dict) or set(gens) != set(trainer.generators):
        _fail(f"generators {sorted(gens) if isinstance(gens, dict) else gens!r}, expected {sorted(trainer.generators)}")
    for name, gstate in gens.items():
        size = trainer.generators[name].get_state().numel()
        if not torch.is_tensor(gstate) or gstate.dtype != torch.uint8 or gstate.numel() != size:
            _fail(f"generator state {name!r} is not a CPU generator state ({size} bytes)")

    metrics = state["metrics"]
    if not isinstance(metrics, list) or len(metrics) != epoch:
        _fail(f"{len(metrics) if isinstance(metrics, list) else metrics!r} metrics rows for {epoch} finished epochs")
    for i, row in enumerate(metrics, 1):
        if not isinstance(row, dict) or row.get("epoch") != i:
            _fail(f"metrics row {i} is not epoch {i}")
    if metrics:  # the nnz after the last epoch's redistribution = the nnz of the saved layers
        for name, n in nnz.items():
            saved = metrics[-1].get(f"nnz[{name}]")
            if saved is not None and saved != n:
                _fail(f"layer {name}: {n} active weights, but metrics row {epoch} recorded {saved} (nnz inconsistent)")

    if trainer.redistributor is not None:
        red = state.get("redistributor")
        if not isinstance(red, dict) or not {"generator", "algorithm", "history"} <= set(red):
            _fail("sparse run without the redistributor's state (generator, algorithm, history)")
        layer_nnz = list(nnz.values())
        for where, saved in _find_nnz_lists(red["algorithm"]):
            if saved != layer_nnz:
                _fail(f"redistribution state {where} = {saved} does not match the layers' nnz {layer_nnz}")
        if len(red["history"]) > epoch:
            _fail(f"{len(red['history'])} redistributions recorded after {epoch} epochs")


def config_differences(saved: dict, requested: dict, ignore=RESUMABLE_CHANGES) -> list[str]:
    saved = with_legacy_defaults(saved)  # options added since the run was saved: as the code then behaved
    keys = sorted((set(saved) | set(requested)) - set(ignore))
    return [f"{k}: saved {saved.get(k)!r}, requested {requested.get(k)!r}" for k in keys if saved.get(k) != requested.get(k)]


def check_resume_config(saved: dict, requested: dict, where) -> list[str]:
    """Raise a UsageError naming every difference that matters; return the allowed changes (to log)."""
    diff = config_differences(saved, requested)
    if diff:
        raise UsageError(f"--resume {where}: the requested config differs from the saved one ({'; '.join(diff)}); "
                         "resume with the same options, or start a new run in another --out")
    return [f"{k}: {saved.get(k)!r} -> {requested.get(k)!r}" for k in RESUMABLE_CHANGES if saved.get(k) != requested.get(k)]
