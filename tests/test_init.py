"""Value initialisation (issue 16): the dense baselines use nn.Linear's rule, sparse nets --init paper|kaiming.

The expected bounds are written here from their definitions: nn.Linear's default is kaiming_uniform_(a=sqrt(5)),
i.e. gain sqrt(2 / (1 + 5)) and bound gain * sqrt(3 / fan_in) = 1/sqrt(fan_in), and its bias U(+-1/sqrt(fan_in));
a uniform U(-b, b) has variance b^2 / 3.
"""
import math

import pytest
import torch
from torch import nn

import redr
from redr.errors import UsageError
from redr.sparse.layer import SparseLinear
from redr.training.config import RunConfig, with_legacy_defaults


def nn_linear_bound(fan_in: int) -> float:
    gain = math.sqrt(2.0 / (1 + 5))  # kaiming_uniform_ with a = sqrt(5), leaky_relu
    return gain * math.sqrt(3.0 / fan_in)


def check_uniform(values: torch.Tensor, bound: float):
    values = values.detach().double().flatten()
    assert values.abs().max() <= bound
    assert values.abs().max() > 0.95 * bound  # fills the range, not a narrower one
    # the sample variance of n uniform draws has a relative spread of sqrt(0.8 / n): 4 of those
    assert values.var().item() == pytest.approx(bound**2 / 3, rel=4 * math.sqrt(0.8 / values.numel()))


def test_dense_baseline_uses_nn_linears_bounds_and_variance():
    model = redr.build_mlp([400, 300, 10], generator=torch.Generator().manual_seed(0))
    first = model[0]
    assert isinstance(first, nn.Linear)
    check_uniform(first.weight, nn_linear_bound(400))
    check_uniform(first.bias, 1 / math.sqrt(400))
    # the paper's rule would give +-1/400: far narrower
    assert first.weight.abs().max() > 10 / 400


def test_dense_init_comes_from_the_generator_not_the_global_seed():
    torch.manual_seed(1)
    a = redr.build_mlp([50, 20, 3], generator=torch.Generator().manual_seed(5))
    torch.manual_seed(2)
    b = redr.build_mlp([50, 20, 3], generator=torch.Generator().manual_seed(5))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_dense_baseline_can_keep_the_papers_rule():
    model = redr.build_mlp([400, 30, 10], generator=torch.Generator().manual_seed(0), init="paper")
    check_uniform(model[0].weight, 1 / 400)
    assert model[0].bias.abs().max() <= 1 / math.sqrt(400)


def test_sparse_kaiming_uses_the_active_fan_in():
    fan_in, inputs, out = 25, 1000, 400
    rows = torch.arange(out).repeat_interleave(fan_in)
    cols = torch.cat([torch.randperm(inputs, generator=torch.Generator().manual_seed(r))[:fan_in].sort().values
                      for r in range(out)])
    layer = SparseLinear.from_topology(inputs, out, rows, cols, generator=torch.Generator().manual_seed(0), init="kaiming")
    check_uniform(layer.values, nn_linear_bound(fan_in))  # 1/sqrt(25), not 1/sqrt(1000)
    check_uniform(layer.bias, 1 / math.sqrt(fan_in))


def test_sparse_kaiming_bounds_each_neuron_by_its_own_fan_in():
    rows = torch.tensor([0, 0, 0, 0, 2, 3, 3])
    cols = torch.tensor([1, 2, 5, 9, 0, 3, 7])
    layer = SparseLinear.from_topology(10, 4, rows, cols, generator=torch.Generator().manual_seed(0), init="kaiming")
    fan_in = {0: 4, 1: 0, 2: 1, 3: 2}
    for v, r in zip(layer.values.detach().tolist(), rows.tolist()):
        assert abs(v) <= 1 / math.sqrt(fan_in[r])
    for r, b in enumerate(layer.bias.detach().tolist()):
        assert abs(b) <= 1 / math.sqrt(max(fan_in[r], 1))


def test_sparse_kaiming_draws_the_same_topology_as_paper_and_scales_the_values():
    """Same draws, bound 1/sqrt(k) instead of 1/k: the values differ by the factor k/sqrt(k)."""
    a = redr.build_mlp([64, 32, 10], 0.25, generator=torch.Generator().manual_seed(3))
    b = redr.build_mlp([64, 32, 10], 0.25, generator=torch.Generator().manual_seed(3), init="kaiming")
    for la, lb in zip(a[::2], b[::2]):
        assert torch.equal(la.indices, lb.indices)
        k = 16 if la.in_features == 64 else 8
        assert torch.allclose(lb.values.double(), la.values.double() * k / math.sqrt(k), rtol=1e-5, atol=1e-7)


def test_unknown_init_is_one_clear_line():
    with pytest.raises(UsageError, match=r"^--init must be one of paper, kaiming, got 'he'$"):
        RunConfig.from_options(preset="synthetic", init="he")
    with pytest.raises(ValueError, match="unknown init 'he'"):
        redr.build_mlp([8, 4, 2], 0.5, init="he")


def test_run_config_defaults():
    assert RunConfig.from_options(preset="kmnist").init == "paper"
    assert RunConfig.from_options(preset="kmnist", model="dense-neuron").init == "kaiming"
    assert RunConfig.from_options(preset="higgs", model="dense-param").init == "kaiming"
    assert RunConfig.from_options(preset="kmnist", init="kaiming").init == "kaiming"
    assert RunConfig.from_options(preset="kmnist", model="dense-neuron", init="paper").init == "paper"
    practical = RunConfig.from_options(dataset="fashion-mnist")
    assert practical.preset == "fashion-mnist" and practical.init == "kaiming"


def test_trainer_builds_the_dense_baseline_with_nn_linears_rule():
    from redr.training.model import build_model

    config = RunConfig.from_options(preset="synthetic", model="dense-neuron")
    model, _ = build_model(config, 40, 3, torch.Generator().manual_seed(0), "cpu")
    assert model[0].weight.abs().max() <= nn_linear_bound(40)
    assert model[0].weight.abs().max() > 0.9 * nn_linear_bound(40)


def test_saved_configs_before_init_existed_meant_the_papers_rule():
    assert with_legacy_defaults({"model": "dense-neuron"})["init"] == "paper"
    assert with_legacy_defaults({"model": "dense-neuron", "init": "kaiming"})["init"] == "kaiming"
    assert RunConfig.from_dict({"model": "dense-neuron", "preset": "kmnist"}).init == "paper"


def test_reproduce_fashion_mnist_keeps_the_papers_kmnist_setup():
    from redr.experiments.grid import build_cells
    from redr.experiments.runner import requested_config
    from redr.training.config import PRESETS

    cell = next(c for c in build_cells("fashion-mnist") if c.options.get("model") == "sparse")
    config = requested_config(cell, "cpu", None)
    paper = PRESETS["kmnist"]
    assert (config.dataset, config.lr, config.batch_size, config.augment, config.epochs, config.init) == (
        "fashion-mnist", paper["lr"], paper["batch_size"], paper["augment"], paper["epochs"], "paper")


def test_committed_sparse_runs_match_the_grid_and_only_the_dense_ones_changed():
    """The sparse runs of results/ need no rerun (same config); the dense baselines' init is the one change."""
    from pathlib import Path

    from redr.experiments.grid import build_cells
    from redr.experiments.runner import config_mismatches, read_saved_config, requested_config

    results = Path(__file__).resolve().parents[1] / "results" / "fashion-mnist-full" / "runs"
    for cell in build_cells("fashion-mnist"):
        saved = read_saved_config(results / cell.name)
        assert saved is not None, cell.name
        diff = config_mismatches(saved, requested_config(cell, "cpu", None).to_dict(), cell.kind)
        assert diff == [], (cell.name, diff)
