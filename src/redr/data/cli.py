"""``redr data download|verify --dataset NAME [--data-dir D]``.

``verify`` never downloads: it reads every file, prints what it found and exits 1 listing what is missing or
wrong. ``download`` fetches the missing files (from ``$REDR_DATA_BASE_URL`` if set, a mirror laid out like the
data dir), verifies them, prepares the HIGGS cache, and prints the same report.
"""
from __future__ import annotations

import argparse
import sys

from redr.data.dataset import locate
from redr.data.download import BASE_URL_ENV, ensure_files
from redr.data.paths import DATA_DIR_ENV
from redr.data.registry import DATASETS, get_spec
from redr.data.verify import verify_dataset


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("data", help="download and verify datasets",
                                   description="Download and verify the datasets (KMNIST, Fashion-MNIST, HIGGS).")
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True
    down = actions.add_parser("download", help="download missing files, verify checksums, prepare caches",
                              description=f"Download missing files (mirror: ${BASE_URL_ENV}), then verify.")
    check = actions.add_parser("verify", help="check the files without downloading; non-zero exit if anything is wrong")
    for sub in (down, check):
        sub.add_argument("--dataset", required=True, choices=list(DATASETS), help="which dataset")
        sub.add_argument("--data-dir", default=None,
                         help=f"data directory (default: ${DATA_DIR_ENV}, else ~/.cache/redr)")
        sub.add_argument("--no-progress", action="store_true", help="no progress bars")
    down.set_defaults(func=_download)
    check.set_defaults(func=_verify)


def _verify(args: argparse.Namespace) -> int:
    ok, lines = verify_dataset(args.dataset, args.data_dir, progress=not args.no_progress)
    print("\n".join(lines))
    if not ok:
        print(f"error: {args.dataset}: problems found (listed above)", file=sys.stderr)
    return 0 if ok else 1


def _download(args: argparse.Namespace) -> int:
    spec = get_spec(args.dataset)
    folder, _ = locate(spec, args.data_dir)
    got = ensure_files(spec, folder, download=True, progress=not args.no_progress)  # mirror: $REDR_DATA_BASE_URL
    print(f"downloaded {len(got)} file(s) into {folder}" if got else f"all files already present in {folder}")
    return _verify(args)
