"""Reading idx files (the MNIST format) with every structural check, so a bad file fails with its name.

Layout: 2 zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions, then one big-endian
uint32 per dimension, then the data. Labels are idx1 (magic 2049), images idx3 (magic 2051).
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from redr.errors import DataError

LABELS_MAGIC = 0x0801  # 2049
IMAGES_MAGIC = 0x0803  # 2051


def read_gz(path: Path, fix: str) -> tuple[bytes, bytes]:
    """The file's bytes and their decompressed content; DataError naming the file if it is not a whole gzip."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc}); {fix}") from exc
    try:
        return data, gzip.decompress(data)
    except EOFError as exc:
        raise DataError(f"{path}: truncated gzip file ({len(data):,} bytes; the stream ends early); {fix}") from exc
    except (gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise DataError(f"{path}: corrupt or not a gzip file ({exc}); {fix}") from exc


def parse_idx(raw: bytes, path: Path, magic: int, fix: str) -> np.ndarray:
    """The uint8 array stored in an idx file, after checking magic number, dimensions and exact length."""
    kind = {LABELS_MAGIC: "idx1 label", IMAGES_MAGIC: "idx3 image"}.get(magic, "idx")
    if len(raw) < 4:
        raise DataError(f"{path}: only {len(raw)} bytes after decompression, too short for an {kind} file; {fix}")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(
            f"{path}: wrong magic number {found} (0x{found:08x}), expected {magic} (0x{magic:08x}) for an "
            f"{kind} file; the file is not what its name says; {fix}"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: header cut short ({len(raw)} bytes, the {kind} header needs {header}); {fix}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise DataError(
            f"{path}: header says shape {dims} ({expected:,} bytes) but the file has {len(raw):,} bytes "
            f"({'truncated' if len(raw) < expected else 'trailing data'}); {fix}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
