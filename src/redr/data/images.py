"""KMNIST / Fashion-MNIST: four idx files -> whole-split tensors on the device, pixels scaled to [0, 1].

Every file is checked for structure (gzip, magic, shape, length, label range) before its checksum, so a
broken file gets the most specific message; then the checksum guards against a well-formed but wrong file
(for example MNIST copied into the kmnist folder).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple
import warnings

import numpy as np
import torch

from redr.data import checksums, idx
from redr.data.registry import DatasetSpec, FileSpec
from redr.errors import DataError

#: Pixel normalisation: uint8 -> float32 / 255, so 0 (background) -> 0.0 and 255 -> 1.0. No mean/std shift.
PIXEL_SCALE = 255.0


def fix_hint(spec: DatasetSpec) -> str:
    return f"delete it and run `redr data download --dataset {spec.name}` (or copy a good file in its place)"


def read_file(
    spec: DatasetSpec, fspec: FileSpec, path: Path, *, verify: bool = True
) -> Tuple[np.ndarray, checksums.Checksum]:
    """Parse and check one idx ``.gz`` file. DataError (naming the file and the fix) on any problem."""
    fix = fix_hint(spec)
    gz, raw = idx.read_gz(path, fix)
    is_images = fspec.role.endswith("images")
    array = idx.parse_idx(raw, path, idx.IMAGES_MAGIC if is_images else idx.LABELS_MAGIC, fix)
    if is_images and tuple(array.shape[1:]) != tuple(spec.image_shape[1:]):
        raise DataError(f"{path}: images are {array.shape[1:]}, expected {spec.image_shape[1:]} for {spec.name}; {fix}")
    if not is_images and array.size and int(array.max()) >= spec.num_classes:
        raise DataError(f"{path}: label {int(array.max())} is out of range 0..{spec.num_classes - 1}; {fix}")
    md5 = checksums.md5_bytes(gz)
    raw_md5 = checksums.md5_bytes(raw) if fspec.raw_md5 is not None and md5 != fspec.md5 else None
    result = checksums.check(fspec, md5, raw_md5)
    if verify and result.ok is False:
        raise DataError(
            f"{path}: not the official {spec.title} {fspec.name}: {result.status.removeprefix('MISMATCH: ')}; {fix}, "
            "or pass verify=False to use your own file in this format on purpose"
        )
    return array, result


def read_split(
    spec: DatasetSpec, directory: Path, split: str, *, verify: bool = True
) -> Tuple[np.ndarray, np.ndarray, Dict[str, dict]]:
    """Images and labels of ``split`` ("train" or "test") plus per-file info; checks that their counts agree."""
    found = {}
    files = {}
    for role in (f"{split}_images", f"{split}_labels"):
        fspec = spec.file(role)
        path = directory / fspec.name
        array, result = read_file(spec, fspec, path, verify=verify)
        found[role] = array
        files[fspec.name] = {
            "path": str(path),
            "bytes": path.stat().st_size,
            "md5": result.md5,
            "checksum": result.status,
            "checksum_enforced": verify,
        }
    images, labels = found[f"{split}_images"], found[f"{split}_labels"]
    if len(images) != len(labels):
        img, lab = spec.file(f"{split}_images").name, spec.file(f"{split}_labels").name
        raise DataError(
            f"{directory / lab}: {len(labels):,} labels but {directory / img} has {len(images):,} images; the two "
            f"files are from different sets or one is damaged; {fix_hint(spec)}"
        )
    return images, labels, files


def take_rows(available: int, requested: Optional[int], what: str, warn: list) -> int:
    """How many rows to use: all by default, else the first ``requested`` (warning if fewer exist)."""
    if requested is None:
        return available
    if requested > available:
        message = f"{what}: {requested:,} rows requested but only {available:,} exist; using {available:,}"
        warnings.warn(message, stacklevel=4)
        warn.append(message)
        return available
    return requested


def to_tensors(images: np.ndarray, labels: np.ndarray, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """uint8 goes to the device first (4x less to copy), then becomes float32 / 255 there; labels int64."""
    x = torch.from_numpy(np.ascontiguousarray(images).reshape(len(images), int(np.prod(images.shape[1:]))).copy()).to(device)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    return x.to(torch.float32).div_(PIXEL_SCALE), y


def load_images(
    spec: DatasetSpec,
    directory: Path,
    *,
    device="cpu",
    train_rows: Optional[int] = None,
    test_rows: Optional[int] = None,
    verify: bool = True,
):
    """``(train_x, train_y, test_x, test_y, info)`` for an image dataset in ``directory``."""
    info = {"files": {}, "rows": {}, "warnings": [], "normalization": "pixels uint8 / 255 -> float32 in [0, 1]"}
    tensors = []
    for split, requested in (("train", train_rows), ("test", test_rows)):
        images, labels, files = read_split(spec, directory, split, verify=verify)
        n = take_rows(len(images), requested, f"{spec.name} {split}", info["warnings"])
        info["files"].update(files)
        info["rows"][split] = {"used": n, "available": int(len(images))}
        info["rows"][split]["class_counts"] = np.bincount(labels[:n], minlength=spec.num_classes).tolist()
        tensors.extend(to_tensors(images[:n], labels[:n], device))
    return (*tensors, info)
