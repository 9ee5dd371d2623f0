"""``redr reproduce EXPERIMENT`` (run a grid of the paper's experiments) and ``redr report DIR``."""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

from redr.cli_types import comma_list, positive_int
from redr.errors import UsageError
from redr.experiments.grid import DESCRIPTIONS, EXPERIMENTS, GRID_MODELS, QUICK, build_cells


def add_parser(subparsers) -> None:
    experiments = "\n".join(f"  {name:<14} {DESCRIPTIONS[name]}" for name in EXPERIMENTS)
    quick = "; ".join(f"{ds}: {q.describe()}" for ds, q in QUICK.items())
    p = subparsers.add_parser(
        "reproduce", help="run one of the paper's experiments as a resumable grid, then write its report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run every training run of an experiment (one directory per run under --out), skipping "
                    "finished runs and resuming interrupted ones, then write report.md, tables/ and figures/ "
                    "into --out.\n\nexperiments:\n" + experiments
                    + f"\n\n--quick shrinks only: {quick}; timing: 3 instead of 5 epochs.\n"
                      "See docs/reproduce.md for run times.")
    a = p.add_argument
    a("experiment", choices=EXPERIMENTS, metavar="EXPERIMENT", help="one of: " + ", ".join(EXPERIMENTS))
    a("--seeds", type=positive_int, help="seeds 0..N-1 per configuration (default 3; timing and memory 1)")
    a("--epochs", type=positive_int, help="epochs per run (default: the paper's, 30 for KMNIST/Fashion-MNIST, 80 for "
                                          "HIGGS; scale: 2)")
    a("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    a("--data-dir", help="data directory (default $REDR_DATA_DIR, else ~/.cache/redr)")
    a("--no-download", action="store_true", help="never download data; fail if files are missing")
    a("--out", help="folder of the runs and the report (default runs/EXPERIMENT, runs/EXPERIMENT-quick with --quick); "
                    "experiments given the same --out share identical runs")
    a("--quick", action="store_true", help="the reduced budget stated above")
    a("--dataset", action="append", dest="datasets", metavar="NAME",
      help="dataset(s) for induced-loss, frequency, depth, memory (default kmnist), woodtaylor (default kmnist and "
           "higgs) and timing (default higgs); repeat for several. The accuracy grids are named by their dataset")
    a("--algorithms", type=comma_list(str), help="restrict the grid to these of: " + ",".join(GRID_MODELS)
      + " (scale: random,gradient-global,dense-neuron)")
    a("--densities", type=comma_list(float), help="restrict the grid to these densities, e.g. 0.1,0.03")
    a("--widths", type=comma_list(int), help="growth and scale only: the hidden widths W of 784-W-W-10, in this order "
                                             "(default: growth 256,4096; scale 4096,16384,65536,262144,1048576)")
    a("--paths", type=comma_list(str), help="growth only: these growth paths (exact, sampled; default both)")
    a("--fan-in", type=positive_int, help="scale only: inputs per neuron of both hidden layers (default 16)")
    a("--train-rows", type=positive_int, help="scale only: train on the first N training rows per epoch (default all)")
    a("--test-rows", type=positive_int, help="scale only: evaluate on the first N test rows (default all)")
    a("--threads", type=positive_int, help="CPU threads for torch and the numba kernels (default: theirs, all cores). "
                                        "Use 1 on a shared, busy machine: multi-threaded small kernels slow down "
                                        "many times over when the cores are oversubscribed")
    a("--retry-failed", action="store_true", help="rerun runs that failed before (default: report them, skip them)")
    a("--list", action="store_true", help="print the runs and what each needs (run/resume/skip), run nothing")
    a("--no-report", action="store_true", help="do not write the report at the end")
    a("--quiet", action="store_true", help="one line per run instead of one per epoch")
    a("--no-progress", action="store_true", help="no per-epoch progress bars")
    p.set_defaults(func=run_reproduce)

    r = subparsers.add_parser("report", help="write report.md, tables/ and figures/ from finished runs (no training)",
                              description="Read the runs in DIR (and DIR/runs) and write report.md, tables/*.csv and "
                                          "figures/*.png; nothing is trained.")
    r.add_argument("directory", metavar="DIR", help="a --out folder of redr reproduce")
    r.add_argument("--to", metavar="OUT", help="write the report here instead of DIR, with a copy of every run's small "
                                               "files (config.json, metrics.csv, markers; no checkpoints) under "
                                               "OUT/runs/, so OUT regenerates the same report on its own")
    r.set_defaults(func=run_report)


def default_out(experiment: str, quick: bool) -> Path:
    return Path("runs") / (experiment + ("-quick" if quick else ""))


def run_reproduce(args: argparse.Namespace) -> int:
    from redr.experiments.runner import format_seconds, plan_grid, record_invocation, run_grid
    from redr.runtime import configure_threads, resolve_device

    configure_threads(args.threads)  # before any kernel runs (None: keep the counts, fix the order)
    if args.experiment == "growth":
        from redr.experiments.growth import growth_cells

        if args.quick:
            raise UsageError("--quick does not apply to growth (its budget per width is fixed; use --epochs, --widths)")
        if args.fan_in or args.train_rows or args.test_rows:
            raise UsageError("--fan-in, --train-rows and --test-rows apply to the scale experiment only")
        cells = growth_cells(seeds=args.seeds, epochs=args.epochs, datasets=args.datasets, models=args.algorithms,
                             densities=args.densities, widths=args.widths, paths=args.paths)
    else:
        if args.paths:
            raise UsageError(f"--paths applies to the growth experiment only, not {args.experiment}")
        cells = build_cells(args.experiment, seeds=args.seeds, epochs=args.epochs, quick=args.quick,
                            datasets=args.datasets, models=args.algorithms, densities=args.densities,
                            widths=args.widths, fan_in=args.fan_in, train_rows=args.train_rows,
                            test_rows=args.test_rows)
    if args.no_download:
        for cell in cells:
            cell.options["download"] = False
    out = Path(args.out) if args.out else default_out(args.experiment, args.quick)
    device = str(resolve_device(args.device))
    command = ["redr", *sys.argv[1:]] if Path(sys.argv[0]).name in ("redr", "__main__.py") else \
        ["redr", "reproduce", args.experiment]
    if args.list:
        planned = plan_grid(cells, out, device, args.data_dir, args.retry_failed)
        for run in planned:
            print(f"{run.state:<11} {run.cell.name}  ({run.cell.epochs} epochs{', ' + run.reason if run.reason else ''})")
        todo = sum(r.state in ("new", "redo", "resume") for r in planned)
        print(f"{len(planned)} runs in {out}: {sum(r.state == 'done' for r in planned)} finished, {todo} to run")
        return 0
    datasets = sorted({c.options["dataset"] for c in cells})
    entry = {"command": command, "experiment": args.experiment, "quick": args.quick,
             "quick_budget": "; ".join(f"{ds}: {QUICK[ds].describe()}" for ds in datasets if ds in QUICK) if args.quick else "",
             "seeds": args.seeds, "epochs": args.epochs, "device": device, "threads": args.threads, "datasets": datasets,
             "runs": len(cells), "started": datetime.now(timezone.utc).isoformat()}
    summary = run_grid(cells, out, device=device, data_dir=args.data_dir, retry_failed=args.retry_failed,
                       progress=not args.no_progress, verbose=not args.quiet, command=command, threads=args.threads)
    record_invocation(out, {**entry, "seconds": round(summary.seconds, 1), "failed": len(summary.failed)})
    print(f"{args.experiment}: {summary.finished}/{summary.total} runs finished ({summary.trained} now, "
          f"{summary.done_before} before) in {format_seconds(summary.seconds)}"
          + (f"; {len(summary.failed) + len(summary.failed_before)} failed" if summary.failed or summary.failed_before else "")
          + (f"; not available here: {', '.join(summary.unavailable)}" if summary.unavailable else ""))
    for name, message in summary.failed + summary.failed_before:
        print(f"  failed: {name}: {message}")
    if not args.no_report:
        from redr.experiments.report import write_report

        print(f"report: {write_report(out)}")
    return 1 if summary.failed or summary.failed_before or summary.unavailable else 0


def run_report(args: argparse.Namespace) -> int:
    from redr.experiments.report import write_report
    from redr.experiments.results import find_run_dirs

    directory = Path(args.directory)
    if not directory.is_dir():
        raise UsageError(f"{directory}: no such folder")
    if not find_run_dirs(directory):
        raise UsageError(f"{directory}: no run directories (folders with config.json) here or in {directory / 'runs'}")
    path = write_report(directory, args.to, copy_runs=bool(args.to))
    print(f"report: {path}")
    return 0
