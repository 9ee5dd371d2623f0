"""The real offline copies (../shared/data or $REDR_DATA_DIR): Fashion-MNIST, HIGGS, the partial KMNIST."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from redr.data import load_dataset


def snapshot(folder):
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_fashion_mnist(shared_data_dir):
    before = snapshot(shared_data_dir)
    ds = load_dataset("fashion-mnist", data_dir=shared_data_dir, download=False, progress=False)
    assert ds.train_x.shape == (60_000, 784) and ds.test_x.shape == (10_000, 784)
    assert ds.train_x.dtype == torch.float32 and 0.0 <= ds.train_x.min() and ds.train_x.max() == 1.0
    assert torch.bincount(ds.train_y).tolist() == [6000] * 10
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10
    assert all(f["checksum"].startswith("ok") for f in ds.info["files"].values())
    assert json.loads(json.dumps(ds.info)) == ds.info  # goes into the run's config.json
    assert snapshot(shared_data_dir) == before  # nothing written into the data dir


def test_higgs(shared_data_dir):
    before = snapshot(shared_data_dir)
    with pytest.warns(UserWarning, match="46,240 rows, fewer than"):
        ds = load_dataset("higgs", data_dir=shared_data_dir, download=False, progress=False)
    assert ds.info["rows"]["available"] == 46_240
    assert ds.train_x.shape == (38_533, 21) and ds.test_x.shape == (7_707, 21)
    assert ds.info["warnings"] and "38,533 + 7,707" in ds.info["warnings"][0]
    # every value equals the documented full-precision rows (the CSV holds them shuffled)
    ref = np.load(shared_data_dir / "higgs" / "higgs_uci_subset_float32.npz")
    ours = np.concatenate([np.c_[ds.train_y.numpy(), ds.train_x.numpy()], np.c_[ds.test_y.numpy(), ds.test_x.numpy()]])
    theirs = np.c_[ref["y"].astype(np.float32), ref["X"][:, :21]]
    assert np.array_equal(ours[np.lexsort(ours.T[::-1])], theirs[np.lexsort(theirs.T[::-1])])
    assert ds.info["files"]["HIGGS.csv.gz"]["md5"] == "4e54b5909ab7c7302f838118edd92d5b"
    assert json.loads(json.dumps(ds.info)) == ds.info
    assert snapshot(shared_data_dir) == before


def test_partial_kmnist(shared_data_dir):
    from redr.errors import DataError

    with pytest.raises(DataError) as err:
        load_dataset("kmnist", data_dir=shared_data_dir, download=False)
    msg = str(err.value)
    assert "missing 3 file(s)" in msg and "train-labels" not in msg
