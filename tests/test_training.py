"""The training engine and ``redr train``: files written, repeatability, option validation, resume."""
import json
import math
import subprocess
import sys

import pytest
import torch

from redr.cli import main
from redr.training.config import RunConfig
from redr.training.api import train
from redr.training.rundir import read_metrics

TINY = ["--dataset", "synthetic", "--epochs", "3", "--train-rows", "512", "--test-rows", "128", "--no-progress"]


def run_cli(args, capsys=None):
    code = main(args)
    out = capsys.readouterr() if capsys is not None else None
    return code, out


def test_cli_writes_config_and_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    code, printed = run_cli(["train", *TINY, "--algorithm", "random", "--density", "0.2", "--out", str(out)], capsys)
    assert code == 0, printed.err
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["algorithm"] == "random" and config["config"]["density"] == 0.2
    assert config["versions"]["torch"] == torch.__version__ and config["device"]["type"] == "cpu"
    assert config["model"]["parameter_equivalent_sizes"][0] == 32
    rows = read_metrics(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    expected = {"epoch", "train_loss", "test_loss", "test_acc", "alpha", "loss_before_redistribution",
                "loss_after_redistribution", "epoch_seconds", "redistribution_seconds", "peak_memory_bytes"}
    assert expected <= set(rows[0])
    assert any(k.startswith("nnz[") for k in rows[0])
    assert rows[0]["alpha"] > 0 and not math.isnan(rows[0]["loss_before_redistribution"])
    assert rows[-1]["alpha"] == 0 and math.isnan(rows[-1]["loss_before_redistribution"])  # fine-tuning phase
    assert rows[0]["peak_memory_bytes"] > 0
    assert "final test_acc" in printed.out and "epoch   3" in printed.out
    assert (out / "DONE").exists()


def test_same_seed_gives_identical_metrics(tmp_path):
    def once(name, seed):
        config = RunConfig.from_options(dataset="synthetic", epochs=3, train_rows=512, test_rows=128, seed=seed)
        trainer = train(config, tmp_path / name, progress=False, log=lambda *_: None)
        keep = ("train_loss", "test_loss", "test_acc", "loss_before_redistribution", "loss_after_redistribution")
        return [[row[k] for k in keep] for row in trainer.metrics], [p.detach().clone() for p in trainer.model.parameters()]

    a, pa = once("a", 5)
    b, pb = once("b", 5)
    c, _ = once("c", 6)
    assert json.dumps(a) == json.dumps(b)
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert json.dumps(a) != json.dumps(c)


@pytest.mark.parametrize("args,message", [
    (["--density", "0"], "density"),
    (["--density", "1.5"], "density"),
    (["--algorithm", "sett"], "unknown algorithm"),
    (["--dataset", "cifar"], "invalid choice"),
    (["--epochs", "-2"], "epochs"),
    (["--epochs", "two"], "whole number"),
    (["--hidden", "64", "0"], "hidden"),
    (["--lr", "-1"], "lr"),
    (["--model", "dense-neuron", "--algorithm", "gradient"], "needs --model sparse"),
    (["--algorithm", "random", "--block-size", "34"], "do not apply to --algorithm random"),
    (["--dataset", "higgs", "--augment"], "image datasets"),
    (["--batch-size", "0"], "batch"),
])
def test_invalid_options_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    base = ["train", "--dataset", "synthetic", "--no-progress", "--out", str(out)]
    code, printed = run_cli(base + args, capsys)
    assert code == 2
    assert message in printed.err
    assert len(printed.err.strip().splitlines()) == 1, printed.err
    assert not out.exists()


def test_existing_output_dir_needs_overwrite_or_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["train", *TINY, "--epochs", "1", "--out", str(out)], capsys)[0] == 0
    before = (out / "metrics.csv").read_text()
    code, printed = run_cli(["train", *TINY, "--epochs", "1", "--out", str(out)], capsys)
    assert code == 2 and "--overwrite" in printed.err
    assert (out / "metrics.csv").read_text() == before
    assert run_cli(["train", *TINY, "--epochs", "1", "--out", str(out), "--overwrite"], capsys)[0] == 0


def test_dense_baselines_train(tmp_path):
    for model in ("dense-neuron", "dense-param"):
        config = RunConfig.from_options(dataset="synthetic", epochs=1, train_rows=256, test_rows=64, model=model)
        trainer = train(config, None, progress=False, log=lambda *_: None)
        assert config.algorithm == "none" and trainer.redistributor is None
        assert trainer.metrics[0]["alpha"] == 0
    assert trainer.summary.sizes[1] == trainer.summary.parameter_equivalent_sizes[1]


def test_python_module_entry_point(tmp_path):
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "redr", "train", *TINY, "--epochs", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (out / "metrics.csv").exists()


def test_cpu_peak_memory_is_reset_per_epoch():
    """The per-epoch peak forgets what was freed before the reset (VmHWM through /proc/self/clear_refs)."""
    import os

    from redr.training.memory import peak_memory_bytes, reset_peak_memory

    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs")
    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched (mmapped by glibc, returned to the OS when freed)
    with_big = peak_memory_bytes(cpu)
    del big
    reset_peak_memory(cpu)
    assert peak_memory_bytes(cpu) < with_big - 32 * 2**20
