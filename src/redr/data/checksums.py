"""md5 checks against the official values, with a status line a person can read.

A file is accepted when its own md5 matches the official one, or (where known) when its decompressed
content does: Debian re-compressed Fashion-MNIST, so the ``.gz`` bytes differ while the data is identical.
"""
from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from redr.data.registry import FileSpec

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Checksum:
    ok: Optional[bool]  # None: nothing official to compare with
    status: str  # one line for reports and the run's config
    md5: str  # of the file as stored


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def md5_file(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def md5_gz_content(path: Path) -> str:
    """md5 of the decompressed content, streamed (never the whole file in memory)."""
    digest = hashlib.md5()
    with gzip.open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def check(spec: FileSpec, md5: str, raw_md5: Optional[str] = None) -> Checksum:
    """Compare a file's md5 (and, if given, its content md5) with the spec's official values."""
    if spec.md5 is not None and md5 == spec.md5:
        return Checksum(True, "ok (official md5)", md5)
    if spec.raw_md5 is not None and raw_md5 == spec.raw_md5:
        return Checksum(True, "ok (decompressed content matches the official md5; re-compressed copy)", md5)
    if spec.md5 is None and spec.raw_md5 is None:
        known = dict(spec.known).get(md5)
        what = f"; md5 {md5} = {known}" if known else f"; md5 {md5}"
        return Checksum(None, f"not checked (no official checksum published){what}", md5)
    expected = f"expected md5 {spec.md5}"
    actual = f"got {md5}"
    if spec.raw_md5 is not None:
        expected += f" (or decompressed content md5 {spec.raw_md5})"
        if raw_md5 is not None:
            actual += f" (decompressed content md5 {raw_md5})"
    return Checksum(False, f"MISMATCH: {expected}, {actual}", md5)


def check_file(spec: FileSpec, path: Path) -> Checksum:
    """Checksum a file on disk; the content md5 is only computed when the file md5 does not match."""
    md5 = md5_file(path)
    raw = None
    if spec.raw_md5 is not None and md5 != spec.md5:
        try:
            raw = md5_gz_content(path)
        except (OSError, EOFError, gzip.BadGzipFile):
            raw = "unreadable gzip"
    return check(spec, md5, raw)
