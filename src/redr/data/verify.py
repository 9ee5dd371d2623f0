"""``redr data verify``: what is there, what is missing or wrong, and how to fix it -- as text lines.

Unlike :func:`load_dataset`, which stops at the first problem, this reads every file and lists all problems.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import List, Tuple

import numpy as np

from redr.data import download as dl, higgs, images
from redr.data.checksums import check
from redr.data.dataset import locate
from redr.data.paths import DATA_DIR_ENV, resolve_cache_dir
from redr.data.registry import DatasetSpec, get_spec
from redr.errors import DataError


def _classes(labels: np.ndarray, num_classes: int) -> str:
    counts = np.bincount(labels, minlength=num_classes)
    if counts.min() == counts.max():
        return f"{num_classes} classes, {counts[0]:,} each"
    return f"{num_classes} classes: " + ", ".join(f"{c}:{n:,}" for c, n in enumerate(counts))


def _image_report(spec: DatasetSpec, folder: Path, lines: List[str], problems: List[str], progress: bool) -> None:
    arrays = {}
    for f in spec.files:
        path = folder / f.name
        if not path.is_file():
            official = f"official md5 {f.md5}" + (f", {f.size:,} bytes" if f.size else "")
            lines.append(f"  {f.name:<28} MISSING ({official}; {' or '.join(dl.file_urls(spec, f))})")
            if dl.part_path(path).exists():
                lines.append(f"  {'':<28} an unfinished download {dl.part_path(path).name} is there; "
                             "`redr data download` resumes it")
            problems.append(f"missing {path}")
            continue
        try:
            array, check = images.read_file(spec, f, path, verify=False)
        except DataError as exc:
            lines.append(f"  {f.name:<28} BAD: {exc}")
            problems.append(str(exc))
            continue
        arrays[f.role] = array
        what = (f"{len(array):,} images {'x'.join(map(str, array.shape[1:]))}" if f.role.endswith("images")
                else f"{len(array):,} labels")
        lines.append(f"  {f.name:<28} {path.stat().st_size:>12,} bytes  {what:<22} checksum {check.status}")
        if check.ok is False:
            problems.append(f"{path}: checksum {check.status}")
    for split in ("train", "test"):
        imgs, labs = arrays.get(f"{split}_images"), arrays.get(f"{split}_labels")
        if imgs is None or labs is None:
            lines.append(f"  {split} split: incomplete")
            continue
        if len(imgs) != len(labs):
            problems.append(f"{split} split: {len(imgs):,} images but {len(labs):,} labels")
            lines.append(f"  {split} split: MISMATCH {len(imgs):,} images vs {len(labs):,} labels")
            continue
        lines.append(f"  {split} split: {len(imgs):,} rows, {_classes(labs, spec.num_classes)}")


def _higgs_report(spec: DatasetSpec, folder: Path, lines: List[str], problems: List[str], progress: bool) -> None:
    f = spec.files[0]
    path = folder / f.name
    if not path.is_file():
        lines.append(f"  {f.name:<16} MISSING (no official md5 published; {' or '.join(dl.file_urls(spec, f))})")
        problems.append(f"missing {path}")
        return
    try:
        cache, meta, converted = higgs.ensure_cache(path, resolve_cache_dir(), progress=progress)
    except DataError as exc:
        lines.append(f"  {f.name:<16} BAD: {exc}")
        problems.append(str(exc))
        return
    status = check(f, meta["source_md5"]).status
    lines.append(f"  {f.name:<16} {path.stat().st_size:>14,} bytes  {meta['rows']:,} rows x {meta['columns']} "
                 f"columns (label + 28 features; 21 used)  checksum {status}")
    counts = meta["label_counts"]
    lines.append(f"  labels: {int(counts['0']):,} background (0), {int(counts['1']):,} signal (1)")
    lines.append(f"  binary cache: {cache} ({'converted now' if converted else 'reused'})")
    warn: List[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n_train, n_test = higgs.split_rows(meta["rows"], higgs.DEFAULT_TRAIN_ROWS, higgs.DEFAULT_TEST_ROWS, warn)
    lines.append(f"  default split: {n_train:,} training + {n_test:,} validation rows from the start of the file")
    lines.extend(f"  note: {w}" for w in warn)


def _writable(folder: Path) -> bool:
    """Whether a download could create files in ``folder`` (or in its nearest existing parent)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return os.access(folder, os.W_OK)


def verify_dataset(name: str, data_dir=None, progress: bool = True) -> Tuple[bool, List[str]]:
    """Check every file of a dataset without downloading. Returns (all good, report lines).

    For HIGGS this builds the binary cache if needed: converting is what reads (and so checks) every row.
    """
    spec = get_spec(name)
    folder, origin = locate(spec, data_dir)
    lines = [f"{spec.name} ({spec.title}) in {folder}  [{origin}]"]
    problems: List[str] = []
    (_image_report if spec.kind == "images" else _higgs_report)(spec, folder, lines, problems, progress)
    if problems:
        lines.append(f"PROBLEMS ({len(problems)}):")
        lines.extend(f"  - {p}" for p in problems)
        target = f"--data-dir {folder.parent}" if _writable(folder) else "--data-dir <a writable folder>"
        lines.append(
            f"fix: `redr data download --dataset {spec.name} {target}` (needs network; resumes and verifies), "
            f"or copy the official files into {folder}/; --data-dir or ${DATA_DIR_ENV} choose the folder"
            + ("" if _writable(folder) else f" ({folder} is read-only)")
        )
    else:
        lines.append(f"OK: {spec.name} is complete and readable.")
    return not problems, lines
