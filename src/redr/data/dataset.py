"""``load_dataset``: find (or download) the files, check them, and return whole splits as device tensors.

The datasets are small enough (KMNIST 47 MB as uint8, HIGGS 600k x 21 floats = 50 MB) to live on the
training device, so training batches by index (:func:`redr.data.batch_indices`) instead of a DataLoader.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

import torch

from redr.data import checksums, download as dl, higgs, images
from redr.data.paths import data_dir_and_origin, resolve_cache_dir
from redr.data.registry import DatasetSpec, get_spec
from redr.errors import UsageError


@dataclass
class Dataset:
    """Whole train/test splits on one device. For HIGGS "test" is the validation rows."""

    train_x: torch.Tensor = field(repr=False)  # float32 (N, F)
    train_y: torch.Tensor = field(repr=False)  # int64 class ids, or float32 0/1 for a binary task
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    task: str  # "multiclass" or "binary"
    num_classes: int  # 10, or 1 for binary (one logit)
    image_shape: Optional[Tuple[int, int, int]]  # (C, H, W) of the flattened rows, None for tabular data
    info: dict = field(default_factory=dict, repr=False)  # JSON-serialisable provenance for the run's config
    val_x: Optional[torch.Tensor] = field(default=None, repr=False)  # rows held out of training (redr.data.validation)
    val_y: Optional[torch.Tensor] = field(default=None, repr=False)

    @property
    def num_features(self) -> int:
        return int(self.train_x.shape[1])

    def to(self, device) -> "Dataset":
        """The same dataset with its tensors on ``device``."""
        moved = {k: getattr(self, k).to(device) for k in ("train_x", "train_y", "test_x", "test_y", "val_x", "val_y")
                 if getattr(self, k) is not None}
        return dataclasses.replace(self, **moved)

    def __repr__(self) -> str:
        name = self.info.get("dataset", "?")
        return (
            f"Dataset({name}: train {tuple(self.train_x.shape)}, test {tuple(self.test_x.shape)}, {self.task}, "
            f"num_classes={self.num_classes}, image_shape={self.image_shape}, device={self.train_x.device})"
        )


def locate(spec: DatasetSpec, data_dir=None) -> Tuple[Path, str]:
    """The dataset folder: ``<data dir>/<name>`` unless only a system copy (e.g. Debian's) is complete."""
    root, origin = data_dir_and_origin(data_dir)
    primary = root / spec.name
    for folder, why in [(primary, origin)] + [(Path(d), "system-wide copy") for d in spec.extra_dirs]:
        if all((folder / f.name).is_file() for f in spec.files):
            return folder, why
    return primary, origin


def _check_rows(name: str, value) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise UsageError(f"{name} must be None or a whole number >= 0, got {value!r}")


def load_dataset(
    name: str,
    data_dir=None,
    device="cpu",
    train_rows: Optional[int] = None,
    test_rows: Optional[int] = None,
    download: bool = True,
    progress: bool = True,
    *,
    base_url: Optional[str] = None,
    verify: bool = True,
) -> Dataset:
    """Load ``"kmnist"``, ``"fashion-mnist"`` or ``"higgs"`` onto ``device``.

    Images: all rows by default (or the first ``train_rows``/``test_rows``), flattened to 784 floats in [0, 1].
    HIGGS: the first ``train_rows`` (default 500,000) rows for training and the next ``test_rows`` (default
    100,000) for validation, 21 raw features; with fewer rows in the file the same ratio is used, with a warning.
    Missing files are downloaded when ``download`` (from ``base_url``, a mirror laid out like the data dir, if
    given). ``verify=False`` accepts files whose checksum differs from the official one (your own data in the
    same format); structural checks always run.
    """
    spec = get_spec(name)
    _check_rows("train_rows", train_rows)
    _check_rows("test_rows", test_rows)
    device = torch.device(device)
    folder, origin = locate(spec, data_dir)
    downloaded = dl.ensure_files(spec, folder, download=download, base_url=base_url, progress=progress)
    if spec.kind == "images":
        *tensors, info = images.load_images(
            spec, folder, device=device, train_rows=train_rows, test_rows=test_rows, verify=verify
        )
    else:
        source = folder / spec.files[0].name
        *tensors, info = higgs.load_higgs(
            source, cache_root=resolve_cache_dir(), device=device, train_rows=train_rows, test_rows=test_rows,
            progress=progress,
        )
        check = checksums.check(spec.files[0], info.pop("source_md5"))
        info["files"] = {source.name: {"path": str(source), "bytes": source.stat().st_size, "md5": check.md5,
                                       "checksum": check.status}}
    info = {"dataset": spec.name, "title": spec.title, "dir": str(folder), "dir_origin": origin,
            "downloaded": sorted(downloaded), **info}
    return Dataset(*tensors, task=spec.task, num_classes=spec.num_classes, image_shape=spec.image_shape, info=info)
