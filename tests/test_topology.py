"""Topology decided before the layer (issue 14) and layer-wise density distributions (issue 15, item 1).

References are written from the definitions: the paper's partitioned init drawn by hand in its documented
order, RigL's ERK densities by bisection on its defining equation, fan-in and partitions counted. They
never call the distribution code they check.
"""
from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch

import redr
from redr.cli import main
from redr.errors import UsageError
from redr.sparse import SparseLinear, TopologyError
from redr.sparse.distribution import ERK, FanIn, LayerShape, PerLayer, Uniform, erk_densities
from redr.training.config import RunConfig

SYNTHETIC = ["--dataset", "synthetic", "--train-rows", "128", "--test-rows", "32", "--hidden", "16", "16",
             "--batch-size", "64", "--epochs", "1", "--no-progress"]


def linear_layers(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (SparseLinear, torch.nn.Linear))]


def per_row(layer: SparseLinear) -> torch.Tensor:
    return (layer.crow[1:] - layer.crow[:-1]).long()


def one_per_partition(layer: SparseLinear, k: int) -> bool:
    rows, cols = layer.indices
    bounds = torch.arange(k + 1) * layer.in_features // k
    part = torch.bucketize(cols, bounds[1:], right=True).view(layer.out_features, k)
    return torch.equal(part, torch.arange(k).expand(layer.out_features, k))


# ---------------------------------------------------------------------- uniform: the paper's init, unchanged
def paper_layer_by_hand(in_f, out_f, density, g):
    """The paper's partitioned init, drawn in the documented order: topology, values, bias (all float64)."""
    n = int(round(density * in_f))
    u = torch.rand(out_f, n, generator=g, dtype=torch.float64).tolist()
    rows, cols = [], []
    for r in range(out_f):
        for p in range(n):
            lo, hi = p * in_f // n, (p + 1) * in_f // n
            rows.append(r)
            cols.append(lo + min(int(u[r][p] * (hi - lo)), hi - lo - 1))
    w, b = 1.0 / n, 1.0 / math.sqrt(n)
    values = [x * (2 * w) - w for x in torch.rand(len(rows), generator=g, dtype=torch.float64).tolist()]
    bias = [x * (2 * b) - b for x in torch.rand(out_f, generator=g, dtype=torch.float64).tolist()]
    return (torch.tensor([rows, cols]), torch.tensor(values, dtype=torch.float64).float(),
            torch.tensor(bias, dtype=torch.float64).float())


@pytest.mark.parametrize("how", ["density", "uniform", "object"])
def test_uniform_is_the_papers_init_bit_for_bit(how):
    sizes, density = [13, 7, 9, 5], 0.3
    kwargs = {"density": dict(density=density), "uniform": dict(distribution="uniform", density=density),
              "object": dict(distribution=Uniform(density))}[how]
    model = redr.build_mlp(sizes, generator=torch.Generator().manual_seed(4), **kwargs)
    g = torch.Generator().manual_seed(4)
    for (_, layer), (a, b) in zip(linear_layers(model), zip(sizes[:-1], sizes[1:])):
        indices, values, bias = paper_layer_by_hand(a, b, density, g)
        assert torch.equal(layer.indices, indices)
        assert torch.equal(layer.values.detach(), values) and torch.equal(layer.bias.detach(), bias)


def test_a_lone_layer_keeps_its_saved_init():
    """Saved from the code before the topology moved out of the layer (same seed, same numbers)."""
    layer = SparseLinear(7, 3, 0.43, generator=torch.Generator().manual_seed(11))
    assert layer.indices.tolist() == [[0, 0, 0, 1, 1, 1, 2, 2, 2], [0, 3, 6, 1, 3, 4, 0, 2, 6]]
    assert torch.equal(layer.values.detach(), torch.tensor(
        [-0.04777625575661659, 0.3114842474460602, 0.12764883041381836, 0.1438225954771042, -0.03206711262464523,
         -0.2684056758880615, -0.31995782256126404, 0.3002907335758209, -0.2813911437988281]))
    assert torch.equal(layer.bias.detach(), torch.tensor([0.4852605164051056, -0.11037518829107285, -0.126789852976799]))


# ---------------------------------------------------------------------- ERK
def erk_by_bisection(shapes, density):
    """RigL's ERK from its definition: d_l = min(1, eps * sum(dims_l) / prod(dims_l)) with
    sum_l d_l * positions_l = density * sum_l positions_l, solved for eps by bisection."""
    dims = [(out, inp, *kernel) for out, inp, kernel in shapes]
    scale = [sum(d) / math.prod(d) for d in dims]
    size = [math.prod(d) for d in dims]
    target = density * sum(size)
    lo, hi = 0.0, 1.0 / min(scale)
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sum(min(1.0, mid * s) * n for s, n in zip(scale, size)) < target else (lo, mid)
    return [min(1.0, hi * s) for s in scale]


ERK_NETS = [  # (out, in, kernel) of the sparse layers, density, how many layers ERK makes dense
    ([(10, 20, ()), (5, 10, ())], 0.3, 0),
    ([(256, 784, ()), (256, 256, ()), (10, 256, ())], 0.1, 1),  # the paper's KMNIST net: its output layer is dense
    ([(100, 100, ()), (2, 100, ())], 0.5, 1),  # the small output layer would need density > 1
    ([(64, 300, ()), (4, 64, ()), (3, 4, ())], 0.6, 2),  # capping one layer pushes the next over 1
    ([(32, 16, (3, 3)), (64, 32, (3, 3))], 0.1, 0),  # kernel dims enter the scale (ERK for convolutions)
    ([(32, 16, (3, 3)), (10, 32, (1, 1))], 0.2, 1),
]


@pytest.mark.parametrize("shapes,density,capped", ERK_NETS)
def test_erk_densities_match_the_definition(shapes, density, capped):
    layers = [LayerShape(str(i), out, inp, kernel) for i, (out, inp, kernel) in enumerate(shapes)]
    got, want = erk_densities(layers, density), erk_by_bisection(shapes, density)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert sum(d == 1.0 for d in got) == capped
    assert sum(d * layer.positions for d, layer in zip(got, layers)) == pytest.approx(density * sum(l.positions for l in layers))
    inputs = [inp * math.prod(kernel) for _, inp, kernel in shapes]
    assert ERK(density).fan_ins(layers) == [int(round(d * n)) for d, n in zip(want, inputs)]


def test_erk_mlp_rounds_each_layer_once_and_leaves_the_dense_last_out_of_the_budget():
    sizes, density = [21, 64, 64, 1], 0.2
    model = redr.build_mlp(sizes, distribution="erk", density=density, dense_last=True,
                           generator=torch.Generator().manual_seed(0))
    want = erk_by_bisection([(64, 21, ()), (64, 64, ())], density)  # the dense output layer is not in it
    (_, a), (_, b), (_, last) = linear_layers(model)
    assert isinstance(last, torch.nn.Linear) and not isinstance(last, SparseLinear)
    for layer, d in zip((a, b), want):
        k = int(round(d * layer.in_features))
        assert torch.equal(per_row(layer), torch.full((layer.out_features,), k)) and one_per_partition(layer, k)
        assert layer.values.abs().max() <= 1.0 / k


# ---------------------------------------------------------------------- constant fan-in, per-layer
def test_fan_in_gives_every_neuron_k_inputs_one_per_partition():
    model = redr.build_mlp([30, 12, 8, 4], fan_in=3, generator=torch.Generator().manual_seed(1))
    for _, layer in linear_layers(model):
        assert torch.equal(per_row(layer), torch.full((layer.out_features,), 3)) and one_per_partition(layer, 3)
        assert layer.values.abs().max() <= 1 / 3 and layer.bias.abs().max() <= 1 / math.sqrt(3)


def test_per_layer_mapping_float_is_a_density_int_a_fan_in():
    model = redr.build_mlp([30, 12, 8, 4], distribution={"0": 0.2, "2": 5, "4": 1.0})
    assert [int(per_row(layer)[0]) for _, layer in linear_layers(model)] == [6, 5, 8]
    assert all(bool((per_row(layer) == per_row(layer)[0]).all()) for _, layer in linear_layers(model))


def test_sparsify_with_a_distribution_keeps_dense_layers_out():
    model = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 2))
    redr.sparsify(model, distribution={"0": 4, "2": 0.5}, keep_dense=["4"])
    assert [int(per_row(model[i])[0]) for i in (0, 2)] == [4, 8] and type(model[4]) is torch.nn.Linear
    erk = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    redr.sparsify(erk, 0.4, distribution="erk")
    want = erk_by_bisection([(16, 20, ()), (2, 16, ())], 0.4)
    assert [int(per_row(erk[i])[0]) for i in (0, 2)] == [round(want[0] * 20), round(want[1] * 16)]


# ---------------------------------------------------------------------- a layer from a given topology
def test_from_topology_keeps_the_positions_and_bounds_each_neuron_by_its_own_fan_in():
    rows = torch.tensor([0, 0, 0, 0, 2, 3, 3])
    cols = torch.tensor([1, 2, 5, 9, 0, 3, 7])
    layer = SparseLinear.from_topology(10, 4, rows, cols, generator=torch.Generator().manual_seed(0))
    assert torch.equal(layer.indices, torch.stack([rows, cols]))
    fan_in = {0: 4, 1: 0, 2: 1, 3: 2}
    for v, r in zip(layer.values.detach().tolist(), rows.tolist()):
        assert abs(v) <= 1.0 / fan_in[r]
    for r, b in enumerate(layer.bias.detach().tolist()):
        assert abs(b) <= 1.0 / math.sqrt(max(fan_in[r], 1))
    x = torch.randn(3, 10, dtype=torch.float64)
    assert torch.allclose(layer(x.float()).double(), x @ layer.to_dense().double().T + layer.bias.double(), atol=1e-5)


@pytest.mark.parametrize("rows,cols,match", [
    ([0, 0], [3, 1], "row-major"), ([0, 0], [1, 1], "without duplicates"), ([0, 4], [0, 0], "out of range"),
    ([0, 1], [0, 10], "out of range"), ([0.0], [1.0], "integer"), ([0, 1], [0], "equal length")])
def test_from_topology_refuses_a_broken_topology(rows, cols, match):
    with pytest.raises(TopologyError, match=match):
        SparseLinear.from_topology(10, 4, torch.tensor(rows), torch.tensor(cols))


# ---------------------------------------------------------------------- bad input: one line, layer and fix
BAD_API = [
    (lambda: redr.build_mlp([32, 16, 10], 0.01),
     r"^--density 0.01 leaves the neurons of layer 0 \(32 -> 16\) with zero inputs \(round\(0.01 x 32\) = 0\); "
     r"use --density >= 0.0625 \(one input per neuron in every sparse layer\)$"),
    (lambda: redr.build_mlp([32, 16, 10], distribution="erk", density=0.001),
     r"^--distribution erk --density 0.001 leaves the neurons of layer 0 \(32 -> 16\) with zero inputs .*use --density >= "),
    (lambda: redr.build_mlp([32, 16, 10], fan_in=20),
     r"^--fan-in 20 is more than the 16 inputs of layer 2 \(16 -> 10\); use --fan-in <= 16 "),
    (lambda: redr.build_mlp([32, 16, 10], fan_in=0), r"^--fan-in must be a whole number >= 1, got 0$"),
    (lambda: redr.build_mlp([32, 16, 10], 1.5), r"^--density must be in \(0, 1\], got 1.5$"),
    (lambda: redr.build_mlp([32, 16, 10], distribution="bogus", density=0.1),
     r"^unknown distribution 'bogus'; choose one of uniform, erk"),
    (lambda: redr.build_mlp([32, 16, 10], distribution="erk"), r"^--distribution erk needs a --density$"),
    (lambda: redr.build_mlp([32, 16, 10], 0.1, fan_in=3), r"^give --density or --fan-in, not both"),
    (lambda: redr.build_mlp([32, 16, 10], distribution="erk", fan_in=3), r"does not combine with --distribution erk"),
    (lambda: redr.build_mlp([32, 16, 10], distribution={"0": 0.5, "9": 3}),
     r"^the per-layer distribution names \['9'\], which are not sparse layers of the model; its sparse layers are \['0', '2'\]$"),
    (lambda: redr.build_mlp([32, 16, 10], distribution={"0": 0.5}), r"gives no density or fan-in for layer\(s\) \['2'\]"),
    (lambda: redr.build_mlp([32, 16, 10], distribution={"0": 0.5, "2": 0.01}),
     r"^density 0.01 leaves the neurons of layer 2 \(16 -> 10\) with zero inputs \(round\(0.01 x 16\) = 0\); "
     r"give layer 2 a density >= 0.0625 or a fan-in >= 1$"),
    (lambda: redr.build_mlp([32, 16, 10], distribution={"0": 0.5, "2": 17}),
     r"^fan-in 17 is more than the 16 inputs of layer 2 \(16 -> 10\); give layer 2 a fan-in <= 16$"),
    (lambda: redr.build_mlp([32, 16, 10], distribution={"0": True, "2": 3}), r"^layer 0: give a density"),
    (lambda: redr.build_mlp([32, 16, 10], distribution={"0": 1.5, "2": 3}), r"^the density of layer 0 must be in \(0, 1\]"),
    (lambda: redr.sparsify(torch.nn.Sequential(torch.nn.Linear(4, 4))), r"^sparsify needs a density, a fan_in or a distribution"),
    (lambda: redr.sparsify(torch.nn.Sequential(torch.nn.Linear(4, 4)), fan_in=5),
     r"^--fan-in 5 is more than the 4 inputs of layer 0 \(4 -> 4\)"),
    (lambda: PerLayer({0: 0.5}), r"layer names are strings"),
    (lambda: FanIn(2.5), r"^--fan-in must be a whole number >= 1, got 2.5$"),
    (lambda: RunConfig.from_options(dataset="synthetic", fan_in=0), r"^--fan-in must be a whole number >= 1, got 0$"),
    (lambda: RunConfig.from_options(dataset="synthetic", fan_in=40), r"^--fan-in 40 is more than the 32 inputs of layer 0"),
    (lambda: RunConfig.from_options(dataset="synthetic", distribution="nope"), r"^unknown distribution 'nope'"),
    (lambda: RunConfig.from_options(dataset="synthetic", distribution="erk", fan_in=3), r"does not combine"),
    (lambda: RunConfig.from_options(dataset="synthetic", density=0.2, fan_in=3), r"^give --density or --fan-in, not both"),
    (lambda: RunConfig.from_options(dataset="synthetic", hidden=[16, 16], fan_in=16, epochs=4),
     r"^--fan-in 16 leaves layer 2 \(16 -> 16\) 0 inactive positions, too few to grow .*use a lower --fan-in, "),
]


@pytest.mark.parametrize("build,message", BAD_API, ids=[f"api-{i}" for i in range(len(BAD_API))])
def test_bad_input_is_one_line_naming_the_layer_and_the_fix(build, message):
    with pytest.raises(UsageError, match=message) as err:
        build()
    assert "\n" not in str(err.value) and isinstance(err.value, ValueError)


def test_the_zero_input_fix_is_the_smallest_erk_density_that_works():
    layers = [LayerShape("0", 16, 32), LayerShape("2", 16, 16), LayerShape("4", 10, 16)]
    with pytest.raises(UsageError, match=r"use --density >= 0.0571121 ") as err:
        ERK(0.02).fan_ins(layers)
    assert "layer 2 (16 -> 16)" in str(err.value)  # the 16 x 16 layer is ERK's sparsest per neuron
    # eps = 1/2 gives layer 2 exactly one input per neuron: (0.5*48 + 0.5*32 + 0.5*26) / 928 = 53/928
    assert ERK(53 / 928).fan_ins(layers) == [2, 1, 1]


# ---------------------------------------------------------------------- redr train
def run(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["train", *map(str, args)])
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("option,recorded,start", [
    (["--distribution", "erk", "--density", "0.3"], {"distribution": "erk", "fan_in": None}, "sparse erk d=0.3, layer densities "),
    (["--fan-in", "4"], {"distribution": "uniform", "fan_in": 4}, "sparse fan-in 4, layer densities 0.125/0.25/0.25 "),
])
def test_train_records_and_prints_the_distribution(tmp_path, option, recorded, start):
    code, out, err = run(*SYNTHETIC, *option, "--out", tmp_path / "run")
    assert code == 0, err
    assert start in out.splitlines()[0]
    config = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert {k: config[k] for k in recorded} == recorded
    model, _ = redr.load_checkpoint(tmp_path / "run")
    if recorded["fan_in"]:
        want = [4, 4, 4]
    else:
        want = [round(d * n) for d, n in zip(erk_by_bisection([(16, 32, ()), (16, 16, ()), (10, 16, ())], 0.3), (32, 16, 16))]
    assert [layer.nnz for _, layer in redr.sparse_layers(model)] == [w * out_f for w, out_f in zip(want, (16, 16, 10))]


@pytest.mark.parametrize("option", [
    ["--distribution", "nope"], ["--fan-in", "0"], ["--fan-in", "40"], ["--fan-in", "3", "--density", "0.2"],
    ["--fan-in", "3", "--distribution", "erk"], ["--distribution", "erk", "--density", "0.001"],
    ["--fan-in", "two"]])
def test_bad_distribution_options_exit_2_and_write_nothing(tmp_path, option):
    code, out, err = run(*SYNTHETIC, *option, "--out", tmp_path / "new")
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert not (tmp_path / "new").exists()


def test_a_run_saved_before_the_distribution_options_existed_resumes_as_uniform():
    from redr.training.resume import config_differences

    config = RunConfig.from_options(dataset="synthetic")
    saved = {k: v for k, v in config.to_dict().items() if k not in ("distribution", "fan_in")}
    assert config_differences(saved, config.to_dict()) == []
    assert config_differences(saved, {**config.to_dict(), "distribution": "erk"}) == [
        "distribution: saved 'uniform', requested 'erk'"]


def test_a_run_saved_before_this_release_resumes_with_the_init_and_layout_it_was_trained_with():
    """A config.json written before ``init``, ``arch``, ``validation_rows`` and the distribution options existed
    is read as the code then behaved (paper init, an MLP, no held-out rows, uniform): resuming it is allowed,
    asking for another init is a named difference."""
    from redr.training.resume import config_differences

    config = RunConfig.from_options(dataset="synthetic")
    new = ("distribution", "fan_in", "init", "arch", "validation_rows")
    saved = {k: v for k, v in config.to_dict().items() if k not in new}
    assert config.init == "paper" and config_differences(saved, config.to_dict()) == []
    assert config_differences(saved, {**config.to_dict(), "init": "kaiming"}) == ["init: saved 'paper', requested 'kaiming'"]
