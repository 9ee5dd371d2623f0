"""``redr bench SUITE``: the layer, epoch and memory benchmarks (see benchmarks/README.md)."""
from __future__ import annotations

import argparse

from redr.cli_types import comma_list, non_negative_int, positive_int
from redr.errors import UsageError

SUITES = ("layer", "epoch", "memory")


def _densities(text: str) -> list[float]:
    values = comma_list(float)(text)
    if any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"densities must be in (0, 1], got {text!r}")
    return values


def _shapes(text: str):
    from redr.bench.common import parse_shapes

    try:
        return parse_shapes(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _conv_shapes(text: str):
    from redr.bench.conv_layer import parse_conv_shapes

    try:
        return parse_conv_shapes(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _batches(text: str) -> list[int]:
    try:
        return [positive_int(v) for v in comma_list()(text)]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"batches: {exc}") from None


def add_parser(subparsers) -> None:
    from redr.sparse.kernels import BACKENDS

    p = subparsers.add_parser(
        "bench", help="benchmarks: sparse vs dense layer, epoch and memory (tables + JSON lines)",
        description="Run a benchmark suite, print its table and append JSON lines (machine, device, torch version, "
                    "commit, configuration, numbers, ratios) to --json. 'summary FILE...' reprints results files.")
    p.add_argument("suite", choices=SUITES + ("all", "summary"),
                   help="layer: one layer forward+backward vs nn.Linear; epoch: seconds per epoch of whole nets vs "
                        "their dense twin; memory: peak memory per algorithm x density vs dense; all: the three")
    p.add_argument("files", nargs="*", help="summary only: JSON-lines files to summarize")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--repeats", type=positive_int, default=None,
                   help="timed repeats, median reported (default: layer 20, epoch 1; --quick: layer 3)")
    p.add_argument("--warmup", type=non_negative_int, default=None, help="layer: untimed rounds first (default 3; --quick 1)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run (results marked quick)")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="append JSON lines here (default benchmarks/results/<suite>-<date>.jsonl under the current directory)")
    p.add_argument("--densities", type=_densities, default=None, help="comma-separated (default 0.1,0.06,0.03)")
    p.add_argument("--algorithms", type=comma_list(), default=None, help="epoch/memory: comma-separated (default: all registered)")
    p.add_argument("--nets", type=comma_list(), default=None, help="epoch: higgs,kmnist,wide (default all); memory: default wide")
    p.add_argument("--shapes", type=_shapes, default=None, help="layer: INxOUT list (default 784x256,256x256,4096x4096)")
    p.add_argument("--batches", type=_batches, default=None, help="layer: batch sizes (default 128,512)")
    p.add_argument("--conv-shapes", type=_conv_shapes, default=None,
                   help="layer: convolutions INxOUTxKERNELxSIDE (default 64x64x3x14 at batch 128; run when --shapes is not "
                        "given; given alone, only convolutions run)")
    p.add_argument("--conv-algorithms", type=comma_list(), default=None,
                   help="layer: the numba backend's conv algorithms to time, of auto,direct,unfold (default auto)")
    p.add_argument("--backends", type=comma_list(), default=None, help="layer: sparse backends (default numba,torch,dense,auto; "
                                                                  "numba only on the CPU)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="epoch: the sparse nets' backend (default auto)")
    p.add_argument("--higgs-rows", type=positive_int, default=None, help="epoch: rows per HIGGS epoch (default 500000)")
    p.add_argument("--rows", type=positive_int, default=None, help="epoch: rows per KMNIST/wide epoch (default 60000)")
    p.add_argument("--steps", type=positive_int, default=None, help="memory: training steps before the redistribution (default 3)")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="memory: configuration subprocesses run at once (default 1; memory is per process, so only "
                        "the wall time changes)")
    p.add_argument("--worker-timeout", type=float, default=900.0, help="memory: seconds per configuration subprocess")
    p.add_argument("--threads", type=positive_int, default=None, help="torch and numba threads (default: their own)")
    p.set_defaults(func=main)


def main(args) -> int:
    from redr.bench import summary

    if args.suite == "summary":
        if not args.files and not args.json:
            raise UsageError("bench summary needs results files: redr bench summary FILE [FILE...]")
        summary.print_summary(summary.read_records(list(args.files) + ([args.json] if args.json else [])))
        return 0
    if args.files:
        raise UsageError(f"unexpected arguments {' '.join(args.files)} (files are for 'redr bench summary')")
    from redr.bench import common

    from redr.runtime import configure_threads

    configure_threads(args.threads)  # before any kernel runs (None: keep the counts, fix the order)
    device = common.resolve_device(args.device)
    suites = SUITES if args.suite == "all" else (args.suite,)
    records = []
    for suite in suites:
        out = common.JsonLines(args.json or common.default_json_path(suite))
        module = __import__(f"redr.bench.{suite}", fromlist=["run"])
        records += module.run(args, device, out)
        print_path = out.path
        common.print_flush(f"\n{out.count} JSON lines appended to {print_path}\n")
    checks = summary.target_checks(records)
    if checks:
        common.print_flush("issue-8 targets (CPU, full sizes):")
        for line in checks:
            common.print_flush("  " + line)
    return 0
