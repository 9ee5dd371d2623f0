"""Loading speed of the data layer: Fashion-MNIST idx -> tensors, HIGGS conversion and binary-cache load.

    python benchmarks/data_load.py [--data-dir ../shared/data] [--repeat 5] [--cache-dir DIR]

Targets (issue 3): Fashion-MNIST under 2 s, HIGGS (46k rows) from the binary cache under 1 s.
Times are wall-clock, best and median of ``--repeat`` runs, with the OS page cache warm (files read before).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def timed(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, min(times), statistics.median(times)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cold_read_rate(path: Path) -> float | None:
    """Bytes/s reading ``path`` after asking the kernel to drop its cached pages (None where unsupported)."""
    if not hasattr(os, "posix_fadvise"):
        return None
    with open(path, "rb") as fh:
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        start = time.perf_counter()
        size = len(fh.read())
    return size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cache-dir", default=None, help="HIGGS cache (default: a fresh temporary folder)")
    args = parser.parse_args()
    if args.cache_dir:
        run(args, args.cache_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="redr-bench-cache-") as cache:
            run(args, cache)


def run(args, cache_dir: str) -> None:
    os.environ["REDR_CACHE_DIR"] = cache_dir
    from redr.data import load_dataset
    from redr.data.higgs import COLUMNS, read_rows

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, numpy {np.__version__}, "
          f"{platform.python_implementation()} {platform.python_version()}")
    print(f"data dir: {args.data_dir}; cache: {os.environ['REDR_CACHE_DIR']}")

    ds, best, median = timed(lambda: load_dataset("fashion-mnist", data_dir=args.data_dir, download=False,
                                                  progress=False), args.repeat)
    print(f"fashion-mnist idx.gz -> float32 tensors ({len(ds.train_x):,}+{len(ds.test_x):,} x 784, checksums "
          f"included): best {best:.3f} s, median {median:.3f} s  [target < 2 s]")

    warnings.simplefilter("ignore")
    start = time.perf_counter()
    ds = load_dataset("higgs", data_dir=args.data_dir, download=False, progress=False)
    convert = time.perf_counter() - start
    rows = ds.info["rows"]["available"]
    size = Path(ds.info["files"]["HIGGS.csv.gz"]["path"]).stat().st_size
    print(f"higgs first load (convert {size / 1e6:.1f} MB csv.gz, {rows:,} rows, to the binary cache): {convert:.2f} s "
          f"= {rows / convert:,.0f} rows/s -> about {11_000_000 / (rows / convert) / 60:.0f} min once for the 11M-row file")
    ds, best, median = timed(lambda: load_dataset("higgs", data_dir=args.data_dir, download=False, progress=False),
                             args.repeat)
    print(f"higgs from the binary cache ({len(ds.train_x):,}+{len(ds.test_x):,} rows x 21): best {best:.4f} s, "
          f"median {median:.4f} s  [target < 1 s]")

    folder = Path(ds.info["cache"]["path"])
    _, best, _ = timed(lambda: read_rows(folder, rows), args.repeat)
    warm = rows * COLUMNS * 4 / best
    cold = cold_read_rate(Path(args.data_dir) / "fashion-mnist" / "train-images-idx3-ubyte.gz")
    paper = 600_000 * COLUMNS * 4
    print(f"cache read rate, page cache warm: {warm / 1e9:.2f} GB/s; disk read rate, page cache dropped: "
          + (f"{cold / 1e6:.0f} MB/s" if cold else "n/a"))
    disk = cold or 200e6
    print(f"on paper, 11M-row file: the cache is {11_000_000 * COLUMNS * 4 / 1e9:.2f} GB but a run reads only the "
          f"first 600,000 rows = {paper / 1e6:.1f} MB -> {paper / disk:.2f} s at {disk / 1e6:.0f} MB/s "
          f"({paper / 200e6:.2f} s at 200 MB/s)")


if __name__ == "__main__":
    main()
