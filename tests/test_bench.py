"""`redr bench`: each suite runs on tiny sizes and appends valid JSON lines with the expected keys.

Only the plumbing is tested here (the numbers of a smoke run on a shared machine mean nothing).
"""
from __future__ import annotations

import json

import pytest
import torch

from conftest import cuda
from redr.cli import main
from redr.redistribution.algorithms import registry

ENV_KEYS = {"suite", "kind", "timestamp", "machine", "cpu_model", "cores", "device", "device_name", "torch_version",
            "commit", "config", "results", "ratios"}


def read_lines(path):
    lines = path.read_text().splitlines()
    assert lines, f"{path} is empty"
    records = [json.loads(line) for line in lines]
    for r in records:
        assert ENV_KEYS <= set(r), sorted(ENV_KEYS - set(r))
        assert r["torch_version"] == torch.__version__
    return records


@pytest.fixture
def broken_algorithm(monkeypatch):
    """An algorithm whose module does not import (as one still being written): suites skip it with a reason."""
    monkeypatch.setitem(registry.ALGORITHMS, "broken",
                        registry.AlgorithmSpec("broken", "Broken", "local", "redr.redistribution.no_such_module:Broken"))
    return "broken"


def test_layer_suite(tmp_path, capsys):
    out = tmp_path / "layer.jsonl"
    rc = main(["bench", "layer", "--quick", "--shapes", "64x32", "--densities", "0.1", "--batches", "16",
               "--repeats", "2", "--warmup", "1", "--json", str(out)])
    assert rc == 0
    records = read_lines(out)
    times = [r for r in records if r["kind"] == "time"]
    memory = [r for r in records if r["kind"] == "memory"]
    assert len(times) == 1 and len(memory) == 1
    t = times[0]
    assert t["suite"] == "layer" and t["config"]["batch"] == 16 and t["config"]["quick"] is True
    assert t["results"]["linear_ms"] > 0
    for backend in ("torch", "dense", "auto"):
        assert t["results"][f"{backend}_ms"] > 0
        assert t["ratios"][backend] == pytest.approx(t["results"]["linear_ms"] / t["results"][f"{backend}_ms"], rel=1e-2)
    m = memory[0]["results"]
    assert m["sparse_bytes"] == m["sparse_values_bytes"] + m["sparse_grad_bytes"] + m["sparse_index_bytes"]
    assert m["dense_bytes"] == 2 * 64 * 32 * 4
    printed = capsys.readouterr().out
    assert "linear ms" in printed and "persistent memory" in printed


def test_layer_suite_conv_shapes_alone_time_both_cpu_algorithms(tmp_path, capsys):
    out = tmp_path / "conv.jsonl"
    rc = main(["bench", "layer", "--quick", "--conv-shapes", "4x4x3x6", "--densities", "0.5", "--batches", "4",
               "--backends", "numba", "--conv-algorithms", "direct,unfold", "--repeats", "1", "--warmup", "0",
               "--json", str(out)])
    assert rc == 0
    records = read_lines(out)
    assert [r["kind"] for r in records] == ["conv-time"]  # no linear shapes when only convolutions are asked for
    assert records[0]["config"]["batch"] == 4
    assert records[0]["results"]["numba:direct_ms"] > 0 and records[0]["results"]["numba:unfold_ms"] > 0
    assert "linear ms" not in capsys.readouterr().out
    assert main(["bench", "layer", "--conv-shapes", "4x4x3x6", "--conv-algorithms", "im2col"]) == 2


def test_epoch_suite(tmp_path, capsys, broken_algorithm):
    out = tmp_path / "epoch.jsonl"
    rc = main(["bench", "epoch", "--quick", "--nets", "higgs", "--algorithms", f"none,random,{broken_algorithm}",
               "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "skip algorithm broken" in printed and "no_such_module" in printed
    records = read_lines(out)
    kinds = [r["kind"] for r in records]
    assert kinds == ["dense", "sparse", "sparse", "dense-recheck"]
    sparse = [r for r in records if r["kind"] == "sparse"]
    assert [r["config"]["algorithm"] for r in sparse] == ["none", "random"]
    for r in sparse:
        res = r["results"]
        assert res["epoch_s"] > 0 and res["redistribution_s"] >= 0 and res["dense_epoch_s"] > 0
        assert r["ratios"]["epoch_vs_dense"] == pytest.approx(res["epoch_s"] / res["dense_epoch_s"], rel=1e-2)
        assert r["config"]["net"] == "higgs" and r["config"]["sizes"][0] == 21 and r["config"]["dense_last"]
        assert r["config"]["alpha"] > 0.4  # the first, largest step of the paper's schedule
    assert "redistr %" in printed


def test_memory_suite(tmp_path, capsys, broken_algorithm):
    out = tmp_path / "memory.jsonl"
    rc = main(["bench", "memory", "--quick", "--algorithms", f"none,{broken_algorithm}", "--steps", "2",
               "--jobs", "2", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "skip algorithm broken" in printed and "bytes per active weight (target <= 32)" in printed
    records = read_lines(out)
    assert [r["kind"] for r in records] == ["dense", "sparse"], [r["results"].get("error") for r in records]
    per = records[1]["results"]["bytes_per_weight"]  # int32 indices: 4 + 4 + 8 + 4 + 8 and the row pointers
    assert per["values"] == per["gradient"] == 4 and per["adam"] == 8 and 28 <= per["total"] <= 32
    assert records[0]["results"]["bytes_per_weight"] == {}
    dense, sparse = records
    for r in records:
        assert r["results"]["peak_bytes"] > 0 and r["results"]["state_bytes"] > 0
        assert r["results"]["peak_method"]
    assert sparse["results"]["state_bytes"] < dense["results"]["state_bytes"]
    assert sparse["ratios"]["state_vs_dense"] == pytest.approx(
        sparse["results"]["state_bytes"] / dense["results"]["state_bytes"], rel=1e-3)


def test_summary_and_errors(tmp_path, capsys):
    out = tmp_path / "layer.jsonl"
    main(["bench", "layer", "--quick", "--shapes", "32x32", "--densities", "0.1", "--batches", "8", "--repeats", "1",
          "--warmup", "0", "--backends", "torch", "--json", str(out)])
    capsys.readouterr()
    assert main(["bench", "summary", str(out)]) == 0
    assert "32x32" in capsys.readouterr().out
    assert main(["bench", "summary"]) == 2
    assert main(["bench", "layer", "--densities", "0"]) == 2
    assert main(["bench", "epoch", "--algorithms", "nope", "--quick", "--json", str(tmp_path / "x.jsonl")]) == 2


def test_tensor_state_bytes_counts_each_storage_once():
    from redr.bench.memory import tensor_state_bytes

    a = torch.zeros(10)
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.zeros(4)
    assert tensor_state_bytes({"a": a, "b": [a, a[2:]]}, p) == 40 + 16 + 16


@cuda
def test_suites_on_cuda(tmp_path):
    out = tmp_path / "cuda.jsonl"
    assert main(["bench", "layer", "--device", "cuda", "--quick", "--shapes", "64x32", "--densities", "0.1",
                 "--batches", "16", "--repeats", "2", "--json", str(out)]) == 0
    assert main(["bench", "epoch", "--device", "cuda", "--quick", "--nets", "kmnist", "--algorithms", "none,random",
                 "--json", str(out)]) == 0
    assert main(["bench", "memory", "--device", "cuda", "--quick", "--algorithms", "none", "--steps", "2",
                 "--json", str(out)]) == 0
    records = read_lines(out)
    assert {r["suite"] for r in records} == {"layer", "epoch", "memory"}
    assert all(r["device"].startswith("cuda") for r in records)
    assert "numba_ms" not in records[0]["results"]
    mem = [r for r in records if r["suite"] == "memory"]
    assert all("max_memory_allocated" in r["results"]["peak_method"] for r in mem)
