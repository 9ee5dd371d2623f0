"""redr.runtime: the one thread set-up (numba's pool first, torch last) and the one device default and check.

Thread counts are process-wide and numba's pool starts once per process, so each check runs in a fresh process.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from redr.errors import UsageError
from redr.runtime import default_device, resolve_device

KERNEL = ("from redr.sparse import SparseLinear\n"
          "layer = SparseLinear(256, 128, 0.1, backend='numba')\n"
          "layer(torch.randn(32, 256)).sum().backward()\n")


def fresh(*blocks: str, **env) -> str:
    code = "\n".join(textwrap.dedent(block) for block in blocks)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("then", ["numba.set_num_threads(1)", "kernel"])
def test_starting_numba_after_torch_resets_torchs_threads(then):
    """The finding behind configure_threads' order (numba's OpenMP layer): set torch first, and the first start
    of numba's pool (by numba.set_num_threads, as test_resume's fixture did, or by the first parallel kernel)
    leaves torch with NUMBA_NUM_THREADS threads."""
    out = fresh("""
        import numba, torch
        before = torch.get_num_threads()
        torch.set_num_threads(1)
    """, KERNEL if then == "kernel" else then, """
        print(numba.threading_layer(), torch.get_num_threads())
    """, NUMBA_NUM_THREADS="2")
    layer, threads = out.split()
    if layer != "omp":
        pytest.skip(f"numba's {layer} threading layer does not share torch's OpenMP runtime")
    assert threads == "2"


def test_configure_threads_keeps_torchs_count_whatever_starts_later():
    out = fresh("""
        import torch
        from redr.runtime import configure_threads
        torch.set_num_threads(1)
        configure_threads()  # what the trainer does before any kernel runs
    """, KERNEL, """
        import numba
        numba.set_num_threads(1)
        print(torch.get_num_threads())
    """, NUMBA_NUM_THREADS="2")
    assert out == "1"


def test_configure_threads_sets_both_and_is_idempotent():
    out = fresh("""
        import numba, torch
        from redr.runtime import configure_threads
        configure_threads(1)
        configure_threads(1)
    """, KERNEL, """
        print(torch.get_num_threads(), numba.get_num_threads())
    """, NUMBA_NUM_THREADS="2")
    assert out == "1 1"


def test_the_trainer_keeps_the_callers_thread_count(tmp_path):
    out = fresh("""
        import torch
        torch.set_num_threads(1)
        from redr.training.api import train
        from redr.training.config import RunConfig
        config = RunConfig.from_options(dataset="synthetic", epochs=1, train_rows=128, test_rows=64, hidden=[32],
                                        backend="numba", device="cpu")
        train(config, None, progress=False, log=lambda *_: None)
        print(torch.get_num_threads())
    """, NUMBA_NUM_THREADS="2")
    assert out == "1"


def test_the_device_default_and_its_checks():
    assert default_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == torch.device(default_device())
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UsageError, match=r"^--device 'banana' is not a device \(cpu, cuda, cuda:1, \.\.\.\)$"):
        resolve_device("banana")
    with pytest.raises(UsageError, match=r"^--device meta: unsupported device type 'meta' \(cpu or cuda\)$"):
        resolve_device("meta")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        with pytest.raises(UsageError, match=r"^--device cuda: no CUDA device is available here \(use --device cpu\)$"):
            resolve_device("cuda")
    else:
        with pytest.raises(UsageError, match=rf"only {count} CUDA device\(s\) here"):
            resolve_device(f"cuda:{count}")
