"""``redr reproduce scale`` (issue 15, item 5) on tiny widths, and the pieces the 1M-wide run needed."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from redr.errors import UsageError
from redr.experiments.grid import build_cells
from redr.experiments.report import write_report
from redr.experiments.runner import plan_grid, run_grid
from redr.experiments.scale import dense_twin_bytes, dense_twin_parameters
from redr.redistribution.selection import random as random_selection
from redr.sparse.convert import FeatureMajorLinear, build_mlp
from redr.training.config import RunConfig
from redr.training.estimate import estimate_run


def tiny_cells(**kw):
    return build_cells("scale", datasets=["synthetic"], widths=[24], fan_in=4, epochs=2,
                       models=["gradient-global", "dense-neuron"], **kw)


def test_cells_follow_the_options():
    cells = build_cells("scale", widths=[4096, 1048576], models=["random", "gradient-global", "dense-neuron"])
    assert [c.name for c in cells] == ["scale_fashion-mnist_random_w4096_k16_s0", "scale_fashion-mnist_gradient-global_w4096_k16_s0",
                                       "scale_fashion-mnist_random_w1048576_k16_s0",
                                       "scale_fashion-mnist_gradient-global_w1048576_k16_s0",
                                       "scale_fashion-mnist_dense-neuron_h256-256_s0"]
    big = cells[3].options
    assert big["hidden"] == [1048576, 1048576] and big["fan_in"] == 16 and big["dense_last"] and big["batch_size"] == 128
    assert cells[-1].options["model"] == "dense-neuron" and cells[-1].options["hidden"] == [256, 256]
    assert {c.kind for c in cells} == {"scale"} and all(c.epochs == 2 for c in cells)
    with pytest.raises(UsageError, match="not part of the scale experiment"):
        build_cells("scale", models=["woodfisher"])
    assert build_cells("scale", widths=[64], models=["random"], train_rows=4096)[0].name.endswith("_k16_r4096_s0")
    with pytest.raises(UsageError, match="--test-rows to the scale experiment only; not to fashion-mnist"):
        build_cells("fashion-mnist", widths=[64])
    with pytest.raises(UsageError, match="--densities and --quick do not apply"):
        build_cells("scale", densities=[0.1])


def test_dense_twin_is_weights_and_adam():
    sizes = [784, 1048576, 1048576, 10]
    params = 784 * 1048576 + 1048576 + 1048576 ** 2 + 1048576 + 1048576 * 10 + 10
    assert dense_twin_parameters(sizes) == params
    assert dense_twin_bytes(sizes) == 12 * params  # float32 weights + two Adam moments: ~13 TB, never allocated


def test_ladder_runs_resumes_and_reports(tmp_path):
    out = tmp_path / "scale"
    lines = []
    summary = run_grid(tiny_cells(), out, device="cpu", progress=False, log=lines.append, threads=1)
    assert summary.finished == 2 and not summary.failed, lines
    run = out / "scale_synthetic_gradient-global_w24_k4_s0"
    extra = json.loads((run / "scale.json").read_text())
    assert extra["sizes"] == [32, 24, 24, 10] and extra["dense_twin_bytes"] == dense_twin_bytes([32, 24, 24, 10])
    assert 0 < extra["build_peak_bytes"] and extra["bytes_per_active_weight"]["total"] > 0
    assert any(line.startswith("  [1/2] epoch") for line in lines)  # streamed from the fresh process
    # finished runs are skipped by the same command
    assert {p.state for p in plan_grid(tiny_cells(), out, "cpu", None)} == {"done"}
    report = write_report(out)
    text = report.read_text()
    assert "width ladder" in text and "32-24-24-10" in text and "figures/scale.png" in text
    assert (out / "figures" / "scale.png").stat().st_size > 1000
    with open(out / "tables" / "scale.csv") as fh:
        rows = list(csv.DictReader(fh))
    by_model = {r["model"]: r for r in rows}
    assert set(by_model) == {"sparse", "dense-neuron"}
    sparse = by_model["sparse"]
    assert float(sparse["redistribution_seconds"]) > 0 and float(sparse["peak_rss_bytes"]) > 0
    assert len(sparse["test_acc_per_epoch"].split(" / ")) == 2


def test_feature_major_linear_equals_linear():
    torch.manual_seed(0)
    wide = FeatureMajorLinear(40, 7)
    ref = torch.nn.Linear(40, 7)
    ref.load_state_dict(wide.state_dict())
    for x in (torch.randn(40, 9).t(), torch.randn(9, 40)):  # a feature-major view, and an ordinary batch
        xs = [x.detach().clone().requires_grad_(True) for _ in range(2)]
        outs = [wide(xs[0]), ref(xs[1])]
        torch.testing.assert_close(outs[0], outs[1])
        for o in outs:
            o.square().sum().backward()
        torch.testing.assert_close(xs[0].grad, xs[1].grad)
        torch.testing.assert_close(wide.weight.grad, ref.weight.grad)
        wide.zero_grad(), ref.zero_grad()
    small = build_mlp([8, 16, 16, 3], fan_in=2, dense_last=True, generator=torch.Generator().manual_seed(0))
    assert type(small[-1]) is torch.nn.Linear  # below 2**16 inputs: the paper's nets keep nn.Linear


def test_large_draws_are_uniform_distinct_and_free(monkeypatch):
    monkeypatch.setattr(random_selection, "LARGE_DRAW", 1)
    monkeypatch.setattr(random_selection, "_BLOCK_DRAWS", 64)  # several blocks
    g = torch.Generator().manual_seed(0)
    n, k, rounds = 4000, 600, 200
    active = torch.sort(torch.randperm(n, generator=g)[:1200]).values
    counts = torch.zeros(n)
    for _ in range(rounds):
        keys = random_selection.random_inactive_keys(active, n, k, g)
        assert keys.numel() == k and bool((keys[1:] > keys[:-1]).all()) and not torch.isin(keys, active).any()
        counts[keys] += 1
    assert counts[active].sum() == 0
    free = counts[~torch.isin(torch.arange(n), active)]
    p = k / (n - active.numel())
    expected_std = (rounds * p * (1 - p)) ** 0.5
    assert abs(float(free.mean()) - rounds * p) < 1e-6  # exactly k per round
    assert 0.8 * expected_std < float(free.std()) < 1.2 * expected_std  # binomial spread: uniform over free positions


def test_estimate_counts_a_step_or_a_redistribution_not_both():
    config = RunConfig.from_options(dataset="fashion-mnist", hidden=[1048576, 1048576], fan_in=16, dense_last=True,
                                    algorithm="gradient-global", batch_size=128, epochs=30)
    est = estimate_run(config, 784, 10)
    always, step, redistribution = (est.phase_bytes(p) for p in ("always", "step", "redistribution"))
    assert step == est.part("activations") and redistribution >= est.part("gradient pass") + est.part("candidates")
    assert est.total_bytes == always + max(step, redistribution) < sum(p.bytes for p in est.parts)
    assert est.total_bytes < 14 * 2**30  # the 1M-wide run is not refused on this 24 GiB machine
