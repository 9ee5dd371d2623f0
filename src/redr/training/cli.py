"""``redr train``: train one network (sparse with redistribution, or a dense baseline)."""
from __future__ import annotations

import argparse
import warnings
from datetime import datetime
from pathlib import Path

from redr.cli_types import integer
from redr.errors import UsageError
from redr.sparse.distribution import DISTRIBUTIONS
from redr.training.config import PRESETS, RunConfig

#: CLI flag -> algorithm option (only the algorithms that take an option accept it)
ALGORITHM_FLAGS = {"block_size": int, "dampening": float, "tile_rows": int, "neuron_fraction": float,
                   "min_weights_per_layer": int, "min_layer_fraction": float}
AUGMENT_FLAGS = {"aug_degrees": ("degrees", float), "aug_translate": ("translate", float),
                 "aug_scale": ("scale", float), "aug_shear": ("shear", float)}


def add_parser(subparsers) -> None:
    from redr.redistribution.registry import ALGORITHMS

    p = subparsers.add_parser("train", help="train a sparse network with redistribution (or a dense baseline)",
                              description="Train one network. Options left out come from the preset "
                                          "(by default the preset named like --dataset).",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--dataset", choices=["kmnist", "fashion-mnist", "higgs", "synthetic"], help="dataset (default: the preset's)")
    a("--preset", choices=list(PRESETS), help="the paper's setup to start from (default: named like --dataset, "
                                                 "else fashion-mnist)")
    a("--model", choices=["sparse", "dense-neuron", "dense-param"], help="sparse, or a dense baseline (default sparse)")
    a("--algorithm", help=f"redistribution algorithm: {', '.join(ALGORITHMS)} (default random; none for dense)")
    a("--density", type=float, help="fraction of active weights per sparse layer (default 0.1)")
    a("--distribution", choices=list(DISTRIBUTIONS), help="how --density is spread over the sparse layers: uniform "
                                                          "(the paper's) or erk (RigL's Erdős–Rényi) (default uniform)")
    a("--fan-in", type=integer, help="instead of --density: every neuron of every sparse layer gets this many inputs")
    a("--epochs", type=integer, help="training epochs")
    a("--batch-size", type=integer, help="minibatch size")
    a("--lr", type=float, help="Adam learning rate")
    a("--hidden", type=integer, nargs="+", help="hidden layer sizes, e.g. --hidden 256 256")
    a("--dense-last", action=argparse.BooleanOptionalAction, default=None, help="keep the output layer dense")
    a("--redistribute-every", type=integer, help="epochs between redistributions, t (default 1)")
    a("--alpha0", type=float, help="initial fraction of weights moved (default 0.5)")
    a("--end-fraction", type=float, help="fraction of the epochs after which redistribution stops (default 0.75)")
    a("--redistribution-batches", type=integer, help="training minibatches given to gradient-based growth (default 1)")
    a("--induced-loss-rows", type=integer, help="training rows on which the loss before/after redistribution "
                                                     "is measured (default 4096)")
    a("--augment", action=argparse.BooleanOptionalAction, default=None, help="random affine augmentation (images)")
    for flag, (name, _) in AUGMENT_FLAGS.items():
        a("--" + flag.replace("_", "-"), type=float, nargs="+", dest=flag, help=f"augmentation {name} (see RandomAffine)")
    a("--train-rows", type=integer, help="training rows used (HIGGS default 500000; images: all)")
    a("--test-rows", type=integer, help="test/validation rows used (HIGGS default 100000; images: all)")
    for flag, kind in ALGORITHM_FLAGS.items():
        a("--" + flag.replace("_", "-"), type=kind, dest=flag, help="algorithm option (only algorithms that take it)")
    a("--seed", type=integer, help="seed of every random choice (default 0)")
    a("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    a("--backend", choices=["auto", "numba", "torch", "dense"], help="sparse kernels (default auto)")
    a("--data-dir", help="data directory (default $REDR_DATA_DIR, else ~/.cache/redr)")
    a("--no-download", action="store_true", help="never download; fail if files are missing")
    a("--on-nonfinite", choices=["stop", "skip-batch"], help="what a NaN/inf loss does (default stop)")
    a("--out", help="output directory (default runs/<dataset>-<model>-<algorithm>-d<density>-s<seed>-<time>)")
    a("--overwrite", action="store_true", help="replace a run already in --out")
    a("--resume", metavar="DIR", help="continue the run saved in DIR (same options, or none)")
    a("--no-progress", action="store_true", help="no progress bar")
    a("--nproc", type=integer, help="data-parallel training with N processes on this machine (runs torchrun; "
                                          "one per GPU, or gloo on the CPU); see docs/distributed.md")
    p.set_defaults(func=run_train, _train_parser=p)


def options_from_args(args: argparse.Namespace) -> dict:
    """The options the user gave explicitly (None = not given), in RunConfig's names."""
    plain = ("dataset", "preset", "model", "algorithm", "density", "epochs", "batch_size", "lr", "hidden", "dense_last",
             "redistribute_every", "alpha0", "end_fraction", "redistribution_batches", "induced_loss_rows", "augment",
             "train_rows", "test_rows", "seed", "device", "backend", "data_dir", "on_nonfinite", "distribution", "fan_in")
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

    from redr.training.trainer import saved_config, train

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
    from redr.training import distributed

    mode = distributed.cli_mode(args)  # None, "launch" (--nproc N: run torchrun) or "worker" (under torchrun)
    if mode == "launch":
        return distributed.launch_cli(args, out)
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warnings(warnings.showwarning)
        trainer = (distributed.train_cli if mode == "worker" else train)(
            config, out, overwrite=args.overwrite, resume=bool(args.resume), progress=not args.no_progress,
            command=["redr", *sys.argv[1:]])
    last = trainer.metrics[-1] if trainer.metrics else None
    if last is not None and trainer.is_writer:
        print(f"done: {out}  final test_acc {last['test_acc']:.4f}  (metrics.csv, config.json)")
    return 0
