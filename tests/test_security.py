"""A checkpoint is data, never code (issue 18).

A run directory whose checkpoint.pt (or checkpoint.prev.pt behind a corrupt newest one) was replaced by a
pickle carrying a ``__reduce__`` payload (``os.system("touch MARKER")``) is refused by ``redr train --resume``,
``redr.load_checkpoint`` and a 2-process ``redr train --nproc 2 --resume``, with an error naming the file and
the object, and the payload never runs: MARKER is absent afterwards. A checkpoint of format 1 (redr 0.1.0,
numpy's RNG state as a numpy array) still loads and resumes exactly like the same checkpoint in format 2.
"""
from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import redr
from redr.cli import main
from redr.training import checkpoint
from redr.training.checkpoint import CheckpointError, CheckpointFallbackWarning, content_digest

REPO = Path(__file__).resolve().parents[1]
BASE = ["--dataset", "synthetic", "--train-rows", "256", "--test-rows", "64", "--hidden", "16", "16", "--batch-size", "64",
        "--epochs", "2", "--density", "0.25", "--device", "cpu", "--no-progress"]


def cli(*args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``redr train ARGS`` in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["train", *map(str, args)])
    return code, out.getvalue(), err.getvalue()


class Payload:
    """Unpickling this runs ``touch <marker>`` (what an attacker would make ``os.system`` do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_payload(path: Path, marker: Path, kind: str) -> None:
    """Replace the checkpoint ``path`` by one carrying the payload: a real redr checkpoint (format, checksum and
    all) with one payload entry saved by torch.save, or a plain pickle."""
    if kind == "torch-zip":
        state = checkpoint.read(path)
        state["model"]["0.values"] = Payload(marker)
        torch.save(state, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump({"format_version": checkpoint.FORMAT_VERSION, "model": Payload(marker)}, fh)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A finished 2-epoch synthetic run: checkpoint.pt (epoch 2) and checkpoint.prev.pt (epoch 1)."""
    out = tmp_path_factory.mktemp("base") / "run"
    assert cli(*BASE, "--out", out)[0] == 0
    return out


@pytest.fixture
def run(base_run, tmp_path):
    shutil.copytree(base_run, tmp_path / "run")
    return tmp_path / "run"


#: (which file carries the payload, what happens to the other one, the refusal the error must contain)
SCENARIOS = {
    "newest": (checkpoint.CHECKPOINT, None, "checkpoint.pt: holds objects that are not weights: posix.system"),
    "previous-behind-corrupt-newest": (checkpoint.PREVIOUS, checkpoint.CHECKPOINT,
                                       "checkpoint.prev.pt: holds objects that are not weights: posix.system"),
}


def arm(run: Path, scenario: str, kind: str) -> Path:
    """Put the payload into ``run`` as the scenario says; returns the marker the payload would create."""
    target, corrupt, _ = SCENARIOS[scenario]
    marker = run.parent / "PWNED"
    write_payload(run / target, marker, kind)
    if corrupt:
        truncate(run / corrupt)
    else:  # no usable fallback either: the refusal must not be hidden behind a resume from the previous one
        (run / checkpoint.PREVIOUS).unlink()
    return marker


def test_the_payload_is_real(run):
    """The test's payload does run when unpickled the unsafe way (so its marker's absence means something)."""
    marker = run.parent / "PWNED"
    write_payload(run / checkpoint.CHECKPOINT, marker, "plain-pickle")
    pickle.loads((run / checkpoint.CHECKPOINT).read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("kind", ["torch-zip", "plain-pickle"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_resume_refuses_a_payload_checkpoint_without_running_it(run, scenario, kind):
    marker = arm(run, scenario, kind)
    code, out, err = cli("--resume", run, "--no-progress")
    assert code == 1 and "resuming" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: no usable checkpoint in {run}: "), err
    assert SCENARIOS[scenario][2] in lines[0] and "nothing in it was run" in lines[0]
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["torch-zip", "plain-pickle"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_load_checkpoint_refuses_a_payload_checkpoint_without_running_it(run, scenario, kind):
    marker = arm(run, scenario, kind)
    with pytest.raises(CheckpointError, match=re.escape(SCENARIOS[scenario][2])):
        redr.load_checkpoint(run)
    file = run / SCENARIOS[scenario][0]
    with pytest.raises(CheckpointError, match=r"^no usable checkpoint: \S+: holds objects that are not weights"):
        redr.load_checkpoint(file)
    with pytest.raises(CheckpointError, match=r"^holds objects that are not weights: posix.system"):
        checkpoint.read(file)
    assert not marker.exists()


def test_a_payload_newest_falls_back_to_a_safe_previous_one(run):
    marker = run.parent / "PWNED"
    write_payload(run / checkpoint.CHECKPOINT, marker, "torch-zip")
    with pytest.warns(CheckpointFallbackWarning, match="holds objects that are not weights: posix.system.*"
                                                       "using the previous checkpoint checkpoint.prev.pt .epoch 1"):
        model, _ = redr.load_checkpoint(run)
    assert torch.equal(model.state_dict()["0.values"], checkpoint.read(run / checkpoint.PREVIOUS)["model"]["0.values"])
    assert not marker.exists()


def test_numpy_arrays_are_refused_outside_format_1_and_with_anything_else(run):
    """Format 1's numpy classes are the only addition to torch's weights-only defaults, and only for format 1."""
    path = run / checkpoint.CHECKPOINT
    state = checkpoint.read(path)
    state["rng"]["numpy"] = np.random.get_state()
    state["digest"] = content_digest(state)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="holds numpy arrays, which only format-1 checkpoints may"):
        checkpoint.read(path)
    marker = run.parent / "PWNED"
    state["format_version"], state["metrics"] = 1, Payload(marker)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="^holds objects that are not weights: posix.system"):
        checkpoint.read(path)
    assert not marker.exists()


def test_no_reader_can_unpickle_unsafely():
    """One function deserializes checkpoints (checkpoint._deserialize), always weights-only."""
    loads = []
    for file in sorted((REPO / "src").rglob("*.py")):
        text = file.read_text()
        assert "weights_only=False" not in text, file
        assert not re.search(r"\bpickle\.loads?\(|\bUnpickler\(", text), file
        loads += [(file.name, text[:m.start()].count("\n") + 1) for m in re.finditer(r"\btorch\.load\(", text)]
    assert [name for name, _ in loads] == ["checkpoint.py"], loads
    source = (REPO / "src/redr/training/checkpoint.py").read_text()
    assert source.count("torch.load(") == 1 and "weights_only=True" in source


# ---------------------------------------------------------------------- format 1 (redr 0.1.0) still loads
def as_format_1(path: Path) -> None:
    """Rewrite a format-2 checkpoint as redr 0.1.0 wrote it: numpy's RNG state as numpy's own tuple."""
    state = checkpoint.read(path)
    plain = state["rng"]["numpy"]
    state["rng"]["numpy"] = (plain["bit_generator"], plain["key"].numpy().astype(np.uint32), plain["pos"],
                             plain["has_gauss"], plain["gauss"])
    state["format_version"] = 1
    state["digest"] = content_digest(state)
    torch.save(state, path)


def test_a_format_1_checkpoint_resumes_exactly_like_format_2(base_run, tmp_path):
    runs = {}
    for fmt in (1, 2):  # the epoch-1 checkpoint as the newest one of a run to continue
        runs[fmt] = tmp_path / f"format{fmt}"
        shutil.copytree(base_run, runs[fmt])
        os.replace(runs[fmt] / checkpoint.PREVIOUS, runs[fmt] / checkpoint.CHECKPOINT)
        (runs[fmt] / "DONE").unlink(missing_ok=True)
    as_format_1(runs[1] / checkpoint.CHECKPOINT)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(runs[1] / checkpoint.CHECKPOINT)  # numpy's
    assert not torch.serialization.get_unsafe_globals_in_checkpoint(runs[2] / checkpoint.CHECKPOINT)
    for fmt, out in runs.items():
        code, stdout, err = cli("--resume", out, "--no-progress")
        assert code == 0 and "after epoch 1" in stdout, err
    a, b = (checkpoint.read(runs[f] / checkpoint.CHECKPOINT) for f in (1, 2))
    assert a["format_version"] == b["format_version"] == checkpoint.FORMAT_VERSION == 2
    for key in ("model", "optimizer", "generators", "rng", "redistributor"):
        assert content_digest({key: a[key]}) == content_digest({key: b[key]}), key
    drop = {"epoch_seconds", "redistribution_seconds", "peak_memory_bytes"}
    a_rows, b_rows = ([{k: v for k, v in r.items() if k not in drop} for r in s["metrics"]] for s in (a, b))
    assert len(a_rows) == 2 and content_digest({"m": a_rows}) == content_digest({"m": b_rows})  # NaN == NaN here
    model, _ = redr.load_checkpoint(runs[1])
    assert torch.equal(model.state_dict()["0.values"], b["model"]["0.values"])


def test_numpy_rng_state_round_trips_bit_for_bit():
    np.random.seed(5)
    np.random.standard_normal(3)  # a cached gaussian, too
    saved = checkpoint.numpy_rng_state()
    expected = np.random.random_sample(7)
    np.random.seed(99)
    checkpoint.set_numpy_rng_state(saved)
    assert np.array_equal(np.random.random_sample(7), expected)


# ---------------------------------------------------------------------- two processes
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_two_process_resume_refuses_a_payload_checkpoint_without_running_it(run, scenario):
    marker = arm(run, scenario, "torch-zip")
    done = subprocess.run([sys.executable, "-m", "redr", "train", "--nproc", "2", "--resume", str(run), "--no-progress"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"})
    assert done.returncode != 0
    assert f"error: no usable checkpoint in {run}: " in done.stderr and SCENARIOS[scenario][2] in done.stderr, \
        done.stderr[-3000:]
    assert not marker.exists()
