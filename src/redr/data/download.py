"""Downloads: streamed into ``<name>.part`` beside the target, verified, then atomically renamed.

A ``.part`` file is never read as data. It is kept after a broken connection so that the next attempt can
resume with an HTTP ``Range`` request (HIGGS is 2.6 GB); it is deleted when the checksum does not match.
"""
from __future__ import annotations

import errno
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from tqdm.auto import tqdm

from redr.data import checksums
from redr.data.paths import DATA_DIR_ENV
from redr.data.registry import DatasetSpec, FileSpec
from redr.errors import DataError

#: Environment variable with a mirror root laid out like the data dir: ``<url>/<dataset>/<file>``.
BASE_URL_ENV = "REDR_DATA_BASE_URL"
_CHUNK = 1 << 20
_TIMEOUT_S = 30


def file_urls(spec: DatasetSpec, fspec: FileSpec, base_url: Optional[str] = None) -> List[str]:
    """URLs to try for one file: a mirror (argument, else ``$REDR_DATA_BASE_URL``), else the official ones."""
    mirror = base_url or os.environ.get(BASE_URL_ENV, "").strip()
    if mirror:
        return [f"{mirror.rstrip('/')}/{spec.name}/{fspec.name}"]
    return [base + fspec.name for base in spec.urls]


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


class _TransferError(Exception):
    """The connection failed or ended early; a ``.part`` file may be resumed."""


class DownloadError(DataError):
    """No URL delivered the file (no network, HTTP error, broken connection)."""


def _fetch(url: str, part: Path, progress: bool, desc: str) -> None:
    """Append the rest of ``url`` to ``part`` (resuming with a Range request when ``part`` has bytes)."""
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "redr-data/1"}
    if start:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # nothing left to send: the part is complete (the checksum decides)
            return
        raise _TransferError(f"HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise _TransferError(str(getattr(exc, "reason", exc))) from exc
    with response:
        resumed = start > 0 and getattr(response, "status", 200) == 206
        if not resumed:
            start = 0
        elif not str(response.headers.get("Content-Range", "")).startswith(f"bytes {start}-"):
            part.unlink(missing_ok=True)
            raise _TransferError(f"the server answered the resume with range {response.headers.get('Content-Range')!r}; "
                                 "the partial file was dropped, a rerun starts over")
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        written = start
        with open(part, "ab" if resumed else "wb") as out, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
            desc=desc, disable=not progress, leave=True, mininterval=0.5,
        ) as bar:
            while True:
                try:
                    block = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise _TransferError(f"connection broke after {written:,} bytes ({exc!r})") from exc
                if not block:
                    break
                out.write(block)  # an OSError here (disk full, read-only) is not a network problem
                written += len(block)
                bar.update(len(block))
        if total is not None and written < total:
            raise _TransferError(f"connection closed after {written:,} of {total:,} bytes")


def _starts_like_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def download_file(
    urls: Sequence[str],
    dest: Path,
    *,
    md5: Optional[str] = None,
    raw_md5: Optional[str] = None,
    progress: bool = True,
    fspec: Optional[FileSpec] = None,
) -> checksums.Checksum:
    """Download ``dest`` from the first URL that works; verify; move into place. Returns the checksum result.

    ``md5``/``raw_md5`` (or ``fspec``) give the expected checksums. On a mismatch the ``.part`` file is deleted
    and DataError names the expected and actual md5; on a network failure the ``.part`` file is kept for a resume.
    """
    dest = Path(dest)
    fspec = fspec or FileSpec(dest.name, "file", md5, raw_md5)
    part = part_path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(dest.parent, os.W_OK):
            raise PermissionError(errno.EACCES, "not writable", str(dest.parent))
    except OSError as exc:
        raise DataError(
            f"cannot write {dest.name} into {dest.parent} ({exc.strerror or exc}); pass --data-dir (or set "
            f"${DATA_DIR_ENV}) to a writable directory"
        ) from exc
    failures = []
    for url in urls:
        try:
            _fetch(url, part, progress, dest.name)
            break
        except _TransferError as exc:
            failures.append(f"{url}: {exc}")
        except OSError as exc:
            raise DataError(f"cannot write {part} ({exc.strerror or exc}); free space or choose another --data-dir") from exc
    else:
        kept = ""
        if part.exists() and part.stat().st_size:
            kept = f"; the partial download {part} is kept and a rerun resumes it"
        else:
            part.unlink(missing_ok=True)
        raise DownloadError(f"{'; '.join(failures)}{kept}")
    if dest.name.endswith(".gz") and not _starts_like_gzip(part):
        part.unlink(missing_ok=True)
        raise DataError(f"{url} did not send a gzip file for {dest.name} (an error page?); the download was deleted")
    result = checksums.check_file(fspec, part)
    if result.ok is False:
        part.unlink(missing_ok=True)
        raise DataError(
            f"downloaded {dest.name} from {url} has the wrong checksum ({result.status.removeprefix('MISMATCH: ')}); "
            "the download was deleted -- retry, or fetch it by hand from an official source"
        )
    os.replace(part, dest)
    return result


def missing_message(spec: DatasetSpec, directory: Path, missing: Sequence[FileSpec], base_url: Optional[str], why: str) -> str:
    """One line naming each missing file, its URL and checksum, where it goes, and the options to point elsewhere."""
    parts = []
    for f in missing:
        check = f"md5 {f.md5}" if f.md5 else "no official md5"
        parts.append(f"{f.name} ({check}) from {' or '.join(file_urls(spec, f, base_url))}")
    return (
        f"{spec.name}: missing {len(missing)} file(s) in {directory}: {'; '.join(parts)}. {why} "
        f"Download them into {directory}/ (e.g. `redr data download --dataset {spec.name}` on a machine with "
        f"network), or point --data-dir / ${DATA_DIR_ENV} at a folder holding {spec.name}/<file>."
    )


def ensure_files(
    spec: DatasetSpec,
    directory: Path,
    *,
    download: bool = True,
    base_url: Optional[str] = None,
    progress: bool = True,
) -> Dict[str, checksums.Checksum]:
    """Make every file of ``spec`` present in ``directory``, downloading the missing ones when allowed.

    Returns the checksum results of the files it downloaded (already verified), by file name.
    """
    missing = [f for f in spec.files if not (directory / f.name).is_file()]
    if missing and not download:
        raise DataError(missing_message(spec, directory, missing, base_url, "Downloading is off."))
    done = {}
    for f in missing:
        try:
            done[f.name] = download_file(file_urls(spec, f, base_url), directory / f.name, fspec=f, progress=progress)
        except DownloadError as exc:
            raise DownloadError(missing_message(spec, directory, [f], base_url, f"Download failed: {exc}.")) from exc
    return done
