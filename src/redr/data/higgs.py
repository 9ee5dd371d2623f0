"""HIGGS: ``HIGGS.csv.gz`` -> a float32 binary cache (once, streaming) -> the first rows as tensors.

The CSV (label, then 28 features) is parsed in blocks of a few MB with numpy, never as Python objects,
and written to ``<cache>/converted/higgs-<key>/data.f32`` (row-major float32, 29 columns, label first) plus
``meta.json``. The key hashes the source's size, first and last MiB (the gzip trailer holds the CRC of
the whole content), so a changed file is converted again and an unchanged copy anywhere reuses the cache.
The conversion happens in a temporary folder that is renamed into place only when complete.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import warnings
import zlib
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from redr.data.paths import CACHE_DIR_ENV
from redr.data.registry import HIGGS
from redr.errors import DataError, UsageError

COLUMNS = 29  # label + 28 features
FEATURES_USED = HIGGS.num_features
DEFAULT_TRAIN_ROWS = 500_000
DEFAULT_TEST_ROWS = 100_000  # validation rows, taken right after the training rows
CACHE_FORMAT = "redr-higgs-float32-v1"
_BLOCK = 8 << 20  # decompressed bytes parsed at a time (~14k rows)
_FIX = "the file is damaged or not the UCI HIGGS.csv.gz; delete it and run `redr data download --dataset higgs`"


def source_key(path: Path) -> str:
    """A cheap content key: size + first and last MiB (the gzip trailer has the CRC of all the data)."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(1 << 20))
        fh.seek(max(0, size - (1 << 20)))
        digest.update(fh.read())
    return digest.hexdigest()[:16]


class _HashingReader(io.RawIOBase):
    """Reads a file for gzip while hashing what passes through (md5 of the source at no extra read)."""

    def __init__(self, fh):
        self.fh, self.md5, self.pos = fh, hashlib.md5(), 0

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self.fh.read(len(buffer))
        self.md5.update(data)
        self.pos += len(data)
        buffer[: len(data)] = data
        return len(data)


def _locate(block: bytes, first_line: int) -> Tuple[int, str]:
    """Find the first bad line of a block (only after numpy refused it): line number and what is wrong."""
    for offset, line in enumerate(block.split(b"\n")):
        fields = line.strip().split(b",")
        if fields == [b""]:
            continue
        where = first_line + offset
        if len(fields) != COLUMNS:
            return where, f"{len(fields)} columns, expected {COLUMNS} (label + 28 features)"
        for col, text in enumerate(fields):
            try:
                value = float(text)
            except ValueError:
                return where, f"column {col + 1} is not a number: {text.decode(errors='replace')[:40]!r}"
            if not np.isfinite(value):
                return where, f"column {col + 1} is not finite: {text.decode(errors='replace')!r}"
            if col == 0 and value not in (0.0, 1.0):
                return where, f"label (column 1) is {value!r}, expected 0 or 1"
    return first_line, "cannot be parsed"


def _parse_block(block: bytes, path: Path, first_line: int) -> np.ndarray:
    def fail() -> DataError:
        line, reason = _locate(block, first_line)
        return DataError(f"{path}: line {line:,}: {reason}; {_FIX}")

    try:
        rows = np.loadtxt(io.BytesIO(block), delimiter=",", dtype=np.float32, ndmin=2, comments=None)
    except ValueError:
        raise fail() from None
    if rows.shape[1] != COLUMNS or not np.isin(rows[:, 0], (0.0, 1.0)).all() or not np.isfinite(rows).all():
        raise fail()
    return rows


def _stream_csv(path: Path, out_path: Path, progress: bool) -> dict:
    """Parse the gzip CSV block by block into ``out_path``; returns rows, label counts and the source md5."""
    rows = ones = 0
    line = 1
    size = path.stat().st_size
    with open(path, "rb") as fh, open(out_path, "wb") as out, tqdm(
        total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=f"converting {path.name}",
        disable=not progress, mininterval=0.5,
    ) as bar:
        source = _HashingReader(fh)
        gz = gzip.GzipFile(fileobj=source, mode="rb")
        rest = b""
        while True:
            try:
                chunk = gz.read(_BLOCK)
            except EOFError:
                raise DataError(f"{path}: truncated gzip file (the stream ends after line {line:,}); {_FIX}") from None
            except (gzip.BadGzipFile, zlib.error, OSError) as exc:
                raise DataError(f"{path}: corrupt gzip data near line {line:,} ({exc}); {_FIX}") from None
            data = rest + chunk
            cut = len(data) if not chunk else data.rfind(b"\n") + 1
            block, rest = data[:cut], data[cut:]
            if block.strip():
                parsed = _parse_block(block, path, line)
                parsed.tofile(out)
                rows += len(parsed)
                ones += int(parsed[:, 0].sum())
            line += block.count(b"\n")
            bar.update(source.pos - bar.n)
            if not chunk:
                break
    if rows == 0:
        raise DataError(f"{path}: no data rows; {_FIX}")
    return {"rows": rows, "label_counts": {"0": rows - ones, "1": ones}, "source_md5": source.md5.hexdigest()}


def ensure_cache(path: Path, cache_root: Path, progress: bool = True) -> Tuple[Path, dict, bool]:
    """The converted cache for ``path`` (converting it first if needed): folder, meta, whether converted now."""
    path = Path(path)
    key = source_key(path)
    final = Path(cache_root) / "converted" / f"higgs-{key}"
    meta = _read_meta(final)
    if meta is not None:
        return final, meta, False
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as exc:
        raise DataError(
            f"cannot create the HIGGS cache in {final.parent} ({exc.strerror or exc}); set ${CACHE_DIR_ENV} to a "
            "writable directory"
        ) from exc
    try:
        meta = _stream_csv(path, tmp / "data.f32", progress)
        meta.update(format=CACHE_FORMAT, columns=COLUMNS, dtype="float32", key=key,
                    layout="row-major; column 0 = label (1 signal, 0 background), then 28 features in UCI order",
                    source={"path": str(path.absolute()), "bytes": path.stat().st_size})
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if final.exists() and _read_meta(final) is None:
            shutil.rmtree(final)  # an incomplete or outdated cache
        try:
            os.replace(tmp, final)
        except OSError:
            if _read_meta(final) is None:  # not a concurrent process finishing first: a real error
                raise
    except OSError as exc:
        raise DataError(f"cannot write the HIGGS cache in {final.parent} ({exc.strerror or exc}); free space or "
                        f"set ${CACHE_DIR_ENV} elsewhere") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final, _read_meta(final), True


def _read_meta(folder: Path) -> Optional[dict]:
    """The cache's meta if the cache is complete and consistent, else None (it will be rebuilt)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        complete = (folder / "data.f32").stat().st_size == meta["rows"] * COLUMNS * 4
        return meta if meta.get("format") == CACHE_FORMAT and complete else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_rows(folder: Path, rows: int) -> np.ndarray:
    """The first ``rows`` rows of a cache, (rows, 29) float32; reads only those bytes."""
    data = np.fromfile(folder / "data.f32", dtype=np.float32, count=rows * COLUMNS)
    return data.reshape(rows, COLUMNS)


def split_rows(available: int, train_rows: int, test_rows: int, warn: list) -> Tuple[int, int]:
    """Training then validation rows from the start of the file; with too few rows keep the requested ratio."""
    for name, value in (("train_rows", train_rows), ("test_rows", test_rows)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise UsageError(f"{name} must be a whole number >= 0, got {value!r}")
    if train_rows == 0:
        raise UsageError("train_rows must be at least 1")
    wanted = train_rows + test_rows
    if available >= wanted:
        return train_rows, test_rows
    train = max(1, available * train_rows // wanted)
    test = available - train
    message = (
        f"HIGGS.csv.gz has {available:,} rows, fewer than the {train_rows:,} training + {test_rows:,} validation "
        f"rows requested; using {train:,} + {test:,} (same {train_rows}:{test_rows} ratio)"
    )
    warnings.warn(message, stacklevel=4)
    warn.append(message)
    return train, test


def load_higgs(
    path: Path,
    *,
    cache_root: Path,
    device="cpu",
    train_rows: Optional[int] = None,
    test_rows: Optional[int] = None,
    progress: bool = True,
):
    """``(train_x, train_y, test_x, test_y, info)``: first 21 features (raw), labels as float32 0/1."""
    train_rows = DEFAULT_TRAIN_ROWS if train_rows is None else train_rows
    test_rows = DEFAULT_TEST_ROWS if test_rows is None else test_rows
    info = {"warnings": []}
    folder, meta, converted = ensure_cache(path, cache_root, progress)
    n_train, n_test = split_rows(meta["rows"], train_rows, test_rows, info["warnings"])
    rows = read_rows(folder, n_train + n_test)
    x = torch.from_numpy(np.ascontiguousarray(rows[:, 1 : 1 + FEATURES_USED])).to(device)
    y = torch.from_numpy(np.ascontiguousarray(rows[:, 0])).to(device)
    info.update(
        rows={
            "train": {"used": n_train, "requested": train_rows, "first_row": 0},
            "test": {"used": n_test, "requested": test_rows, "first_row": n_train, "role": "validation"},
            "available": meta["rows"],
        },
        features=f"first {FEATURES_USED} of 28 (low-level; the 7 high-level features are dropped, as in the paper), unscaled",
        labels="float32: 1 = signal, 0 = background",
        label_counts_in_file=meta["label_counts"],
        cache={"path": str(folder), "converted_now": converted, "key": meta["key"]},
        source_md5=meta["source_md5"],
    )
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:], info
