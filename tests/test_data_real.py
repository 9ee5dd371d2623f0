"""The real offline copies (../shared/data or $REDR_DATA_DIR): Fashion-MNIST, HIGGS, the partial KMNIST; API and CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from redr.cli import main
from redr.data import load_dataset


OFFLINE_HIGGS_BYTES = 11_839_138  # the documented 46,240-row copy; the 11M-row original would take minutes


def offline_higgs(data_dir):
    path = data_dir / "higgs" / "HIGGS.csv.gz"
    if not path.is_file() or path.stat().st_size != OFFLINE_HIGGS_BYTES:
        pytest.skip(f"{path} is not the documented 46,240-row offline copy")
    return path


def partial_kmnist(data_dir):
    folder = data_dir / "kmnist"
    if len(list(folder.glob("*-ubyte.gz"))) == 4:
        pytest.skip(f"{folder} holds the complete KMNIST")
    return folder


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
    offline_higgs(shared_data_dir)
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
    partial_kmnist(shared_data_dir)
    from redr.errors import DataError

    with pytest.raises(DataError) as err:
        load_dataset("kmnist", data_dir=shared_data_dir, download=False)
    msg = str(err.value)
    assert "missing 3 file(s)" in msg and "train-labels" not in msg


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_partial_kmnist_names_exactly_the_missing_files(shared_data_dir, capsys):
    partial_kmnist(shared_data_dir)
    code, out, err = run(capsys, "data", "verify", "--dataset", "kmnist", "--data-dir", str(shared_data_dir))
    assert code == 1 and "problems found" in err
    problems = out.split("PROBLEMS (3):")[1]
    missing = sorted(line.split("/")[-1] for line in problems.splitlines() if line.startswith("  - missing "))
    assert missing == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz"]
    assert "train-labels-idx1-ubyte.gz         29,497 bytes  60,000 labels" in out
    assert "checksum ok (official md5)" in out and "redr data download --dataset kmnist" in out


def test_verify_fashion_mnist(shared_data_dir, capsys):
    code, out, _ = run(capsys, "data", "verify", "--dataset", "fashion-mnist", "--data-dir", str(shared_data_dir))
    assert code == 0
    assert "train split: 60,000 rows, 10 classes, 6,000 each" in out
    assert "test split: 10,000 rows, 10 classes, 1,000 each" in out
    assert out.count("checksum ok") == 4 and "OK: fashion-mnist" in out


def test_verify_higgs(shared_data_dir, capsys):
    offline_higgs(shared_data_dir)
    code, out, _ = run(capsys, "data", "verify", "--dataset", "higgs", "--data-dir", str(shared_data_dir))
    assert code == 0 and "46,240 rows x 29 columns" in out and "21,783 background (0), 24,457 signal (1)" in out
    assert "38,533 training + 7,707 validation" in out
