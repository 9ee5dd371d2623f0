"""Data-dir resolution order and the dataset registry."""
from __future__ import annotations

import dataclasses

import pytest

from redr.data import DATASETS, resolve_cache_dir, resolve_data_dir
from redr.data.dataset import locate
from redr.data.fixtures import write_image_dataset
from redr.data.registry import FASHION_MNIST, get_spec
from redr.errors import UsageError


def test_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("REDR_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.setenv("REDR_DATA_DIR", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "redr"
    monkeypatch.delenv("REDR_CACHE_DIR")
    assert resolve_cache_dir() == tmp_path / "home" / ".cache" / "redr"
    monkeypatch.setenv("REDR_CACHE_DIR", str(tmp_path / "c"))
    assert resolve_cache_dir() == tmp_path / "c"


def test_registry():
    assert list(DATASETS) == ["kmnist", "fashion-mnist", "higgs"]
    with pytest.raises(TypeError):
        DATASETS["x"] = None  # read-only
    assert get_spec("Fashion_MNIST") is FASHION_MNIST
    with pytest.raises(UsageError, match="choose one of: kmnist, fashion-mnist, higgs"):
        get_spec("mnist")
    assert "/usr/share/datasets/fashion-mnist" in FASHION_MNIST.extra_dirs


def test_system_copy_is_used_only_when_the_data_dir_lacks_files(tmp_path):
    system = tmp_path / "usr-share"
    write_image_dataset(system)
    spec = dataclasses.replace(FASHION_MNIST, extra_dirs=(str(system),))
    folder, origin = locate(spec, tmp_path / "data")
    assert folder == system and origin == "system-wide copy"
    write_image_dataset(tmp_path / "data" / "fashion-mnist")
    assert locate(spec, tmp_path / "data")[0] == tmp_path / "data" / "fashion-mnist"
    assert locate(spec, tmp_path / "empty") == (system, "system-wide copy")
    no_system = dataclasses.replace(FASHION_MNIST, extra_dirs=())
    assert locate(no_system, tmp_path / "empty") == (tmp_path / "empty" / "fashion-mnist", "argument (--data-dir)")
