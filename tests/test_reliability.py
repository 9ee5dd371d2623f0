"""Bad input (issue 9): every row of the table in docs/reliability.md is a case here, and the message and exit
code the case produces must be the ones the table shows (``python tests/test_reliability.py`` prints the rows).
Also: numerical guards (stop naming epoch/step/layer with the last good checkpoint kept, or skip bad batches),
checkpoint validation, inference loading and the dense export.

Paths in messages are written ``<tmp>`` (the test's temporary folder) and ``<data>`` (the shared data folder).
A table message ending in ``…`` is a prefix of the real one (long download hints).
"""
from __future__ import annotations

import contextlib
import gzip
import io
import math
import random
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

import redr
from redr.cli import main
from redr.data.synthetic import make_synthetic
from redr.errors import UsageError
from redr.inference import dense_mlp, export_dense_state_dict
from redr.redistribution.algorithms.registry import algorithm_class
from redr.training import checkpoint
from redr.training.checkpoint import CheckpointError, content_digest
from redr.training.config import RunConfig
from redr.training.api import train
from redr.training.nonfinite import NonFiniteError
from redr.training.rundir import read_metrics

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
BASE = ["--dataset", "synthetic", "--train-rows", "256", "--test-rows", "64", "--hidden", "16", "16", "--batch-size", "64",
        "--epochs", "2", "--density", "0.25", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny runs on a shared 2-core machine: one thread is much faster than two spinning ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def has_algorithm(name: str) -> bool:
    try:
        algorithm_class(name)
        return True
    except Exception:
        return False


# ---------------------------------------------------------------------- the cases of the table
class Ctx:
    """What a case gets: a fresh folder, a finished 2-epoch run to damage, the shared data folder."""

    def __init__(self, tmp: Path, base_run: Path, data_dir):
        self.tmp, self.data_dir = tmp, data_dir
        self.run = tmp / "run"
        shutil.copytree(base_run, self.run)
        self.new = tmp / "new"  # an output folder that does not exist yet


def cli(*args) -> tuple[str, str, str]:
    """(exit code, stdout, stderr) of ``redr train ARGS`` run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["train", *map(str, args)])
    return str(code), out.getvalue(), err.getvalue()


def error_line(args, must_not_exist=None) -> tuple[str, str]:
    code, _, err = cli(*args)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one clear line, no traceback
    if must_not_exist is not None:
        assert not Path(must_not_exist).exists()  # nothing written
    return code, lines[0]


def api(fn) -> tuple[str, str]:
    try:
        fn()
    except Exception as exc:
        return type(exc).__name__, str(exc)
    raise AssertionError("no error raised")


CASES: dict = {}  # id -> function(ctx) -> (exit code or exception name, the message line)
WHAT: dict = {}  # id -> (group, what was tried), for the table
GROUP = ["options"]


def case(cid: str, what: str):
    def register(fn):
        assert cid not in CASES
        CASES[cid], WHAT[cid] = fn, (GROUP[0], what)
        return fn
    return register


def option_case(cid: str, *args):
    """``redr train --dataset synthetic ... ARGS --out NEW``: exit 2, one line, no output folder."""
    case(cid, "`" + " ".join(args) + "`")(lambda c: error_line([*BASE, *args, "--out", c.new], must_not_exist=c.new))


option_case("density-zero", "--density", "0")
option_case("density-above-one", "--density", "1.5")
option_case("density-zero-inputs", "--density", "0.01")
option_case("density-no-room-to-grow", "--density", "1", "--algorithm", "random")
option_case("unknown-algorithm", "--algorithm", "sett")
option_case("unknown-dataset", "--dataset", "cifar")
option_case("epochs-zero", "--epochs", "0")
option_case("epochs-not-a-number", "--epochs", "two")
option_case("hidden-zero", "--hidden", "64", "0")
option_case("lr-negative", "--lr", "-1")
option_case("lr-nan", "--lr", "nan")
option_case("lr-overflow", "--lr", "1e30")
option_case("batch-size-zero", "--batch-size", "0")
option_case("alpha0-above-one", "--alpha0", "1.5")
option_case("seed-negative", "--seed", "-1")
option_case("dense-model-with-algorithm", "--model", "dense-neuron", "--algorithm", "gradient")
option_case("woodfisher-option-with-random", "--algorithm", "random", "--block-size", "34")
if has_algorithm("woodfisher"):
    option_case("woodfisher-block-size-zero", "--algorithm", "woodfisher", "--block-size", "0")
option_case("augment-on-higgs", "--dataset", "higgs", "--augment")
option_case("augment-on-synthetic", "--augment")
option_case("augment-option-without-augment", "--aug-degrees", "5")
option_case("augment-bad-scale", "--dataset", "fashion-mnist", "--augment", "--aug-scale", "1.2", "0.8")
if not torch.cuda.is_available():
    option_case("device-cuda-without-gpu", "--device", "cuda")
option_case("device-unknown", "--device", "tpu")
option_case("on-nonfinite-unknown", "--on-nonfinite", "ignore")


GROUP[0] = "output folder"


@case("out-is-a-file", '`--out` names an existing file')
def _(c):
    c.new.write_text("not a folder")
    return error_line([*BASE, "--out", c.new])


@case("out-holds-a-run", '`--out` holds a run, no `--overwrite`/`--resume`')
def _(c):
    before = (c.run / "metrics.csv").read_text()
    result = error_line([*BASE, "--out", c.run])
    assert (c.run / "metrics.csv").read_text() == before
    return result


# data files ------------------------------------------------------------
GROUP[0] = "data files"
IMAGE_ARGS = ["--dataset", "fashion-mnist", "--train-rows", "256", "--test-rows", "64", "--hidden", "16", "--epochs", "1",
              "--no-download", "--no-progress"]


def copy_fashion(c) -> Path:
    folder = c.tmp / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    for f in (Path(c.data_dir) / "fashion-mnist").iterdir():
        shutil.copy(f, folder / f.name)
    return folder


@case("data-missing", 'empty `--data-dir` with `--no-download`')
def _(c):
    (c.tmp / "data").mkdir()
    return error_line([*IMAGE_ARGS, "--data-dir", c.tmp / "data", "--out", c.new])


@case("data-truncated-gzip", 'an image file cut in half')
def _(c):
    f = copy_fashion(c) / "train-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:14745])
    return error_line([*IMAGE_ARGS, "--data-dir", c.tmp / "data", "--out", c.new])


@case("data-wrong-magic", 'a label file with a wrong idx magic number')
def _(c):
    f = copy_fashion(c) / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(f.read_bytes()))
    raw[3] = 7
    f.write_bytes(gzip.compress(bytes(raw)))
    return error_line([*IMAGE_ARGS, "--data-dir", c.tmp / "data", "--out", c.new])


def higgs_file(c, bad_row: str) -> Path:
    folder = c.tmp / "data" / "higgs"
    folder.mkdir(parents=True)
    rng = random.Random(0)
    rows = [",".join([f"{i % 2}.0"] + [f"{rng.random():.3f}" for _ in range(28)]) for i in range(200)]
    rows[10] = bad_row
    (folder / "HIGGS.csv.gz").write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    return c.tmp / "data"


HIGGS_ARGS = ["--dataset", "higgs", "--train-rows", "100", "--test-rows", "50", "--hidden", "8", "--epochs", "1",
              "--no-download", "--no-progress"]


@case("higgs-short-row", 'HIGGS.csv.gz with a 21-column row')
def _(c):
    return error_line([*HIGGS_ARGS, "--data-dir", higgs_file(c, ",".join(["1.0"] + ["0.5"] * 20)), "--out", c.new])


@case("higgs-nan-value", 'HIGGS.csv.gz with a `nan` feature')
def _(c):
    return error_line([*HIGGS_ARGS, "--data-dir", higgs_file(c, ",".join(["1.0", "nan"] + ["0.5"] * 27)), "--out", c.new])


# resume ----------------------------------------------------------------
GROUP[0] = "resume"
@case("resume-missing-dir", '`--resume` of a folder that does not exist')
def _(c):
    return error_line(["--resume", c.tmp / "nowhere", "--no-progress"])


@case("resume-not-a-run", '`--resume` of an empty folder')
def _(c):
    c.new.mkdir()
    return error_line(["--resume", c.new, "--no-progress"])


@case("resume-config-json-corrupt", '`--resume` with a cut `config.json`')
def _(c):
    (c.run / "config.json").write_text('{"config": {"dataset": ')
    return error_line(["--resume", c.run, "--no-progress"])


@case("resume-with-overwrite", '`--resume DIR --overwrite`')
def _(c):
    return error_line(["--resume", c.run, "--overwrite", "--no-progress"])


@case("resume-and-another-out", '`--resume DIR --out OTHER`')
def _(c):
    return error_line(["--resume", c.run, "--out", c.new, "--no-progress"])


@case("resume-different-density", '`--resume DIR --density 0.5` (saved 0.25)')
def _(c):
    return error_line(["--resume", c.run, "--density", "0.5", "--no-progress"])


@case("resume-more-epochs", '`--resume DIR --epochs 6` (saved 2)')
def _(c):
    return error_line(["--resume", c.run, "--epochs", "6", "--no-progress"])


@case("resume-checkpoint-of-another-run", "another run's checkpoint.pt copied into DIR")
def _(c):
    other = c.tmp / "other"
    assert cli(*BASE, "--seed", "7", "--epochs", "1", "--out", other)[0] == "0"
    shutil.copy(other / checkpoint.CHECKPOINT, c.run / checkpoint.CHECKPOINT)
    (c.run / checkpoint.PREVIOUS).unlink()
    return error_line(["--resume", c.run, "--no-progress"])


@case("resume-with-skip-batch", '`--resume DIR --on-nonfinite skip-batch` (allowed; stdout line)')
def _(c):  # allowed: only decides what a NaN/inf does
    code, out, err = cli("--resume", c.run, "--on-nonfinite", "skip-batch", "--no-progress")
    assert err == ""
    return code, next(line for line in out.splitlines() if "changed option" in line)


@case("resume-finished-run", '`--resume` of a finished run (stdout line)')
def _(c):
    code, out, err = cli("--resume", c.run, "--no-progress")
    assert err == ""
    return code, next(line for line in out.splitlines() if "already complete" in line)


# checkpoints -----------------------------------------------------------
GROUP[0] = "checkpoints"
def tamper(c, change, keep_previous=False) -> tuple[str, str]:
    """Change the newest checkpoint's content (with a valid checksum, so that validation must find it)."""
    path = c.run / checkpoint.CHECKPOINT
    state = checkpoint.read(path)
    change(state)
    state["digest"] = content_digest(state)
    torch.save(state, path)
    if not keep_previous:
        (c.run / checkpoint.PREVIOUS).unlink()
    return error_line(["--resume", c.run, "--no-progress"])


def _swap_two_columns(state):
    col = state["model"]["0.col"]
    col[1] = col[0]


def _column_out_of_range(state):
    state["model"]["0.col"][-1] = 40


def _crow_not_ending_at_nnz(state):
    state["model"]["2.crow"][-1] += 3


def _nan_value(state):
    state["model"]["4.values"][2] = float("nan")


def _short_exp_avg(state):
    entry = state["optimizer"]["state"][0]
    entry["exp_avg"] = entry["exp_avg"][:-5]


def _wrong_bias_shape(state):
    state["model"]["2.bias"] = torch.zeros(17)


def _no_generators(state):
    del state["generators"]


def _epoch_out_of_range(state):
    state["epoch"] = 7


def _newer_format(state):
    state["format_version"] = 99


def _metrics_nnz(state):
    state["metrics"][-1]["nnz[0]"] += 1


for cid, what, change in [
        ("checkpoint-duplicate-index", "two equal column indices in a row of layer 0", _swap_two_columns),
        ("checkpoint-index-out-of-range", "a column index 40 in a 32-input layer", _column_out_of_range),
        ("checkpoint-crow-inconsistent", "row offsets of layer 2 not ending at its nnz", _crow_not_ending_at_nnz),
        ("checkpoint-nan-value", "a NaN weight", _nan_value),
        ("checkpoint-optimizer-nnz-mismatch", "Adam's `exp_avg` 5 shorter than the layer's nnz", _short_exp_avg),
        ("checkpoint-shape-mismatch", "a bias of 17 entries for 16 neurons", _wrong_bias_shape),
        ("checkpoint-missing-generators", "the generator states removed", _no_generators),
        ("checkpoint-epoch-out-of-range", "epoch 7 in a 2-epoch run", _epoch_out_of_range),
        ("checkpoint-newer-format", "format version 99", _newer_format),
        ("checkpoint-metrics-nnz-mismatch", "the last metrics row's nnz differs from the layer's", _metrics_nnz)]:
    case(cid, what + " (checksum made valid; no previous checkpoint)")((lambda change: lambda c: tamper(c, change))(change))


@case("checkpoint-both-truncated", 'checkpoint.pt and checkpoint.prev.pt both cut in half')
def _(c):
    for name in (checkpoint.CHECKPOINT, checkpoint.PREVIOUS):
        data = (c.run / name).read_bytes()
        (c.run / name).write_bytes(data[: len(data) // 2])
    return error_line(["--resume", c.run, "--no-progress"])


@case("checkpoint-newest-truncated", 'checkpoint.pt cut in half, checkpoint.prev.pt fine (resumes from it)')
def _(c):  # falls back to the previous one with a warning, then continues
    data = (c.run / checkpoint.CHECKPOINT).read_bytes()
    (c.run / checkpoint.CHECKPOINT).write_bytes(data[: len(data) // 2])
    code, out, err = cli("--resume", c.run, "--no-progress")
    assert "resuming" in out and "after epoch 1" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1
    return code, lines[0]


@case("checkpoint-bit-flip", 'one bit of a stored weight flipped (no previous checkpoint)')
def _(c):
    path = c.run / checkpoint.CHECKPOINT
    data = bytearray(path.read_bytes())
    values = checkpoint.read(path)["model"]["2.values"]
    at = data.find(values[10:18].numpy().tobytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    (c.run / checkpoint.PREVIOUS).unlink()
    return error_line(["--resume", c.run, "--no-progress"])


@case("checkpoint-not-redr", 'a torch file that is not a redr checkpoint')
def _(c):
    torch.save({"epoch": 2, "model": {}}, c.run / checkpoint.CHECKPOINT)
    (c.run / checkpoint.PREVIOUS).unlink()
    return error_line(["--resume", c.run, "--no-progress"])


@case("checkpoint-empty-file", 'an empty checkpoint.pt')
def _(c):
    (c.run / checkpoint.CHECKPOINT).write_bytes(b"")
    (c.run / checkpoint.PREVIOUS).unlink()
    return error_line(["--resume", c.run, "--no-progress"])


# inference and the Python API -------------------------------------------
GROUP[0] = "Python API"
@case("load-checkpoint-garbage", '`redr.load_checkpoint(file of random bytes)`')
def _(c):
    (c.tmp / "model.pt").write_bytes(random.Random(0).randbytes(1000))
    return api(lambda: redr.load_checkpoint(c.tmp / "model.pt"))


@case("load-checkpoint-missing", '`redr.load_checkpoint(missing path)`')
def _(c):
    return api(lambda: redr.load_checkpoint(c.tmp / "nowhere"))


@case("api-lr-bool", '`RunConfig.from_options(lr=True)`')
def _(c):
    return api(lambda: RunConfig.from_options(dataset="synthetic", lr=True))


@case("api-hidden-not-int", '`RunConfig.from_options(hidden=[64, "a"])`')
def _(c):
    return api(lambda: RunConfig.from_options(dataset="synthetic", hidden=[64, "a"]))


@case("api-unknown-option", '`RunConfig.from_options(colour="red")`')
def _(c):
    return api(lambda: RunConfig.from_options(dataset="synthetic", colour="red"))


@case("api-unknown-augment-option", '`RunConfig.from_options(augment_options={"rotate": 5})`')
def _(c):
    return api(lambda: RunConfig.from_options(dataset="kmnist", augment_options={"rotate": 5}))


@case("api-density-string", '`RunConfig.from_options(density="0.1")`')
def _(c):
    return api(lambda: RunConfig.from_options(dataset="synthetic", density="0.1"))


# numbers -----------------------------------------------------------------
GROUP[0] = "numbers"
@case("nonfinite-diverging-lr", '`--lr 1e20` (training diverges)')
def _(c):
    return error_line([*BASE, "--lr", "1e20", "--out", c.new])


@case("nonfinite-nan-in-data", '`train(config, dataset=...)` with one NaN input value')
def _(c):
    return api(lambda: train(RunConfig.from_options(dataset="synthetic", train_rows=256, test_rows=64, hidden=[16, 16],
                                                    batch_size=64, epochs=2, density=0.25),
                             c.new, progress=False, log=lambda *_: None, dataset=synthetic_with_nan()))


def synthetic_with_nan():
    data = make_synthetic(256, 64)
    data.train_x[37, 5] = float("nan")
    return data


# ---------------------------------------------------------------------- running them against the table
@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "run"
    assert cli(*BASE, "--out", out)[0] == "0"
    return out


def run_case(cid: str, tmp: Path, base: Path, data_dir) -> tuple[str, str]:
    code, message = CASES[cid](Ctx(tmp, base, data_dir))
    message = message.replace(str(tmp), "<tmp>")
    if data_dir is not None:
        message = message.replace(str(data_dir), "<data>")
    return code, message


def code_span(text: str) -> str:
    text = text.replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def from_code_span(cell: str) -> str:
    cell = cell.strip()
    cell = cell[3:-3] if cell.startswith("`` ") else cell[1:-1]
    return cell.replace("\\|", "|")


#: The table shows only the start (up to and with the marker) of messages that list something others extend
#: (algorithms, options), that are very long (download hints), or that quote torch's own error text.
PREFIX_ONLY = {"unknown-algorithm": "choose one of ", "api-unknown-option": "known: ", "data-missing": "(md5 ",
               "checkpoint-both-truncated": "unreadable (", "checkpoint-newest-truncated": "unreadable (",
               "checkpoint-empty-file": "unreadable (", "load-checkpoint-garbage": "unreadable ("}


def table_row(cid: str, code: str, message: str) -> str:
    group, what = WHAT[cid]
    if cid in PREFIX_ONLY:
        marker = PREFIX_ONLY[cid]
        message = message[:message.index(marker) + len(marker)] + "…"
    return f"| `{cid}` | {what} | {code_span(message)} | {code} | `test_bad_input[{cid}]` |"


def documented() -> dict:
    """id -> (exit, message) from the tables of docs/reliability.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = re.split(r"(?<!\\)\|", line)[1:-1]
        if len(cells) == 5 and re.fullmatch(r" `test_bad_input\[[a-z0-9-]+\]` ", cells[4]):
            cid = cells[0].strip().strip("`")
            assert cells[4].strip() == f"`test_bad_input[{cid}]`", line
            rows[cid] = (cells[3].strip(), from_code_span(cells[2]))
    return rows


def test_the_table_has_every_case_and_at_least_20_rows():
    rows = documented()
    optional = {"woodfisher-block-size-zero", "device-cuda-without-gpu"}
    assert len(rows) >= 20
    assert set(CASES) - set(rows) == set(), "cases missing from docs/reliability.md"
    assert set(rows) - set(CASES) <= optional, "table rows without a case"


@pytest.mark.parametrize("cid", sorted(CASES))
def test_bad_input(cid, tmp_path, base_run, request):
    needs_data = cid.startswith("data-") or cid == "augment-bad-scale"
    data_dir = request.getfixturevalue("shared_data_dir") if needs_data else None
    code, message = run_case(cid, tmp_path, base_run, data_dir)
    want_code, want = documented()[cid]
    assert code == want_code, message
    if want.endswith("…"):
        assert message.startswith(want[:-1]), message
    else:
        assert message == want


# ---------------------------------------------------------------------- numerical guards, in detail
def small(**kw) -> RunConfig:
    return RunConfig.from_options(**{**dict(dataset="synthetic", train_rows=256, test_rows=64, hidden=[16, 16],
                                            batch_size=64, epochs=3, density=0.25), **kw})


def test_a_nan_weight_stops_naming_epoch_step_and_layer_and_keeps_the_last_good_checkpoint(tmp_path):
    """A weight turns NaN in epoch 2, step 3: the run stops there, names layer 2, and the epoch-1 checkpoint stays."""
    out = tmp_path / "run"
    steps = [0]

    def poison(optimizer, args, kwargs):
        steps[0] += 1
        if steps[0] == 4 + 2:  # after step 2 of epoch 2 (4 steps per epoch)
            with torch.no_grad():
                optimizer.param_groups[0]["params"][2].view(-1)[3] = float("nan")  # layer 2's values

    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(poison)
    try:
        with pytest.raises(NonFiniteError) as info:
            train(small(), out, progress=False, log=lambda *_: None)
    finally:
        handle.remove()
    assert str(info.value) == (
        "non-finite training loss (nan) at epoch 2, step 3/4: non-finite weights in layer 2 (2.values); "
        f"the last good checkpoint (after epoch 1) stays in {out}")
    assert checkpoint.read(out / checkpoint.CHECKPOINT)["epoch"] == 1
    assert [r["epoch"] for r in read_metrics(out / "metrics.csv")] == [1]
    model, _ = redr.load_checkpoint(out)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nan_in_the_data_stops_or_is_skipped(tmp_path):
    with pytest.raises(NonFiniteError, match=r"at epoch 1, step \d/4: the input batch has NaN/inf in 1 of its rows"):
        train(small(), tmp_path / "stop", progress=False, log=lambda *_: None, dataset=synthetic_with_nan())
    assert not (tmp_path / "stop" / checkpoint.CHECKPOINT).exists()
    trainer = train(small(on_nonfinite="skip-batch"), tmp_path / "skip", progress=False, log=lambda *_: None,
                    dataset=synthetic_with_nan())
    rows = read_metrics(tmp_path / "skip" / "metrics.csv")
    assert [r["skipped_batches"] for r in rows] == [1, 1, 1]  # the batch holding row 37, once per epoch
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["test_loss"]) for r in rows)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_skip_batch_gives_up_when_every_batch_is_bad(tmp_path):
    data = make_synthetic(256, 64)
    data.train_x[::50, 0] = float("inf")  # a bad row in every batch of 64
    with pytest.raises(NonFiniteError, match="every batch of epoch 1 .4. had a non-finite loss or gradient"):
        train(small(on_nonfinite="skip-batch"), None, progress=False, log=lambda *_: None, dataset=data)


def test_a_diverging_lr_names_the_first_layer_that_overflows(tmp_path):
    with pytest.raises(NonFiniteError, match=r"at epoch 1, step 2/4: layer \d \(SparseLinear \d+ -> \d+\) is the first "
                                             "with a non-finite output; no checkpoint was written yet"):
        train(small(lr=1e20), tmp_path / "run", progress=False, log=lambda *_: None)


# ---------------------------------------------------------------------- validation details
def test_zero_inputs_means_a_density_that_rounds_to_no_input():
    """round(d x fan_in) = 0 for a layer is refused; 1 input per neuron is the smallest allowed (SparseLinear
    never builds a neuron without inputs, so the check is about the density asked for)."""
    with pytest.raises(UsageError, match=r"use --density >= 0.0625"):
        RunConfig.from_options(dataset="synthetic", hidden=[16, 16], density=0.03)  # 0.03 x 16 = 0.48 -> 0
    config = RunConfig.from_options(dataset="synthetic", hidden=[16, 16], density=0.0625)  # one input
    model = redr.build_mlp(config.sizes(32, 10), config.density)
    per_neuron = [int((layer.crow[1:] - layer.crow[:-1]).min()) for _, layer in redr.sparse_layers(model)]
    assert per_neuron == [2, 1, 1]  # 0.0625 x 32, 0.0625 x 16, 0.0625 x 16
    # the dense last layer of HIGGS is not sparse, so it does not count
    RunConfig.from_options(dataset="higgs", hidden=[256, 256, 256], density=0.03)


def test_no_room_to_grow_depends_on_the_schedule():
    with pytest.raises(UsageError, match="too few to grow"):
        RunConfig.from_options(dataset="synthetic", density=0.9, alpha0=0.5)
    RunConfig.from_options(dataset="synthetic", density=0.9, alpha0=0.05)  # moves few enough
    RunConfig.from_options(dataset="synthetic", density=1.0, algorithm="none")  # static: fine


def test_validation_is_shared_by_the_command_line_and_the_api(tmp_path):
    with pytest.raises(UsageError) as from_api:
        RunConfig.from_options(dataset="synthetic", algorithm="random", algorithm_options={"block_size": 34})
    code, _, err = cli("--dataset", "synthetic", "--algorithm", "random", "--block-size", "34", "--out", tmp_path / "x")
    assert code == "2" and err.strip() == f"error: {from_api.value}"
    config = RunConfig.from_options(dataset="synthetic")
    config.density = 2.0  # changed after construction: train() validates again through the Trainer
    with pytest.raises(UsageError, match=r"^--density must be in \(0, 1\], got 2.0$"):
        train(config, None, progress=False, log=lambda *_: None)
    # a dataset of one's own: the checks that depend on the data are made on the data given
    import dataclasses

    images = dataclasses.replace(make_synthetic(64, 32, features=16), image_shape=(1, 4, 4))
    config = RunConfig.from_options(dataset="synthetic", hidden=[8], epochs=1, train_rows=64, test_rows=32, density=0.25)
    config.augment = True  # "synthetic" has no images, but these 16 features are 4x4 images
    assert len(train(config, None, progress=False, log=lambda *_: None, dataset=images).metrics) == 1
    with pytest.raises(UsageError, match="--augment needs an image dataset"):
        train(config, None, progress=False, log=lambda *_: None, dataset=make_synthetic(64, 32, features=16))
    config.augment, config.density = False, 0.02  # round(0.02 x 16) = 0 inputs in the data's first layer
    with pytest.raises(UsageError, match=r"layer 0 \(16 -> 8\) with zero inputs"):
        train(config, None, progress=False, log=lambda *_: None, dataset=make_synthetic(64, 32, features=16))


# ---------------------------------------------------------------------- inference and dense export
def test_load_checkpoint_gives_an_eval_model_and_the_dense_export_matches(base_run):
    model, config = redr.load_checkpoint(base_run)
    assert not model.training and isinstance(config, RunConfig) and config.hidden == [16, 16]
    state = checkpoint.read(base_run / checkpoint.CHECKPOINT)
    for key, value in state["model"].items():
        assert torch.equal(model.state_dict()[key], value)
    dense_state = redr.export_dense_state_dict(model)
    assert list(dense_state) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    plain = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 10))
    plain.load_state_dict(dense_state)  # strict: exactly nn.Linear-shaped
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(plain(x), model(x), atol=1e-6, rtol=1e-5)
    nnz = sum(int((dense_state[f"{i}.weight"] != 0).sum()) for i in (0, 2, 4))
    assert nnz <= redr.count_weights(model)  # zeros only at inactive positions (a trained value may be 0 too)
    assert torch.equal(export_dense_state_dict(base_run / checkpoint.CHECKPOINT)["2.weight"], dense_state["2.weight"])
    with torch.no_grad():
        assert torch.equal(dense_mlp(base_run)(x), plain(x))


def test_load_checkpoint_of_a_dense_last_layer_and_of_a_dense_baseline(tmp_path):
    for name, extra in (("dense-last", ["--dense-last"]), ("dense", ["--model", "dense-param"])):
        out = tmp_path / name
        assert cli(*BASE, "--epochs", "1", *extra, "--out", out)[0] == "0"
        model, config = redr.load_checkpoint(out)
        dense = dense_mlp(model)
        x = torch.randn(8, 32)
        with torch.no_grad():
            assert torch.allclose(dense(x), model(x), atol=1e-6)
        assert isinstance(model[-1], torch.nn.Linear)


def test_load_checkpoint_falls_back_and_reports_what_is_wrong(base_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    (run / checkpoint.CHECKPOINT).write_bytes(b"\0" * 100)
    with pytest.warns(checkpoint.CheckpointFallbackWarning, match="previous checkpoint checkpoint.prev.pt .epoch 1"):
        model, _ = redr.load_checkpoint(run)
    state = checkpoint.read(run / checkpoint.PREVIOUS)
    assert torch.equal(model.state_dict()["0.values"], state["model"]["0.values"])
    with pytest.raises(CheckpointError, match=r"^no usable checkpoint: checkpoint.pt: unreadable"):
        redr.load_checkpoint(run / checkpoint.CHECKPOINT)


if __name__ == "__main__":  # print the table rows (to update docs/reliability.md after changing a message)
    import tempfile

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import _shared_data_dir

    data_dir = _shared_data_dir()
    with tempfile.TemporaryDirectory() as root:
        base = Path(root) / "base" / "run"
        cli(*BASE, "--out", base)
        group = None
        for i, cid in enumerate(CASES):
            if WHAT[cid][0] != group:
                group = WHAT[cid][0]
                print(f"\n### {group}\n\n| id | bad input | what it gets | exit | test |\n|---|---|---|---|---|")
            tmp = Path(root) / f"case{i}"
            tmp.mkdir()
            code, message = run_case(cid, tmp, base, data_dir)
            print(table_row(cid, code, message))
