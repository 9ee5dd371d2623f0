"""Shared fixtures. Real-data tests use the offline copies in ``../shared/data`` (or ``$REDR_DATA_DIR``)
and are skipped, with the reason, on a machine that has neither."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# A relative $REDR_DATA_DIR (the README's `REDR_DATA_DIR=../shared/data`) is relative to where pytest was
# started; tests that change directory or start processes elsewhere would lose it, so it is made absolute once.
if os.environ.get("REDR_DATA_DIR", "").strip():
    os.environ["REDR_DATA_DIR"] = str(Path(os.environ["REDR_DATA_DIR"].strip()).expanduser().absolute())


def _shared_data_dir() -> Path | None:
    env = os.environ.get("REDR_DATA_DIR")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    path = _shared_data_dir()
    if path is None:
        pytest.skip("no offline data: set REDR_DATA_DIR to a folder with fashion-mnist/ and higgs/")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Derived caches go to a per-session temporary folder, never to the user's cache or the data dir."""
    monkeypatch.setenv("REDR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "redr-cache"))


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
