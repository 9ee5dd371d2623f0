"""Small files in the real formats (idx ``.gz``, HIGGS ``.csv.gz``), for tests, examples and benchmarks.

They exercise exactly the code paths of the real files; only their checksums differ from the official ones,
so load them with ``verify=False``.
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Optional

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """Raw idx content of a uint8 array: magic (0x0800 + ndim), big-endian dimensions, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = (0x0800 + array.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_gz(path: Path, raw: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw, compresslevel=1, mtime=0))
    return path


def write_image_dataset(folder: Path, n_train: int = 60, n_test: int = 20, num_classes: int = 10, seed: int = 0) -> dict:
    """The four MNIST-style files in ``folder`` (random 28x28 images, labels cycling through the classes)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{prefix}-images-idx3-ubyte.gz"] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}-labels-idx1-ubyte.gz"] = (np.arange(n) % num_classes).astype(np.uint8)
    for name, array in arrays.items():
        write_gz(Path(folder) / name, idx_bytes(array))
    return arrays


def higgs_rows(n: int, seed: int = 0) -> np.ndarray:
    """(n, 29) float32 rows shaped like HIGGS: label 0/1, then 28 features."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n, 29)).astype(np.float32)
    rows[:, 0] = rng.integers(0, 2, size=n)
    return rows


def write_higgs_csv_gz(path: Path, n: int = 1000, seed: int = 0, rows: Optional[np.ndarray] = None) -> np.ndarray:
    """A ``HIGGS.csv.gz`` in the UCI format (no header, ``%.18e``, comma-separated); returns the rows written."""
    rows = higgs_rows(n, seed) if rows is None else rows
    text = "\n".join(",".join(f"{v:.18e}" for v in row) for row in rows.astype(np.float64)) + "\n"
    write_gz(path, text.encode())
    return rows
