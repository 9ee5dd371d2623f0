"""A finished data-parallel run exits 0 (issue 19).

A rank sometimes died at exit with ``terminate called without an active exception`` (SIGABRT) after writing
everything. The cause: ``torch.distributed.nn.functional`` binds ``group=group.WORLD`` as a default argument when
it is imported, and torch imports it lazily (the first ``torch.optim.Adam`` imports torch._dynamo, which imports
it) -- after ``init_process_group``. Ten function defaults then held the default group, so
``destroy_process_group()`` freed nothing: the gloo group and its threads were destroyed inside interpreter
finalization. :func:`redr.training.distributed.shutdown` must free them while the interpreter is alive.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from redr.training import distributed

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from /proc")


def thread_names() -> list[str]:
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # a thread that just ended
            pass
    return sorted(names)


def _worker(parallel, out):
    """What a training process does with the group (Adam, its step, gradient all-reduces), then shutdown()."""
    p = torch.nn.Parameter(torch.ones(64))
    optimizer = torch.optim.Adam([p], lr=1e-3)
    for _ in range(2):
        (p * p).sum().backward()
        parallel.reduce_gradients([p])
        optimizer.step()
    during = thread_names()
    distributed.shutdown()
    (out / f"rank{parallel.rank}.json").write_text(json.dumps({"during": during, "after": thread_names()}))


def test_shutdown_frees_the_process_group_and_its_gloo_threads(tmp_path):
    distributed.spawn(_worker, 2, (tmp_path,), threads=1)
    for rank in range(2):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert any("gloo" in name for name in seen["during"]), seen  # the check can see gloo's threads
        assert not [name for name in seen["after"] if "gloo" in name], seen


@pytest.mark.slow
def test_ten_two_process_runs_in_a_row_all_exit_0(tmp_path):
    """The issue's run (Redr-Gradient-Global, `redr train --nproc 2`), made tiny: synthetic data, 2 epochs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    for i in range(10):
        out = tmp_path / f"run{i}"
        done = subprocess.run([sys.executable, "-m", "redr", "train", "--nproc", "2", "--preset", "synthetic",
                               "--algorithm", "gradient-global", "--epochs", "2", "--train-rows", "256",
                               "--test-rows", "64", "--hidden", "16", "16", "--device", "cpu", "--no-progress",
                               "--out", str(out)], capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0 and "terminate called" not in done.stderr, (i, done.stderr[-3000:])
        assert done.stdout.count("done: ") == 1 and (out / "DONE").exists()
