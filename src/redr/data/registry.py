"""What each dataset consists of: file names, official URLs and checksums (immutable).

Checksums come from ``../shared/data/README.md`` (official values). Fashion-MNIST also lists the md5 of the
*decompressed* content, because Debian re-compressed its copy (different ``.gz`` bytes, identical data).
UCI publishes no checksum for ``HIGGS.csv.gz``; its integrity is checked by gzip's CRC while converting.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Optional, Tuple


@dataclass(frozen=True)
class FileSpec:
    """One file of a dataset, as published upstream."""

    name: str
    role: str  # "train_images", "train_labels", "test_images", "test_labels" or "csv"
    md5: Optional[str]  # md5 of the file as downloaded (None: no official checksum)
    raw_md5: Optional[str] = None  # md5 of the decompressed content (accepts re-compressed copies)
    size: Optional[int] = None  # bytes of the official file, for messages only
    known: Tuple[Tuple[str, str], ...] = ()  # (md5, description) of other documented copies


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: where it comes from, how it looks once loaded."""

    name: str
    title: str
    kind: str  # "images" or "higgs"
    files: Tuple[FileSpec, ...]
    urls: Tuple[str, ...]  # base URLs, tried in order; a file's URL is base + file name
    task: str  # "multiclass" or "binary"
    num_classes: int
    image_shape: Optional[Tuple[int, int, int]]
    num_features: int  # inputs per row once loaded (images: C * H * W)
    extra_dirs: Tuple[str, ...] = ()  # system-wide copies looked at after the data dir

    def file(self, role: str) -> FileSpec:
        return next(f for f in self.files if f.role == role)


def _idx_files(md5: dict, raw_md5: dict | None = None, size: dict | None = None) -> Tuple[FileSpec, ...]:
    roles = {
        "train-images-idx3-ubyte.gz": "train_images",
        "train-labels-idx1-ubyte.gz": "train_labels",
        "t10k-images-idx3-ubyte.gz": "test_images",
        "t10k-labels-idx1-ubyte.gz": "test_labels",
    }
    return tuple(
        FileSpec(name, role, md5[name], (raw_md5 or {}).get(name), (size or {}).get(name))
        for name, role in roles.items()
    )


KMNIST = DatasetSpec(
    name="kmnist",
    title="Kuzushiji-MNIST",
    kind="images",
    files=_idx_files(
        md5={
            "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
            "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
            "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
            "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
        },
        size={
            "train-images-idx3-ubyte.gz": 18_165_135,
            "train-labels-idx1-ubyte.gz": 29_497,
            "t10k-images-idx3-ubyte.gz": 3_041_136,
            "t10k-labels-idx1-ubyte.gz": 5_120,
        },
    ),
    urls=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
    task="multiclass",
    num_classes=10,
    image_shape=(1, 28, 28),
    num_features=784,
)

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    title="Fashion-MNIST",
    kind="images",
    files=_idx_files(
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        raw_md5={
            "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
        },
    ),
    urls=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    task="multiclass",
    num_classes=10,
    image_shape=(1, 28, 28),
    num_features=784,
    extra_dirs=("/usr/share/datasets/fashion-mnist",),  # Debian package dataset-fashion-mnist
)

HIGGS = DatasetSpec(
    name="higgs",
    title="HIGGS (UCI)",
    kind="higgs",
    files=(
        FileSpec(
            "HIGGS.csv.gz",
            "csv",
            md5=None,
            known=(("4e54b5909ab7c7302f838118edd92d5b", "the documented 46,240-row offline copy"),),
        ),
    ),
    urls=("https://archive.ics.uci.edu/ml/machine-learning-databases/00280/",),
    task="binary",
    num_classes=1,
    image_shape=None,
    num_features=21,  # the low-level features; the paper drops the 7 high-level ones
)

#: The datasets ``load_dataset`` knows, by name (read-only).
DATASETS: Mapping[str, DatasetSpec] = MappingProxyType({s.name: s for s in (KMNIST, FASHION_MNIST, HIGGS)})


def get_spec(name: str) -> DatasetSpec:
    """The spec for ``name`` (case and ``_``/``-`` insensitive); UsageError listing the choices otherwise."""
    from redr.errors import UsageError

    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[key]
