"""``redr reproduce`` / ``redr report``: grids, resumption, config mismatches, the report files (the claims: test_report.py)."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from redr.cli import main
from redr.experiments.grid import build_cells, run_name
from redr.experiments.report import figure_files, table_files
from redr.experiments.results import load_runs
from redr.experiments.runner import plan_grid, run_grid

TINY = ["reproduce", "synthetic", "--algorithms", "random,none", "--densities", "0.1", "--seeds", "1", "--epochs", "1",
        "--no-progress", "--quiet"]
RUNS = ("synthetic_random_d0.1_s0", "synthetic_none_d0.1_s0")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny nets: one thread is faster, and immune to a busy shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid") / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*TINY, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_tiny_grid_runs_end_to_end_and_writes_every_table_and_figure(tiny_grid):
    for name in RUNS:
        run = tiny_grid / name
        assert (run / "DONE").exists() and (run / "config.json").exists() and (run / "metrics.csv").exists()
        assert json.loads((run / "cell.json").read_text())["kind"] == "train"
    assert json.loads((tiny_grid / RUNS[0] / "config.json").read_text())["config"]["epochs"] == 1
    report = (tiny_grid / "report.md").read_text()
    for path in table_files() + figure_files(["synthetic"]):
        assert (tiny_grid / path).is_file() and (tiny_grid / path).stat().st_size > 0, path
    assert "Redr-Random" in report and "static sparse" in report and "claims, checked" in report
    with open(tiny_grid / "tables/accuracy.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["model"] for r in rows} == {"random", "none"} and all(r["seeds"] == "1" for r in rows)
    invocation = json.loads((tiny_grid / "experiment.json").read_text())["invocations"][0]
    assert invocation["experiment"] == "synthetic" and invocation["runs"] == 2


def test_second_call_skips_finished_runs(tiny_grid, capsys):
    before = {name: (tiny_grid / name / "metrics.csv").stat().st_mtime_ns for name in RUNS}
    assert main([*TINY, "--out", str(tiny_grid)]) == 0
    out = capsys.readouterr().out
    assert "2 finished already, 0 to run" in out and "(0 now, 2 before)" in out
    assert before == {name: (tiny_grid / name / "metrics.csv").stat().st_mtime_ns for name in RUNS}


def test_config_mismatch_in_an_existing_run_dir_is_an_error(tiny_grid, capsys):
    before = (tiny_grid / RUNS[0] / "metrics.csv").read_bytes()
    assert main([*TINY[:-6], "--epochs", "2", "--no-progress", "--quiet", "--out", str(tiny_grid)]) == 2
    err = capsys.readouterr().err
    assert "different config" in err and RUNS[0] in err and "epochs saved 1, requested 2" in err
    assert (tiny_grid / RUNS[0] / "metrics.csv").read_bytes() == before


def test_list_shows_states_without_running(tiny_grid, capsys):
    assert main([*TINY, "--out", str(tiny_grid), "--list"]) == 0
    out = capsys.readouterr().out
    assert out.count("done") >= 2 and "0 to run" in out


def test_interrupted_runs_are_resumed_or_redone(tmp_path):
    cells = build_cells("synthetic", seeds=1, epochs=2, models=["random", "none"], densities=[0.1])
    quiet = dict(progress=False, verbose=False, log=lambda *_: None)
    run_grid(cells, tmp_path, device="cpu", **quiet)
    first, second = (tmp_path / c.name for c in cells)
    (first / "DONE").unlink()  # stopped after its last checkpoint: resumed
    for name in ("DONE", "checkpoint.pt", "checkpoint.prev.pt"):  # stopped before any checkpoint: redone
        (second / name).unlink(missing_ok=True)
    states = {p.cell.name: p.state for p in plan_grid(cells, tmp_path, "cpu", None)}
    assert states == {first.name: "resume", second.name: "redo"}
    lines = []
    summary = run_grid(cells, tmp_path, device="cpu", progress=False, verbose=True, log=lines.append)
    assert summary.trained == 2 and not summary.failed
    assert any("resuming" in line for line in lines) and any("starting over" in line for line in lines)
    assert all((tmp_path / c.name / "DONE").exists() for c in cells)
    assert [len(r.rows) for r in load_runs(tmp_path)] == [2, 2]


def test_failed_run_is_recorded_and_the_grid_goes_on(tmp_path, monkeypatch):
    cells = build_cells("synthetic", seeds=1, epochs=1, models=["random", "none"], densities=[0.1])
    import redr.experiments.runner as runner

    real = runner.execute

    def broken(p, run_dir, **kw):
        if "random" in p.cell.name:
            raise RuntimeError("boom")
        return real(p, run_dir, **kw)

    monkeypatch.setattr(runner, "execute", broken)
    summary = run_grid(cells, tmp_path, device="cpu", progress=False, verbose=False, log=lambda *_: None)
    assert [name for name, _ in summary.failed] == [cells[0].name] and summary.trained == 1
    assert (tmp_path / cells[0].name / "FAILED").read_text().startswith("RuntimeError: boom")
    states = {p.cell.name: p.state for p in plan_grid(cells, tmp_path, "cpu", None)}
    assert states[cells[0].name] == "failed"
    assert {p.cell.name: p.state for p in plan_grid(cells, tmp_path, "cpu", None, retry_failed=True)}[cells[0].name] == "redo"


def test_an_algorithm_that_cannot_be_loaded_is_skipped_not_fatal(tmp_path, monkeypatch, capsys):
    import redr.redistribution.algorithms.registry as registry

    spec = registry.AlgorithmSpec("woodtaylor", "Redr-Woodtaylor", "global", "redr.no_such_module:Nothing")
    monkeypatch.setitem(registry.ALGORITHMS, "woodtaylor", spec)  # not landed yet
    args = ["reproduce", "synthetic", "--algorithms", "woodtaylor,none", "--densities", "0.1", "--seeds", "1",
            "--epochs", "1", "--no-progress", "--quiet", "--no-report", "--out", str(tmp_path)]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "skipping every 'woodtaylor' run" in out and "not available here: woodtaylor" in out
    assert (tmp_path / "synthetic_none_d0.1_s0" / "DONE").exists()
    assert not (tmp_path / "synthetic_woodtaylor_d0.1_s0").exists()


def test_missing_data_stops_the_grid_without_marking_runs_failed(tmp_path, capsys):
    args = ["reproduce", "kmnist", "--algorithms", "none,random", "--densities", "0.1", "--seeds", "1", "--epochs", "1",
            "--data-dir", str(tmp_path / "no-data"), "--no-download", "--no-progress", "--quiet", "--no-report",
            "--out", str(tmp_path / "o")]
    assert main(args) == 1
    assert "error:" in capsys.readouterr().err
    assert not list((tmp_path / "o").glob("*/FAILED")) and not list((tmp_path / "o").glob("*/config.json"))


def test_report_copy_regenerates_without_checkpoints(tiny_grid, tmp_path, capsys):
    dest = tmp_path / "results"
    assert main(["report", str(tiny_grid), "--to", str(dest)]) == 0
    copied = dest / "runs" / RUNS[0]
    assert (copied / "metrics.csv").exists() and not (copied / "checkpoint.pt").exists()
    (dest / "report.md").unlink()
    assert main(["report", str(dest)]) == 0
    assert "Redr-Random" in (dest / "report.md").read_text()
    assert main(["report", str(tmp_path / "nothing-here")]) == 2


def test_timing_and_memory_grids_on_the_generated_task(tmp_path):
    from redr.experiments.probe import main as probe_main
    from redr.experiments.report import write_report
    from redr.experiments.runner import _write_cell, requested_config

    timing = build_cells("timing", datasets=["synthetic"], epochs=2, models=["random", "dense-neuron"])
    assert [c.name for c in timing] == ["timing_synthetic_random_d0.1_s0", "timing_synthetic_dense-neuron_s0"]
    run_grid(timing, tmp_path, device="cpu", progress=False, verbose=False, log=lambda *_: None)
    memory = build_cells("memory", datasets=["synthetic"], models=["random"], densities=[0.1], epochs=1)
    assert [c.kind for c in memory] == ["memory-baseline", "memory"]
    for cell in memory:  # in this process (the grid starts a fresh one per configuration): the same code path
        cell.options.update(hidden=[64, 64], train_rows=256, test_rows=64)  # not 4096 wide in a unit test
        config = requested_config(cell, "cpu", None)
        _write_cell(tmp_path / cell.name, cell)
        probe_main([json.dumps({"config": config.to_dict(), "out": str(tmp_path / cell.name),
                                "baseline": cell.kind == "memory-baseline"})])
    write_report(tmp_path)
    with open(tmp_path / "tables/timing.csv") as fh:
        timing_rows = {r["model"]: r for r in csv.DictReader(fh)}
    assert float(timing_rows["dense-neuron"]["ratio_to_dense_neuron"]) == 1.0
    assert float(timing_rows["random"]["train_seconds"]) > 0
    with open(tmp_path / "tables/memory.csv") as fh:
        memory_rows = list(csv.DictReader(fh))
    assert [r["model"] for r in memory_rows] == ["random"] and float(memory_rows[0]["peak_bytes"]) > 0
    assert float(memory_rows[0]["paper_mb"]) == 305.1


# ---------------------------------------------------------------------- grids
def test_grids_have_the_papers_cells():
    cells = build_cells("fashion-mnist")
    assert len(cells) == 3 * (7 * 3 + 2) and len({c.name for c in cells}) == len(cells)
    assert "fashion-mnist_gradient-global_d0.03_s2" in {c.name for c in cells}
    assert {c.epochs for c in cells} == {30}
    higgs = build_cells("higgs", quick=True)
    assert {c.epochs for c in higgs} == {10} and {c.seed for c in higgs} == {0, 1, 2}
    assert all("train_rows" not in c.options for c in higgs)
    quick = build_cells("fashion-mnist", quick=True, seeds=2)
    assert {c.options["train_rows"] for c in quick} == {20_000} and {c.seed for c in quick} == {0, 1}
    freq = build_cells("frequency", datasets=["fashion-mnist"], seeds=1)
    assert len(freq) == 6 * 4 and "fashion-mnist_random_d0.1_s0" in {c.name for c in freq}  # shared with the grid
    depth = build_cells("depth", datasets=["fashion-mnist"], seeds=1)
    assert "fashion-mnist_loss_d0.1_h128-128-128-128-128-128-128-128_s0" in {c.name for c in depth}
    wt = build_cells("woodtaylor", seeds=1)
    assert {c.options["dataset"] for c in wt} == {"kmnist", "higgs"} and len(wt) == 2 * 7
    memory = build_cells("memory", datasets=["fashion-mnist"])
    assert len(memory) == 1 + 7 * 3 + 2 and all(c.options["hidden"] == [4096, 4096] for c in memory)
    assert run_name({"dataset": "higgs", "model": "sparse", "algorithm": "woodtaylor", "density": 0.1, "seed": 0,
                     "algorithm_options": {"block_size": 34, "dampening": 0.0001}}) == "higgs_woodtaylor_d0.1_B34_lam0.0001_s0"


@pytest.mark.parametrize("args,message", [
    (["reproduce", "fashion-mnist", "--algorithms", "sett"], "unknown name"),
    (["reproduce", "fashion-mnist", "--dataset", "higgs"], "does not apply"),
    (["reproduce", "woodtaylor", "--algorithms", "random"], "not part of the woodtaylor experiment"),
    (["reproduce", "fashion-mnist", "--densities", "0"], "densities"),
    (["reproduce", "nothing"], "invalid choice"),
])
def test_bad_options_exit_2(tmp_path, capsys, args, message):
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------- runs read back
def test_run_counts_its_redistribution_steps(tmp_path):
    from redr.experiments.results import Run

    rows = [{"epoch": e, "alpha": a, "test_acc": 0.5} for e, a in enumerate([0.5, 0.2, 0.0, math.nan], 1)]
    run = Run("r", tmp_path, "train", "done", {"dataset": "synthetic", "redistribute_every": 8}, {}, rows)
    assert run.redistributions == 2 and run.every == 8
