"""HIGGS on generated csv.gz files in the UCI format: conversion, cache keying, splits and bad input."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from redr.data import load_dataset
from redr.data.fixtures import higgs_rows, write_gz, write_higgs_csv_gz
from redr.errors import DataError, UsageError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("REDR_CACHE_DIR", str(path))
    return path


def load(root, **kw):
    return load_dataset("higgs", data_dir=root, download=False, progress=False, **kw)


def write(root, text: str):
    return write_gz(root / "higgs" / "HIGGS.csv.gz", text.encode())


def cache_entries(cache):
    return sorted(p.name for p in (cache / "converted").iterdir()) if (cache / "converted").exists() else []


def test_rows_features_and_labels(tmp_path, cache):
    rows = write_higgs_csv_gz(tmp_path / "higgs" / "HIGGS.csv.gz", n=600)
    ds = load(tmp_path, train_rows=500, test_rows=100)
    assert ds.train_x.shape == (500, 21) and ds.test_x.shape == (100, 21)
    assert np.array_equal(ds.train_x.numpy(), rows[:500, 1:22])  # raw values, first 21 features
    assert np.array_equal(ds.test_x.numpy(), rows[500:, 1:22])  # validation = the next rows, disjoint
    assert np.array_equal(ds.train_y.numpy(), rows[:500, 0]) and str(ds.train_y.dtype) == "torch.float32"
    assert (ds.task, ds.num_classes, ds.image_shape) == ("binary", 1, None)
    assert ds.info["rows"]["available"] == 600 and ds.info["warnings"] == []
    assert ds.info["files"]["HIGGS.csv.gz"]["checksum"].startswith("not checked")


def test_fewer_rows_than_requested_keeps_ratio_and_warns(tmp_path, cache):
    write_higgs_csv_gz(tmp_path / "higgs" / "HIGGS.csv.gz", n=1200)
    with pytest.warns(UserWarning, match="fewer than the 500,000 training"):
        ds = load(tmp_path)  # defaults 500,000 + 100,000
    assert (len(ds.train_x), len(ds.test_x)) == (1000, 200)
    assert "1,000 + 200" in ds.info["warnings"][0]
    with pytest.raises(UsageError, match="train_rows"):
        load(tmp_path, train_rows=0)


def test_converted_once_and_reconverted_when_source_changes(tmp_path, cache):
    src = tmp_path / "higgs" / "HIGGS.csv.gz"
    write_higgs_csv_gz(src, n=300, seed=1)
    first = load(tmp_path, train_rows=200, test_rows=100)
    again = load(tmp_path, train_rows=200, test_rows=100)
    assert first.info["cache"]["converted_now"] and not again.info["cache"]["converted_now"]
    rows = write_higgs_csv_gz(src, n=300, seed=2)  # same size class, different content
    changed = load(tmp_path, train_rows=200, test_rows=100)
    assert changed.info["cache"]["converted_now"] and changed.info["cache"]["key"] != first.info["cache"]["key"]
    assert np.array_equal(changed.train_x.numpy(), rows[:200, 1:22])
    assert len(cache_entries(cache)) == 2  # no temporary folders left
    assert sorted(p.name for p in (tmp_path / "higgs").iterdir()) == ["HIGGS.csv.gz"]  # nothing beside the source


def test_incomplete_cache_is_rebuilt(tmp_path, cache):
    write_higgs_csv_gz(tmp_path / "higgs" / "HIGGS.csv.gz", n=100)
    ds = load(tmp_path, train_rows=80, test_rows=20)
    data = cache / "converted" / cache_entries(cache)[0] / "data.f32"
    data.write_bytes(data.read_bytes()[:100])
    again = load(tmp_path, train_rows=80, test_rows=20)
    assert again.info["cache"]["converted_now"] and np.array_equal(again.train_x.numpy(), ds.train_x.numpy())


def _rows_text(n=50):
    return [",".join(f"{v:.18e}" for v in row) for row in higgs_rows(n).astype(np.float64)]


@pytest.mark.parametrize(
    "line, message",
    [
        ("1.0,2.0,3.0", r"line 7: 3 columns, expected 29"),
        ("1.0," + ",".join(["0.5"] * 27) + ",abc", r"line 7: column 29 is not a number: 'abc'"),
        ("3.0," + ",".join(["0.5"] * 28), r"line 7: label \(column 1\) is 3.0, expected 0 or 1"),
        ("1.0," + ",".join(["nan"] * 28), r"line 7: column 2 is not finite"),
    ],
)
def test_bad_csv_rows(tmp_path, cache, line, message):
    lines = _rows_text()
    lines[6] = line
    write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message) as err:
        load(tmp_path)
    assert "HIGGS.csv.gz" in str(err.value) and "redr data download --dataset higgs" in str(err.value)
    assert cache_entries(cache) == []  # nothing half-written


def test_every_row_short_is_still_caught(tmp_path, cache):
    write(tmp_path, "\n".join(",".join(["1.0"] * 28) for _ in range(5)) + "\n")
    with pytest.raises(DataError, match="line 1: 28 columns, expected 29"):
        load(tmp_path)


def test_truncated_gz(tmp_path, cache):
    src = tmp_path / "higgs" / "HIGGS.csv.gz"
    write_higgs_csv_gz(src, n=2000)
    src.write_bytes(src.read_bytes()[:-5000])
    with pytest.raises(DataError, match=r"HIGGS.csv.gz: truncated gzip file"):
        load(tmp_path)
    assert cache_entries(cache) == []


def test_corrupt_gz_crc(tmp_path, cache):
    src = tmp_path / "higgs" / "HIGGS.csv.gz"
    write_higgs_csv_gz(src, n=200)
    data = bytearray(src.read_bytes())
    data[-8] ^= 0xFF  # the stored CRC32
    src.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"corrupt gzip data"):
        load(tmp_path)
    assert cache_entries(cache) == []


def test_no_trailing_newline_and_blank_lines(tmp_path, cache):
    lines = _rows_text(10)
    write(tmp_path, "\n".join(lines[:5]) + "\n\n" + "\n".join(lines[5:]))
    ds = load(tmp_path, train_rows=8, test_rows=2)
    assert len(ds.train_x) + len(ds.test_x) == 10


def test_read_only_source_and_unwritable_cache(tmp_path, monkeypatch):
    write_higgs_csv_gz(tmp_path / "higgs" / "HIGGS.csv.gz", n=50)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("REDR_CACHE_DIR", str(blocker))
    with pytest.raises(DataError, match="REDR_CACHE_DIR"):
        load(tmp_path, train_rows=40, test_rows=10)
    assert gzip.open(tmp_path / "higgs" / "HIGGS.csv.gz").read(3)  # source untouched
