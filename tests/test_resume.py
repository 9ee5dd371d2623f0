"""Exact resume (issue 9): a run interrupted by ``kill -9``, by SIGINT/SIGTERM in the middle of an epoch, by a
checkpoint write that fails or is killed half-way, or left with a corrupt newest checkpoint, continues to the
same metrics (every column except timings and memory) and the same final parameters, indices, optimizer
state and generator states, bit for bit, as the same run done in one go (CPU).

The runs are tiny Fashion-MNIST runs (512 training rows, 784-24-24-10 at density 0.2, batch 64, 4 epochs,
random affine augmentation on): every random stream is exercised (init, data order, augmentation,
redistribution). Killed runs are real subprocesses (``python -m redr train`` or ``redr.cli.main`` under a
small wrapper that pauses at the moment to kill, or that signals itself after a known optimizer step); resumes run the CLI in this process, with the dataset
read once per test session.
"""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

import redr
from redr.cli import main
from redr.redistribution.algorithms.registry import algorithm_class
from redr.runtime import configure_threads
from redr.training import api, checkpoint, trainer as trainer_module
from redr.training.checkpoint import CheckpointFallbackWarning
from redr.training.config import RunConfig
from redr.training.rundir import saved_config

REPO = Path(__file__).resolve().parents[1]
TIMING = {"epoch_seconds", "redistribution_seconds", "peak_memory_bytes"}
EPOCHS, STEPS = 4, 8  # 512 rows / batch 64


def available(name: str) -> bool:
    try:
        algorithm_class(name)
        return True
    except Exception:
        return False


def fm_args(data_dir, algorithm="random", **extra) -> list[str]:
    args = ["--dataset", "fashion-mnist", "--data-dir", str(data_dir), "--train-rows", "512", "--test-rows", "128",
            "--hidden", "24", "24", "--batch-size", "64", "--epochs", str(EPOCHS), "--augment", "--density", "0.2",
            "--algorithm", algorithm, "--seed", "3", "--device", "cpu", "--no-progress"]
    for k, v in extra.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    return args


_DATA: dict = {}
#: One thread everywhere (this process and the subprocesses): on a shared 2-core machine two spinning
#: OpenMP/numba threads per process made these runs 15x slower, and every run must use the same setting.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread here too, set the one way that holds (numba's pool started first, then torch; see
    redr.runtime): setting torch first and then starting numba left torch with 2 threads, so the in-process runs
    differed from the subprocesses' by a few ulp whenever this module ran first in its process."""
    before = torch.get_num_threads()
    configure_threads(1)
    yield
    configure_threads(before)


@pytest.fixture(scope="module", autouse=True)
def cached_data():
    """Read each dataset once for the module's in-process runs (subprocesses read their own)."""
    original = trainer_module.load_data

    def load(config, device, progress):
        key = (config.dataset, config.train_rows, config.test_rows, str(config.data_dir), str(device))
        if key not in _DATA:
            _DATA[key] = original(config, device, False)
        return _DATA[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_module, "load_data", load)
        yield


def cli(args, capsys=None) -> tuple[int, str]:
    code = main(["train", *args])
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


def metrics_rows(out: Path) -> list[dict]:
    with open(out / "metrics.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(fh)]


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical metrics (as written, all columns but timings/memory) and final state."""
    ra, rb = metrics_rows(a), metrics_rows(b)
    assert len(ra) == EPOCHS and (a / "DONE").exists() and (b / "DONE").exists()
    assert ra == rb
    sa, sb = checkpoint.read(a / checkpoint.CHECKPOINT), checkpoint.read(b / checkpoint.CHECKPOINT)
    assert sa["epoch"] == sb["epoch"] == EPOCHS
    assert list(sa["model"]) == list(sb["model"])
    for key in sa["model"]:  # values, biases, CSR indices (crow, col)
        assert torch.equal(sa["model"][key], sb["model"][key]), key
    oa, ob = sa["optimizer"]["state"], sb["optimizer"]["state"]
    assert oa.keys() == ob.keys()
    for idx in oa:
        for key in oa[idx]:
            assert torch.equal(torch.as_tensor(oa[idx][key]), torch.as_tensor(ob[idx][key])), (idx, key)
    for name in sa["generators"]:
        assert torch.equal(sa["generators"][name], sb["generators"][name]), name
    if sa["redistributor"] is not None:
        assert torch.equal(sa["redistributor"]["generator"], sb["redistributor"]["generator"])
        assert [h["nnz"] for h in sa["redistributor"]["history"]] == [h["nnz"] for h in sb["redistributor"]["history"]]


_REFERENCE: dict = {}


@pytest.fixture
def reference(tmp_path_factory, shared_data_dir):
    """The uninterrupted run of an algorithm (made once per algorithm per session)."""
    def get(algorithm="random") -> Path:
        if algorithm not in _REFERENCE:
            out = tmp_path_factory.mktemp("ref") / algorithm
            assert cli(fm_args(shared_data_dir, algorithm) + ["--out", str(out)])[0] == 0
            _REFERENCE[algorithm] = out
        return _REFERENCE[algorithm]
    return get


# ---------------------------------------------------------------------- kill -9 in a subprocess
PAUSING_CHILD = textwrap.dedent('''
    """redr train, pausing (so that the parent can kill -9 it) at a chosen checkpoint write."""
    import io, os, sys, time
    import torch
    from redr.training import checkpoint
    mode, epoch, marker, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    original = checkpoint.save

    def pause():
        open(marker, "w").close()
        time.sleep(600)

    def half_then_pause(state, fh):  # the write is killed half-way
        buf = io.BytesIO()
        torch.save(state, buf)
        fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        fh.flush()
        os.fsync(fh.fileno())
        pause()

    def save(directory, state, writer=None):
        at = state["epoch"] == epoch and state["step_in_epoch"] == 0
        if mode == "mid-write" and at:
            return original(directory, state, writer=half_then_pause)
        path = original(directory, state, writer)
        if mode == "after-checkpoint" and at:
            pause()  # the checkpoint is on disk, metrics.csv is not rewritten yet
        return path

    checkpoint.save = save
    from redr.cli import main
    sys.exit(main(argv))
''')


def start(cmd, cwd) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **ONE_THREAD}
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (code {proc.returncode}) before {path.name} appeared:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path.name} did not appear within {timeout} s")
        time.sleep(0.005)


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def run_paused_and_kill(tmp_path, mode, epoch, args) -> Path:
    child, marker, out = tmp_path / "child.py", tmp_path / "paused", tmp_path / "run"
    child.write_text(PAUSING_CHILD)
    proc = start([sys.executable, str(child), mode, str(epoch), str(marker), "train", *args, "--out", str(out)], tmp_path)
    wait_for(marker, proc)
    kill9(proc)
    return out


#: The second kill uses a gradient-based redistribution when the registry has one.
SECOND = "gradient-global" if available("gradient-global") else "random"


@pytest.mark.parametrize("algorithm,kill_point", [("random", "after-checkpoint"), (SECOND, "mid-write")])
def test_kill9_after_half_the_epochs_then_resume_is_bit_identical(tmp_path, shared_data_dir, reference, capsys,
                                                                 algorithm, kill_point):
    """N = 4 epochs in one go against 2 + kill -9 + resume 2.

    ``after-checkpoint``: killed right after the epoch-2 checkpoint is on disk (before metrics.csv caught up),
    resumed by ``python -m redr train --resume`` in a fresh process. ``mid-write``: killed half-way through
    writing the epoch-3 checkpoint; the epoch-2 one is the newest complete checkpoint and is used.
    """
    args = fm_args(shared_data_dir, algorithm)
    half = EPOCHS // 2
    out = run_paused_and_kill(tmp_path, kill_point, half if kill_point == "after-checkpoint" else half + 1, args)
    state = checkpoint.read(out / checkpoint.CHECKPOINT)
    assert (state["epoch"], state["step_in_epoch"]) == (half, 0)
    assert checkpoint.read(out / checkpoint.PREVIOUS)["epoch"] == half - 1
    assert not (out / "DONE").exists()
    if kill_point == "after-checkpoint":
        assert len(metrics_rows(out)) == half - 1  # killed before metrics.csv caught up
        res = subprocess.run([sys.executable, "-m", "redr", "train", "--resume", str(out), "--no-progress"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600,
                             env={**os.environ, **ONE_THREAD})
        assert res.returncode == 0, res.stderr
        assert f"resuming {out} after epoch {half}" in res.stdout
    else:
        tmp = out / checkpoint.TEMPORARY
        assert tmp.exists() and tmp.stat().st_size > 0  # the half-written file
        with pytest.raises(checkpoint.CheckpointError, match="unreadable"):
            checkpoint.read(tmp)
        model, config = redr.load_checkpoint(out)  # the newest complete checkpoint loads for inference
        assert not model.training and config.algorithm == algorithm
        code, err = cli(["--resume", str(out), "--no-progress"], capsys)
        assert code == 0, err
        assert not tmp.exists()
    assert_same_run(reference(algorithm), out)


SIGNALLING_CHILD = textwrap.dedent('''
    """redr train that sends SIGTERM to its own process right after a chosen global optimizer step: the real
    signal path (handler, mid-epoch checkpoint, exit 130) at a known step, not at a moment guessed by timing."""
    import os, signal, sys
    from torch.optim.optimizer import register_optimizer_step_post_hook
    at, argv = int(sys.argv[1]), sys.argv[2:]
    count = [0]

    def hook(optimizer, args, kwargs):
        count[0] += 1
        if count[0] == at:
            os.kill(os.getpid(), signal.SIGTERM)

    register_optimizer_step_post_hook(hook)
    from redr.cli import main
    sys.exit(main(argv))
''')


def test_sigterm_to_the_command_saves_mid_epoch_and_resume_is_bit_identical(tmp_path, shared_data_dir, capsys):
    """A SIGTERM to the command's process: it finishes its step, saves, exits 130; the resume matches one go.
    The signal is sent from inside the process after global step 2 * 16 + 5 (epoch 3, step 5)."""
    args = fm_args(shared_data_dir, batch_size=32)  # 16 steps per epoch
    steps, epoch, step = 16, 2, 5
    ref = tmp_path / "ref"
    assert cli(args + ["--out", str(ref)])[0] == 0
    out, child = tmp_path / "run", tmp_path / "signalling_child.py"
    child.write_text(SIGNALLING_CHILD)
    proc = start([sys.executable, str(child), str(epoch * steps + step), "train", *args, "--out", str(out)], tmp_path)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "SIGTERM received" in stdout and "interrupted" in stderr
    state = checkpoint.read(out / checkpoint.CHECKPOINT)
    assert (state["epoch"], state["step_in_epoch"]) == (epoch, step)
    code, err = cli(["--resume", str(out), "--no-progress"], capsys)
    assert code == 0, err
    assert_same_run(ref, out)


# ---------------------------------------------------------------------- SIGINT mid-epoch, in this process
def interrupt_at(global_step: int, sig=signal.SIGINT):
    """A global optimizer hook that signals this process after the given optimizer step."""
    count = [0]

    def hook(optimizer, args, kwargs):
        count[0] += 1
        if count[0] == global_step:
            os.kill(os.getpid(), sig)
    return register_optimizer_step_post_hook(hook)


def run_interrupted(out: Path, args: list[str], global_step: int, sig=signal.SIGINT) -> dict:
    handle = interrupt_at(global_step, sig)
    try:
        code, _ = cli(args + ["--out", str(out)])
    finally:
        handle.remove()
    assert code == 130
    return checkpoint.read(out / checkpoint.CHECKPOINT)


ALGORITHMS = [a for a in ("random", "none", "gradient", "gradient-global", "loss", "woodfisher", "woodtaylor") if available(a)]


@pytest.mark.parametrize("algorithm", [
    "random",
    pytest.param("woodfisher", marks=pytest.mark.skipif(not available("woodfisher"), reason="not in this build")),
])
def test_sigint_mid_epoch_then_resume_is_bit_identical(tmp_path, shared_data_dir, reference, capsys, algorithm):
    """Woodfisher keeps a Fisher state that is half-accumulated (and partly buffered) at the stop."""
    out = tmp_path / "run"
    state = run_interrupted(out, fm_args(shared_data_dir, algorithm), STEPS + 3)  # epoch 2, step 3
    assert (state["epoch"], state["step_in_epoch"]) == (1, 3)
    code, err = cli(["--resume", str(out), "--no-progress"], capsys)
    assert code == 0, err
    assert_same_run(reference(algorithm), out)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_resumes_mid_epoch_exactly(tmp_path, algorithm):
    """Each registered algorithm's own state (history, generator, statistics) survives a mid-epoch stop:
    a small generated task (no augmentation), stopped twice inside epochs, against one go."""
    args = ["--dataset", "synthetic", "--train-rows", "256", "--test-rows", "64", "--hidden", "16", "16",
            "--batch-size", "32", "--epochs", str(EPOCHS), "--density", "0.25", "--algorithm", algorithm,
            "--no-progress"]
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert cli(args + ["--out", str(ref)])[0] == 0
    assert run_interrupted(out, args, STEPS + 5)["step_in_epoch"] == 5  # 256 / 32 = 8 steps per epoch too
    handle = interrupt_at(2 * STEPS, signal.SIGTERM)  # again, in epoch 4 after the resume
    try:
        assert cli(["--resume", str(out), "--no-progress"])[0] == 130
    finally:
        handle.remove()
    assert checkpoint.read(out / checkpoint.CHECKPOINT)["epoch"] == 3
    assert cli(["--resume", str(out), "--no-progress"])[0] == 0
    assert_same_run(ref, out)


# ---------------------------------------------------------------------- failing and corrupt checkpoints
def test_a_checkpoint_write_failing_half_way_keeps_the_previous_one(tmp_path, shared_data_dir, reference, capsys, monkeypatch):
    out = tmp_path / "run"

    def disk_full_at_epoch_3(state, fh):
        if state["epoch"] == 3:
            fh.write(b"PK\x03\x04 partial")
            raise OSError(28, "No space left on device")
        torch.save(state, fh)

    monkeypatch.setattr(checkpoint, "_write", disk_full_at_epoch_3)
    code, err = cli(fm_args(shared_data_dir) + ["--out", str(out)], capsys)
    assert code == 1
    assert err.strip() == (f"error: could not write a checkpoint in {out} (OSError: [Errno 28] No space left on device); "
                           "the previous checkpoint is kept")
    assert not (out / checkpoint.TEMPORARY).exists()
    assert checkpoint.read(out / checkpoint.CHECKPOINT)["epoch"] == 2
    assert checkpoint.read(out / checkpoint.PREVIOUS)["epoch"] == 1
    model, _ = redr.load_checkpoint(out)  # still loads for inference
    assert model(torch.zeros(1, 784)).shape == (1, 10)
    monkeypatch.undo()
    assert cli(["--resume", str(out), "--no-progress"], capsys)[0] == 0
    assert_same_run(reference(), out)


@pytest.fixture
def stopped_after_epoch_3(tmp_path_factory, shared_data_dir):
    """A run stopped by SIGINT after epoch 3 (checkpoint.pt: epoch 3, checkpoint.prev.pt: epoch 2)."""
    key = "stopped3"
    if key not in _REFERENCE:
        out = tmp_path_factory.mktemp("stopped") / "run"
        state = run_interrupted(out, fm_args(shared_data_dir), 3 * STEPS)  # the last step of epoch 3
        assert (state["epoch"], state["step_in_epoch"]) == (3, 0)
        _REFERENCE[key] = out
    return _REFERENCE[key]


def _truncate(p: Path):
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])


def _flip_a_value_bit(p: Path):
    """One bit of one stored weight (the zip container stays valid: only the checksum notices)."""
    data = bytearray(p.read_bytes())
    values = checkpoint.read(p)["model"]["0.values"]
    at = data.find(values[100:108].numpy().tobytes())
    assert at > 0
    data[at + 1] ^= 0x10
    p.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated": (_truncate, "unreadable"),
    "bit-flip": (_flip_a_value_bit, "content checksum mismatch"),
    "deleted": (lambda p: p.unlink(), "missing"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, stopped_after_epoch_3, reference, kind):
    out = tmp_path / "run"
    shutil.copytree(stopped_after_epoch_3, out)
    damage, why = CORRUPTIONS[kind]
    damage(out / checkpoint.CHECKPOINT)
    config = RunConfig.from_dict(saved_config(out))
    logged = []
    with pytest.warns(CheckpointFallbackWarning, match=f"{why}.*using the previous checkpoint checkpoint.prev.pt "
                                                       r"\(epoch 2, step 0\)"):
        api.train(config, out, resume=True, progress=False, log=logged.append)
    assert any("resuming" in line and "after epoch 2" in line for line in logged)
    assert_same_run(reference(), out)


def test_the_fallback_is_one_warning_line_on_the_command_line(tmp_path, stopped_after_epoch_3, reference, capsys):
    out = tmp_path / "run"
    shutil.copytree(stopped_after_epoch_3, out)
    _truncate(out / checkpoint.CHECKPOINT)
    code, err = cli(["--resume", str(out), "--no-progress"], capsys)
    assert code == 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: {out / checkpoint.CHECKPOINT} is unusable (unreadable")
    assert_same_run(reference(), out)


def test_killed_before_the_first_checkpoint_resume_starts_again(tmp_path, shared_data_dir, reference, capsys):
    """config.json written, no checkpoint yet (killed in epoch 1): --resume runs it from the start."""
    out = tmp_path / "run"
    run_interrupted(out, fm_args(shared_data_dir), 2)
    for name in (checkpoint.CHECKPOINT, "metrics.csv"):  # as if killed by -9 before the mid-epoch save
        (out / name).unlink(missing_ok=True)
    code, err = cli(["--resume", str(out), "--no-progress"], capsys)
    assert code == 0, err
    assert_same_run(reference(), out)


def test_save_keeps_a_checkpoint_at_every_instant(tmp_path, monkeypatch):
    """Between the rotation and the rename checkpoint.pt still exists (hard link), and prev is the old one."""
    checkpoint.save(tmp_path, {"epoch": 1})
    seen = []
    real_replace = os.replace

    def watching_replace(src, dst):
        seen.append((Path(src).name, Path(dst).name, (tmp_path / checkpoint.CHECKPOINT).exists()))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", watching_replace)
    checkpoint.save(tmp_path, {"epoch": 2})
    assert all(exists for *_, exists in seen)
    assert checkpoint.read(tmp_path / checkpoint.CHECKPOINT)["epoch"] == 2
    assert checkpoint.read(tmp_path / checkpoint.PREVIOUS)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([checkpoint.CHECKPOINT, checkpoint.PREVIOUS])
