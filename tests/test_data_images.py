"""Image datasets (idx gz) on small generated files in the real format: loading and every bad input."""
from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
import torch

from redr.data import load_dataset
from redr.data.fixtures import idx_bytes, write_gz, write_image_dataset
from redr.errors import DataError, UsageError


@pytest.fixture
def kmnist_dir(tmp_path):
    arrays = write_image_dataset(tmp_path / "kmnist", n_train=60, n_test=20)
    return tmp_path, arrays


def load(root, **kw):
    kw.setdefault("verify", False)
    return load_dataset("kmnist", data_dir=root, download=False, progress=False, **kw)


def test_generated_files_load_exactly(kmnist_dir):
    root, arrays = kmnist_dir
    ds = load(root)
    assert ds.train_x.shape == (60, 784) and ds.test_x.shape == (20, 784)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    expected = arrays["train-images-idx3-ubyte.gz"].reshape(60, -1).astype(np.float32) / 255
    assert np.array_equal(ds.train_x.numpy(), expected)
    assert ds.train_x.min() >= 0 and ds.train_x.max() <= 1
    assert ds.train_y.tolist() == arrays["train-labels-idx1-ubyte.gz"].tolist()
    assert (ds.task, ds.num_classes, ds.image_shape) == ("multiclass", 10, (1, 28, 28))
    assert ds.info["rows"]["train"] == {"used": 60, "available": 60, "class_counts": [6] * 10}
    assert "MISMATCH" in ds.info["files"]["train-images-idx3-ubyte.gz"]["checksum"]
    assert ds.info["files"]["train-images-idx3-ubyte.gz"]["checksum_enforced"] is False


def test_checksum_is_enforced_by_default(kmnist_dir):
    root, _ = kmnist_dir
    with pytest.raises(DataError) as err:
        load(root, verify=True)
    msg = str(err.value)
    assert "not the official Kuzushiji-MNIST" in msg and "bdb82020997e1d708af4cf47b453dcf7" in msg
    assert "redr data download --dataset kmnist" in msg


def test_row_limits_and_warning(kmnist_dir):
    root, _ = kmnist_dir
    assert load(root, train_rows=10, test_rows=5).train_x.shape == (10, 784)
    with pytest.warns(UserWarning, match="100 rows requested but only 20 exist"):
        ds = load(root, test_rows=100)
    assert ds.test_x.shape[0] == 20 and ds.info["warnings"]
    with pytest.raises(UsageError, match="train_rows"):
        load(root, train_rows=-1)


def test_truncated_gz(kmnist_dir):
    root, _ = kmnist_dir
    path = root / "kmnist" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: truncated gzip file.*redr data download"):
        load(root)


def test_not_gzip(kmnist_dir):
    root, _ = kmnist_dir
    (root / "kmnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"<html>404 not found</html>")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: corrupt or not a gzip file"):
        load(root)


def test_wrong_magic(kmnist_dir):
    root, arrays = kmnist_dir
    # a label file where an image file belongs
    write_gz(root / "kmnist" / "train-images-idx3-ubyte.gz", idx_bytes(arrays["train-labels-idx1-ubyte.gz"]))
    with pytest.raises(DataError) as err:
        load(root)
    assert "train-images-idx3-ubyte.gz: wrong magic number 2049" in str(err.value)
    assert "expected 2051" in str(err.value) and "redr data download" in str(err.value)


def test_length_does_not_match_header(kmnist_dir):
    root, arrays = kmnist_dir
    raw = idx_bytes(arrays["train-images-idx3-ubyte.gz"])
    write_gz(root / "kmnist" / "train-images-idx3-ubyte.gz", raw[:-100])
    with pytest.raises(DataError, match=r"header says shape \(60, 28, 28\).*truncated"):
        load(root)


def test_label_count_differs_from_images(kmnist_dir):
    root, arrays = kmnist_dir
    write_gz(root / "kmnist" / "train-labels-idx1-ubyte.gz", idx_bytes(arrays["train-labels-idx1-ubyte.gz"][:59]))
    with pytest.raises(DataError) as err:
        load(root)
    msg = str(err.value)
    assert "train-labels-idx1-ubyte.gz: 59 labels but" in msg and "train-images-idx3-ubyte.gz has 60 images" in msg


def test_label_out_of_range(kmnist_dir):
    root, _ = kmnist_dir
    write_gz(root / "kmnist" / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.full(20, 12, np.uint8)))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: label 12 is out of range 0..9"):
        load(root)


def test_wrong_image_size(kmnist_dir):
    root, _ = kmnist_dir
    write_gz(root / "kmnist" / "t10k-images-idx3-ubyte.gz", idx_bytes(np.zeros((20, 32, 32), np.uint8)))
    with pytest.raises(DataError, match=r"images are \(32, 32\), expected \(28, 28\)"):
        load(root)


def test_partial_directory_without_download(kmnist_dir):
    root, _ = kmnist_dir
    (root / "kmnist" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        load(root)
    msg = str(err.value)
    assert "missing 1 file(s)" in msg and "t10k-images-idx3-ubyte.gz (md5 5c965bf0a639b31b8f53240b1b52f4d7)" in msg
    assert "http://codh.rois.ac.jp/kmnist/dataset/kmnist/t10k-images-idx3-ubyte.gz" in msg
    assert "--data-dir" in msg and "REDR_DATA_DIR" in msg


def test_read_only_data_dir_stays_unchanged(kmnist_dir):
    root, _ = kmnist_dir
    folder = root / "kmnist"

    def snapshot():
        return sorted((p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))

    before = snapshot()
    for p in (folder, root):
        p.chmod(0o555)
    try:
        ds = load(root)
    finally:
        for p in (root, folder):
            p.chmod(0o755)
    assert ds.train_x.shape == (60, 784)
    assert snapshot() == before


def test_gz_content_checksum_accepts_recompressed_copy(tmp_path):
    """A re-compressed file (as Debian ships Fashion-MNIST) passes through its decompressed md5."""
    from redr.data import checksums
    from redr.data.registry import FileSpec

    raw = idx_bytes(np.arange(10, dtype=np.uint8))
    official = gzip.compress(raw, compresslevel=9, mtime=0)
    spec = FileSpec("x.gz", "test_labels", checksums.md5_bytes(official), checksums.md5_bytes(raw))
    path = write_gz(tmp_path / "x.gz", raw)  # level 1: other bytes, same content
    assert checksums.md5_file(path) != spec.md5
    assert checksums.check_file(spec, path).ok is True
    path.write_bytes(gzip.compress(raw + b"x"))
    result = checksums.check_file(spec, path)
    assert result.ok is False and spec.md5 in result.status and spec.raw_md5 in result.status
    assert not os.path.exists(tmp_path / "x.gz.part")
