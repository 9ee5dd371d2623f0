"""The same seed gives the same metrics as before the architecture change, for every algorithm.

``tests/data/pinned_metrics.json`` holds the metrics (every column but the timings) of a short Fashion-MNIST
run per algorithm, written by the code of commit 0a7cd20, before redistribution, training and the sparse
layer were reorganised. The runs here must reproduce them bit for bit: a refactor that changes a single
rounding, a draw from a generator or the order of two kernels shows up as a difference. If a later change
is *meant* to change the numbers, regenerate the file and say why in the commit.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from redr.runtime import configure_threads
from redr.training.api import train
from redr.training.config import RunConfig

PINNED = json.loads((Path(__file__).parent / "data" / "pinned_metrics.json").read_text())["runs"]
TIMING = {"epoch_seconds", "redistribution_seconds", "peak_memory_bytes"}


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    configure_threads(1)  # the pinned numbers were computed with one thread (reductions round by thread count)
    yield
    configure_threads(before)


def same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("algorithm", sorted(PINNED))
def test_metrics_are_the_ones_before_the_architecture_change(algorithm, shared_data_dir, one_thread):
    config = RunConfig.from_options(preset="kmnist", dataset="fashion-mnist", algorithm=algorithm, hidden=[64, 64],
                                    epochs=3, batch_size=128, lr=5e-4, augment=True, train_rows=1024, test_rows=256,
                                    induced_loss_rows=256, seed=3, device="cpu", data_dir=str(shared_data_dir))
    rows = train(config, None, progress=False, log=lambda *_: None).metrics
    expected = PINNED[algorithm]
    assert len(rows) == len(expected)
    for got, want in zip(rows, expected):
        got = {k: v for k, v in got.items() if k not in TIMING}
        assert set(got) == set(want), (set(got) ^ set(want))
        differ = {k: (got[k], want[k]) for k in want if not same(got[k], want[k])}
        assert not differ, f"epoch {want['epoch']}: {differ}"
