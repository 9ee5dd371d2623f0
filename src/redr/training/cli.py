"""``redr train``: train one network (sparse with redistribution, or a dense baseline)."""
from __future__ import annotations

import argparse
import dataclasses
import warnings
from datetime import datetime
from pathlib import Path

from redr.cli_types import integer
from redr.errors import UsageError
from redr.sparse.distribution import DISTRIBUTIONS
from redr.training.config import DATASET_NAMES, MODEL_KINDS, PRESETS, RunConfig

#: CLI flag -> algorithm option (only the algorithms that take an option accept it)
ALGORITHM_FLAGS = {"block_size": int, "dampening": float, "tile_rows": int, "neuron_fraction": float,
                   "min_weights_per_layer": int, "min_layer_fraction": float,
                   "growth": str, "candidates": float}
AUGMENT_FLAGS = {"aug_degrees": ("degrees", float), "aug_translate": ("translate", float),
                 "aug_scale": ("scale", float), "aug_shear": ("shear", float)}


def _field_default(name: str):
    return next(f.default for f in dataclasses.fields(RunConfig) if f.name == name)


def _text(value) -> str:
    if value is None:
        return "all"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


def _preset_default(name: str) -> str:
    """``(default ...)`` of an option that the preset fills: the one value, or each preset's."""
    values = {preset: options[name] for preset, options in PRESETS.items()}
    if len({_text(v) for v in values.values()}) == 1:
        return f"(default {_text(next(iter(values.values())))})"
    return "(default: the preset's: " + ", ".join(f"{p} {_text(v)}" for p, v in values.items()) + ")"


def add_parser(subparsers) -> None:
    from redr.redistribution.algorithms.registry import ALGORITHMS
    from redr.sparse.kernels import BACKENDS

    d = _field_default
    p = subparsers.add_parser("train", help="train a sparse network with redistribution (or a dense baseline)",
                              description="Train one network. Options left out come from the preset (by default "
                                          f"the preset named like --dataset; without --dataset, {d('preset')}).")
    a = p.add_argument
    a("--dataset", choices=list(DATASET_NAMES), help="dataset (default: the preset's)")
    a("--preset", choices=list(PRESETS), help="the setup to start from: kmnist and higgs are the paper's, fashion-mnist a practical one "
                                             "(the paper's on Fashion-MNIST: --preset kmnist), fashion-mnist-cnn the practical "
                                             "one for --arch cnn (default: the preset named like --dataset, with --arch cnn "
                                             f"fashion-mnist-cnn; without --dataset, {d('preset')})")
    a("--model", choices=list(MODEL_KINDS), help=f"sparse, or a dense baseline (default {d('model')})")
    a("--algorithm", help=f"redistribution algorithm: {', '.join(ALGORITHMS)} (default {d('algorithm')} for a sparse "
                          "model, none for a dense one)")
    a("--density", type=float, help=f"fraction of active weights per sparse layer (default {d('density')})")
    a("--distribution", choices=list(DISTRIBUTIONS), help="how --density is spread over the sparse layers: uniform "
                                                          f"(the paper's) or erk (RigL's Erdős–Rényi) (default {d('distribution')})")
    a("--fan-in", type=integer, help="instead of --density: every neuron of every sparse layer gets this many inputs")
    a("--arch", choices=["mlp", "cnn"], help="mlp (the paper's, --hidden) or cnn (a small CNN for 28x28 images, "
                                            "docs/conv.md) (default mlp)")
    a("--epochs", type=integer, help="training epochs " + _preset_default("epochs"))
    a("--batch-size", type=integer, help="minibatch size " + _preset_default("batch_size"))
    a("--lr", type=float, help="Adam learning rate " + _preset_default("lr"))
    a("--hidden", type=integer, nargs="+", help="hidden layer sizes, e.g. --hidden 256 256 " + _preset_default("hidden"))
    a("--dense-last", action=argparse.BooleanOptionalAction, default=None,
      help="keep the output layer dense " + _preset_default("dense_last"))
    a("--redistribute-every", type=integer, help=f"epochs between redistributions, t (default {d('redistribute_every')})")
    a("--alpha0", type=float, help=f"initial fraction of weights moved (default {d('alpha0')})")
    a("--end-fraction", type=float,
      help=f"fraction of the epochs after which redistribution stops (default {d('end_fraction')})")
    a("--redistribution-batches", type=integer,
      help=f"training minibatches given to gradient-based growth (default {d('redistribution_batches')})")
    a("--induced-loss-rows", type=integer, help="training rows on which the loss before/after redistribution is "
                                                f"measured (default {d('induced_loss_rows')})")
    a("--augment", action=argparse.BooleanOptionalAction, default=None,
      help="random affine augmentation (images) " + _preset_default("augment"))
    for flag, (name, _) in AUGMENT_FLAGS.items():
        a("--" + flag.replace("_", "-"), type=float, nargs="+", dest=flag,
          help=f"augmentation {name} (default: RandomAffine's)")
    a("--train-rows", type=integer, help="training rows used " + _preset_default("train_rows"))
    a("--test-rows", type=integer, help="test/validation rows used " + _preset_default("test_rows"))
    for flag, kind in ALGORITHM_FLAGS.items():
        a("--" + flag.replace("_", "-"), type=kind, dest=flag,
          help="algorithm option, only for the algorithms that take it (default: the algorithm's)")
    a("--init", choices=["paper", "kaiming"], help="values: paper (+-1/k weights, +-1/sqrt(k) biases) or kaiming "
      "(nn.Linear's rule), k the active fan-in (default: the preset's, else paper for a sparse net, kaiming for dense)")
    a("--validation-rows", type=integer, help="hold this many training rows out and report val_acc on them "
                                              "(choose settings on these, not on the test rows)")
    a("--seed", type=integer, help=f"seed of every random choice (default {d('seed')})")
    a("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    a("--backend", choices=list(BACKENDS), help=f"sparse kernels (default {d('backend')})")
    a("--data-dir", help="data directory (default $REDR_DATA_DIR, else ~/.cache/redr)")
    a("--no-download", action="store_true", help="never download; fail if files are missing")
    a("--on-nonfinite", choices=["stop", "skip-batch"], help=f"what a NaN/inf loss does (default {d('on_nonfinite')})")
    a("--out", help="output directory (default runs/<dataset>-<model>-<algorithm>-d<density>-s<seed>-<time>)")
    a("--overwrite", action="store_true", help="replace a run already in --out")
    a("--resume", metavar="DIR", help="continue the run saved in DIR (same options, or none)")
    a("--no-progress", action="store_true", help="no progress bar")
    a("--nproc", type=integer, help="data-parallel training with N processes on this machine (runs torchrun; "
                                    "one per GPU, or gloo on the CPU; default: one process); see docs/distributed.md")
    p.set_defaults(func=run_train)


def options_from_args(args: argparse.Namespace) -> dict:
    """The options the user gave explicitly (None = not given), in RunConfig's names."""
    plain = ("dataset", "preset", "model", "algorithm", "density", "epochs", "batch_size", "lr", "hidden", "dense_last",
             "redistribute_every", "alpha0", "end_fraction", "redistribution_batches", "induced_loss_rows", "augment",
             "train_rows", "test_rows", "seed", "device", "backend", "data_dir", "on_nonfinite", "distribution",
             "fan_in", "arch", "init", "validation_rows")
    given = {k: getattr(args, k) for k in plain if getattr(args, k) is not None}
    if args.no_download:
        given["download"] = False
    algo = {k: getattr(args, k) for k in ALGORITHM_FLAGS if getattr(args, k) is not None}
    if algo:
        given["algorithm_options"] = algo
    aug = {}
    for flag, (name, _) in AUGMENT_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            aug[name] = value[0] if len(value) == 1 else tuple(value)
    if aug:
        given["augment_options"] = aug
    return given


def _one_line_warnings(show):
    """Checkpoint fallbacks print as one ``warning: ...`` line on stderr; other warnings as before."""
    from redr.training.checkpoint import CheckpointFallbackWarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, CheckpointFallbackWarning):
            import sys

            print(f"warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)
    return showwarning


def run_train(args: argparse.Namespace) -> int:
    import sys

    from redr.training.api import train
    from redr.training.rundir import saved_config

    given = options_from_args(args)
    if args.resume:
        if args.out and Path(args.out) != Path(args.resume):
            raise UsageError("give either --resume DIR or --out DIR, not two different directories")
        out = Path(args.resume)
        if not out.is_dir():
            raise UsageError(f"--resume {out}: no such directory")
        saved = saved_config(out)
        if not isinstance(saved, dict):
            raise UsageError(f"--resume {out}: config.json holds no config")
        config = RunConfig.from_dict({**saved, **given})
        config.validate()
    else:
        config = RunConfig.from_options(**given)
        out = Path(args.out) if args.out else Path("runs") / (
            f"{config.dataset}-{config.model}-{config.algorithm}-d{config.density}-s{config.seed}-"
            f"{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    from redr.training.distributed import cli as distributed

    mode = distributed.cli_mode(args)  # None, "launch" (--nproc N: run torchrun) or "worker" (under torchrun)
    if mode == "launch":
        argv = list(getattr(args, "argv", None) or sys.argv[1:])  # as given (redr.cli.main records them)
        return distributed.launch_cli(args, out, argv[argv.index("train") + 1:])
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warnings(warnings.showwarning)
        trainer = (distributed.train_cli if mode == "worker" else train)(
            config, out, overwrite=args.overwrite, resume=bool(args.resume), progress=not args.no_progress,
            command=["redr", *sys.argv[1:]])
    last = trainer.metrics[-1] if trainer.metrics else None
    if last is not None and trainer.is_writer:
        print(f"done: {out}  final test_acc {last['test_acc']:.4f}  (metrics.csv, config.json)")
    return 0
