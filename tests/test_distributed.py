"""Data-parallel training (redr.training.distributed): 2 gloo processes on 127.0.0.1, spawned by the test.

One spawn runs every check that needs two processes (a process start costs seconds here), writing what it saw
to files that the test then compares:

* every available algorithm for a few epochs: identical indices and values on both ranks after each
  redistribution (and the topology really changes);
* one epoch with global batch B (odd, so the slices differ by one sample, and a last batch of one row, so one
  rank's slice is empty) against a one-process run with batch B, with and without augmentation;
* a stop requested on rank 1 only stops both ranks after the same step; resuming from rank 0's mid-epoch
  checkpoint on both ranks gives exactly the uninterrupted run;
* a topology or weight mismatch between the ranks stops both with TopologyMismatchError.
"""
import dataclasses
import json
import shutil
import subprocess
import sys

import pytest
import torch

from redr.data.synthetic import make_synthetic
from redr.redistribution.algorithms.registry import ALGORITHMS, algorithm_class
from redr.sparse.convert import sparse_layers
from redr.training import distributed
from redr.training.config import RunConfig
from redr.training.api import train
from redr.training.distributed.cli import cli_mode, without_options
from redr.training.rundir import read_metrics
from redr.training.trainer import Trainer


def available_algorithms() -> list[str]:
    names = []
    for name in ALGORITHMS:
        try:
            algorithm_class(name)
        except ImportError:  # an algorithm not written yet
            continue
        names.append(name)
    return names


def quiet(*_):
    pass


def algorithm_config(name: str) -> RunConfig:
    return RunConfig.from_options(dataset="synthetic", algorithm=name, density=0.25, hidden=[48, 48], epochs=3,
                                  batch_size=64, train_rows=128, test_rows=64, induced_loss_rows=64, device="cpu")


def equivalence_config(augment: bool) -> RunConfig:
    # 316 rows, batch 63: 5 batches of 63 (slices of 32 and 31) and a last batch of 1 row (rank 1: empty)
    config = RunConfig.from_options(dataset="synthetic", epochs=1, batch_size=63, train_rows=316, test_rows=300,
                                    hidden=[32, 32], density=0.3, device="cpu")
    config.augment = augment  # the synthetic preset has no images; equivalence_data() gives its rows a 1x4x4 shape
    return config


def equivalence_data():
    # 16 features seen as 1x4x4 images, so that augmentation applies
    return dataclasses.replace(make_synthetic(316, 300, features=16), image_shape=(1, 4, 4))


def snapshot(model) -> list:
    return [(layer.indices.clone(), layer.values.detach().clone()) for _, layer in sparse_layers(model)]


def params(model) -> list:
    return [p.detach().clone() for p in model.parameters()]


def _worker(parallel, out, algorithms):
    rank = parallel.rank
    result = {}

    # 1. every algorithm: a snapshot after each epoch's redistribution
    for name in algorithms:
        trainer = Trainer(algorithm_config(name), None, progress=False, log=quiet, parallel=parallel)
        snaps = [snapshot(trainer.model)]
        for epoch in range(1, trainer.config.epochs + 1):
            trainer.run_epoch(epoch)
            trainer.epoch = epoch
            snaps.append(snapshot(trainer.model))
        result[f"algo/{name}"] = {"snapshots": snaps, "history": [r.alpha for r in trainer.redistributor.history]}

    # 2. one epoch, global batch 63, against one process (run in the test process)
    for augment in (False, True):
        trainer = Trainer(equivalence_config(augment), None, progress=False, log=quiet, parallel=parallel,
                          dataset=equivalence_data())
        trainer.run()
        result[f"equiv/{augment}"] = {"metrics": trainer.metrics, "params": params(trainer.model),
                                      "augment_state": trainer.generators["augment"].get_state()}

    # 3. a stop asked on rank 1 only, then a resume from rank 0's checkpoint on both ranks
    config = algorithm_config("random")
    run_dir = out / "run"
    stopped = Trainer(config, run_dir, progress=False, log=quiet, parallel=parallel)
    if rank == 0:
        run_dir.mkdir()
    parallel.barrier()
    if rank == 1:
        stopped._stop_requested = "SIGTERM"
    try:
        stopped.run()
        result["stop"] = "not stopped"
    except KeyboardInterrupt as exc:
        result["stop"] = (str(exc), stopped.epoch, stopped.step_in_epoch)
    if rank == 0:
        shutil.copytree(run_dir, out / "stopped")  # resumed by one process in the test
    parallel.barrier()
    resumed = train(config, run_dir, resume=True, progress=False, log=quiet, parallel=parallel)
    straight = Trainer(config, None, progress=False, log=quiet, parallel=parallel)
    straight.run()
    result["resume"] = {"resumed": params(resumed.model), "straight": params(straight.model),
                        "metrics": [(r["train_loss"], r["test_loss"]) for r in resumed.metrics],
                        "straight_metrics": [(r["train_loss"], r["test_loss"]) for r in straight.metrics]}

    # 4. a topology mismatch (rank 1 moves one weight), then a weight mismatch
    errors = []
    trainer = Trainer(algorithm_config("random"), None, progress=False, log=quiet, parallel=parallel)
    layer = sparse_layers(trainer.model)[0][1]
    for tamper in ("topology", "values"):
        if rank == 1 and tamper == "topology":
            keys = set(layer.layout.keys().tolist())
            free = next(k for k in range(layer.in_features * layer.out_features) if k not in keys)
            layer.change_topology(torch.tensor([0]), torch.tensor([[free // layer.in_features], [free % layer.in_features]]))
        elif tamper == "values":
            trainer = Trainer(algorithm_config("random"), None, progress=False, log=quiet, parallel=parallel)
            if rank == 1:
                with torch.no_grad():
                    sparse_layers(trainer.model)[1][1].values[3] += 1e-6
        try:
            parallel.check_topology(trainer.model, "in the test")
            errors.append(None)
        except distributed.TopologyMismatchError as exc:
            errors.append(str(exc))
    result["mismatch"] = errors
    torch.save(result, out / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp")
    algorithms = available_algorithms()
    distributed.spawn(_worker, 2, (out, algorithms), threads=1)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return ranks, algorithms, out


def test_every_algorithm_keeps_the_ranks_identical(two_process_results):
    (r0, r1), algorithms, _ = two_process_results
    assert {"none", "random"} <= set(algorithms)
    for name in algorithms:
        a, b = r0[f"algo/{name}"], r1[f"algo/{name}"]
        assert a["history"] == b["history"] and len(a["history"]) == 2, name  # redistributed after epochs 1 and 2
        for epoch, (sa, sb) in enumerate(zip(a["snapshots"], b["snapshots"])):
            for (ia, va), (ib, vb) in zip(sa, sb):
                assert torch.equal(ia, ib), f"{name}: indices differ between ranks after epoch {epoch}"
                assert torch.equal(va, vb), f"{name}: values differ between ranks after epoch {epoch}"
        moved = any(not torch.equal(i0, i1) for (i0, _), (i1, _) in zip(a["snapshots"][0], a["snapshots"][1]))
        assert moved == (name != "none"), f"{name}: topology {'unchanged' if name != 'none' else 'changed'}"


@pytest.mark.parametrize("augment", [False, True])
def test_two_processes_match_one_process_with_the_same_global_batch(two_process_results, augment):
    (r0, r1), _, _ = two_process_results
    single = Trainer(equivalence_config(augment), None, progress=False, log=quiet, dataset=equivalence_data())
    single.run()
    for r in (r0, r1):
        got = r[f"equiv/{augment}"]
        for p_dp, p_one in zip(got["params"], params(single.model)):
            torch.testing.assert_close(p_dp, p_one, rtol=1e-4, atol=2e-5)
        row, ref = got["metrics"][0], single.metrics[0]
        for key in ("train_loss", "test_loss", "test_acc"):
            assert row[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), key
        assert torch.equal(got["augment_state"], single.generators["augment"].get_state())
    keys = ("train_loss", "test_loss", "test_acc")  # every rank reports the same metrics
    assert [[m[k] for k in keys] for m in r0[f"equiv/{augment}"]["metrics"]] == \
        [[m[k] for k in keys] for m in r1[f"equiv/{augment}"]["metrics"]]


def test_a_stop_on_one_rank_stops_both_and_resume_continues_exactly(two_process_results):
    (r0, r1), _, out = two_process_results
    for r in (r0, r1):
        message, epoch, step = r["stop"]
        assert (epoch, step) == (0, 1), "both ranks stop after the first step"
    assert "SIGTERM" in r1["stop"][0] and "another process" in r0["stop"][0]
    for r in (r0, r1):
        for a, b in zip(r["resume"]["resumed"], r["resume"]["straight"]):
            assert torch.equal(a, b)
        assert r["resume"]["metrics"] == r["resume"]["straight_metrics"]
    run_dir = out / "run"
    assert [row["epoch"] for row in read_metrics(run_dir / "metrics.csv")] == [1, 2, 3]
    assert (run_dir / "DONE").exists()
    # the checkpoint holds global steps and generator states: one process can continue it too (to float rounding)
    alone = train(algorithm_config("random"), out / "stopped", resume=True, progress=False, log=quiet)
    for a, b in zip(params(alone.model), r0["resume"]["straight"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)


def test_a_topology_or_weight_mismatch_stops_every_rank(two_process_results):
    (r0, r1), _, _ = two_process_results
    for r in (r0, r1):
        topology, values = r["mismatch"]
        assert topology is not None and "different sparse topologies in the test" in topology
        assert "layer" in topology and "rank 0 nnz" in topology and "rank 1 nnz" in topology
        assert values is not None and "different weights" in values and "[1]" in values


def test_shard_range_matches_batch_indices():
    from redr.data.batching import batch_indices

    for n, w in ((63, 2), (1, 2), (10, 3), (7, 4)):
        for r in range(w):
            lo, hi = distributed.shard_range(n, r, w)
            expected = batch_indices(n, n, None, shuffle=False, rank=r, world_size=w)[0]
            assert torch.equal(torch.arange(lo, hi), expected)


def test_argv_round_trip_and_modes(monkeypatch):
    from redr.cli import build_parser

    argv = ["train", "--dataset", "synthetic", "--hidden", "8", "8", "--no-augment", "--lr", "0.01", "--no-progress",
            "--aug-degrees", "5", "--nproc", "2"]
    args = build_parser().parse_args(argv)
    assert cli_mode(args) == "launch"
    for nproc in (["--nproc", "2"], ["--nproc=2"], ["--np", "2"]):  # every spelling argparse accepts
        given = ["train", *argv[1:-2], *nproc, "--out", "x"]
        worker = without_options(given[1:], ("--nproc", "--out"))
        assert worker == argv[1:-2]
        again = build_parser().parse_args(["train", *worker])
        assert {k: v for k, v in vars(again).items() if k not in ("nproc", "out")} == \
            {k: v for k, v in vars(build_parser().parse_args(given)).items() if k not in ("nproc", "out")}
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    from redr.errors import UsageError

    with pytest.raises(UsageError, match="leave --nproc out"):
        cli_mode(args)
    args.nproc = None
    assert cli_mode(args) == "worker"


def test_cli_nproc_launches_torchrun_and_only_rank_0_writes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "redr", "train", "--nproc", "2", "--dataset", "synthetic", "--epochs", "2",
           "--train-rows", "256", "--test-rows", "64", "--hidden", "32", "32", "--device", "cpu", "--no-progress",
           "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("done: ") == 1 and done.stdout.count("epoch   2") == 1  # rank 0 only
    assert "torch.distributed.run --standalone --nproc-per-node=2" in done.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["device"]["world_size"] == 2
    assert [row["epoch"] for row in read_metrics(out / "metrics.csv")] == [1, 2]
    assert {p.name for p in out.iterdir()} == {"DONE", "checkpoint.pt", "checkpoint.prev.pt", "config.json",
                                               "metrics.csv"}
