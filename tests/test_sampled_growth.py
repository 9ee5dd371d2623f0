"""Sampled gradient growth (issue 15, item 2): candidates scored by SDDMM instead of the dense gradient.

References are brute force over dense float64 gradients (``naive_grads`` of the gradient-algorithm tests);
the candidate draw is reproduced with a cloned generator and only the scoring and choice are checked."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from test_gradient_algorithms import CE, ctx_for, data, keys_of, loss_expected, mlp, naive_grads, ranked, short_run
from test_gradient_algorithms import _one_thread, inactive_scores_naive, sparse_layers  # noqa: F401 (a fixture)

from redr.redistribution import make_algorithm, magnitude_removal
from redr.redistribution.algorithms import sampled_growth
from redr.redistribution.selection import removal_count
from redr.redistribution.selection.candidates import global_candidate_counts, inactive_keys_in_rows

ALL = math.inf  # candidates = every inactive position


def plan(name, model, x, y, alpha=0.5, seed=0, **options):
    ctx = ctx_for(model, alpha, x, y)
    ctx.generator.manual_seed(seed)
    return make_algorithm(name, **options).plan(ctx)


def grown(p, model):
    return [keys_of(lp.grow, layer.in_features) for lp, layer in zip(p.layers, sparse_layers(model))]


def both_paths(name, model, x, y):
    """The sampled plan with every inactive position a candidate, checked equal to the exact plan."""
    sampled = plan(name, model, x, y, growth="sampled", candidates=ALL)
    exact = plan(name, model, x, y, growth="exact")
    assert grown(sampled, model) == grown(exact, model)
    assert sampled.info["growth"] == "sampled" and exact.info["growth"] == "exact"
    assert sampled.info["gradient"]["tiles"] == 0, "the sampled path computes no dense-gradient tile"
    return sampled


def case(name, sizes, density, seed, zero_cols):
    """A tiny MLP, its dense float64 gradients and its checked sampled plan (:func:`both_paths`)."""
    model = mlp(sizes, density, seed=seed)
    x, y = data(24, sizes[0], sizes[-1], seed=seed, zero_cols=range(zero_cols))  # zero inputs: ties at 0
    grads, errs = naive_grads(model, x, y)
    return model, grads, errs, both_paths(name, model, x, y)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_sampled_with_all_candidates_is_the_exact_top_k(seed):
    model, want, _, sampled = case("gradient", [14, 12, 10, 5], 0.4, seed, 6)
    for layer, keys, grad in zip(sparse_layers(model), grown(sampled, model), want):
        assert keys == ranked(inactive_scores_naive(layer, grad), removal_count(layer.nnz, 0.5))


@pytest.mark.parametrize("seed", [0, 3])
def test_global_sampled_with_all_candidates_is_the_exact_top_k(seed):
    model, want, _, sampled = case("gradient-global", [14, 12, 10, 5], 0.4, seed, 6)
    layers = sparse_layers(model)
    total = sum(lp.remove.numel() for lp in sampled.layers)
    scores = torch.cat([inactive_scores_naive(layer, g) for layer, g in zip(layers, want)])
    best = ranked(scores, total)  # ties: lower layer, then lower position
    offsets = [0]
    for layer in layers:
        offsets.append(offsets[-1] + layer.in_features * layer.out_features)
    for i, (layer, keys) in enumerate(zip(layers, grown(sampled, model))):
        assert keys == [b - offsets[i] for b in best if offsets[i] <= b < offsets[i + 1]]


@pytest.mark.parametrize("seed", [8, 9])
def test_loss_sampled_with_all_candidates_is_the_exact_choice(seed):
    model, grads, errs, sampled = case("loss", [16, 20, 10, 5], 0.3, seed, 3)
    for (keys, neurons), layer, lp in zip(loss_expected(model, 0.5, 0.3, grads, errs), sparse_layers(model), sampled.layers):
        assert keys_of(lp.grow, layer.in_features) == keys
        assert torch.equal(lp.remove, magnitude_removal(layer, 0.5))


def test_gradient_sampled_grows_the_best_of_its_candidates_and_never_a_tile():
    model = mlp([40, 60, 6], 0.1, seed=3)
    x, y = data(32, 40, 6, seed=3)
    want, _ = naive_grads(model, x, y)
    ctx = ctx_for(model, 0.3, x, y)
    ctx.generator.manual_seed(5)
    draw = ctx.generator.get_state()
    p = make_algorithm("gradient", growth="sampled", candidates=2, tile_rows=4).plan(ctx)
    replay = torch.Generator()
    replay.set_state(draw)
    stats = p.info["gradient"]
    assert stats["tiles"] == 0 and stats["max_work_elements"] <= 4 * 60  # chunks no larger than a tile
    # candidates are drawn as the backward reaches the layers: the last layer first
    for i in reversed(range(len(want))):
        layer, k = sparse_layers(model)[i], removal_count(sparse_layers(model)[i].nnz, 0.3)
        cand = sampled_growth.layer_candidates(_View(layer), k, 2.0, replay)
        assert cand.numel() == 2 * k and not torch.isin(cand, layer.layout.keys()).any()
        scores = want[i].abs().flatten()[cand]
        expected = sorted(cand[torch.tensor(ranked(scores, k), dtype=torch.long)].tolist())
        assert keys_of(p.layers[i].grow, layer.in_features) == expected
    assert stats["sampled_entries"] == sum(2 * removal_count(layer.nnz, 0.3) for layer in sparse_layers(model))


class _View:
    """The parts of a LayerGradient that the candidate draw reads."""

    def __init__(self, layer):
        self.layer, self.in_features, self.out_features = layer, layer.in_features, layer.out_features

    def active_keys(self):
        return self.layer.layout.keys()


@pytest.mark.parametrize("name", ["gradient", "gradient-global", "loss"])
def test_sampled_seed_determinism_and_rank_agreement(name):
    model = mlp([30, 40, 6], 0.2, seed=1)
    x, y = data(16, 30, 6, seed=1)
    a = plan(name, model, x, y, seed=7, growth="sampled", candidates=1.5)
    b = plan(name, model, x, y, seed=7, growth="sampled", candidates=1.5)
    c = plan(name, model, x, y, seed=8, growth="sampled", candidates=1.5)
    assert grown(a, model) == grown(b, model)
    assert grown(a, model) != grown(c, model), "the candidates come from the context's generator"
    ctx = ctx_for(model, 0.5, x, y, all_reduce=lambda t: t * 3)  # three identical ranks
    ctx.generator.manual_seed(7)
    three = make_algorithm(name, growth="sampled", candidates=1.5).plan(ctx)
    assert grown(three, model) == grown(a, model)


@pytest.mark.parametrize("name", ["gradient", "gradient-global", "loss"])
def test_sampled_short_run_keeps_invariants_and_is_reproducible(name):
    a = short_run(name, seed=2, growth="sampled", candidates=3)
    b = short_run(name, seed=2, growth="sampled", candidates=3)
    assert all(torch.equal(p.indices, q.indices) for p, q in zip(a.layers, b.layers))
    assert all(h.info["growth"] == "sampled" for h in a.history if h.info.get("gradient"))


def test_auto_takes_the_exact_path_for_small_layers_only(monkeypatch):
    model = mlp([14, 12, 5], 0.4)
    x, y = data(16, 14, 5)
    for name in ("gradient", "gradient-global", "loss"):
        assert plan(name, model, x, y).info["growth"] == "exact"
    monkeypatch.setattr(sampled_growth, "EXACT_MAX_POSITIONS", 14 * 12 - 1)
    for name in ("gradient", "gradient-global", "loss"):
        assert plan(name, model, x, y).info["growth"] == "sampled"
        assert plan(name, model, x, y, growth="exact").info["growth"] == "exact"


def test_growth_options_are_validated():
    for name in ("gradient", "gradient-global", "loss"):
        for bad in ({"candidates": 0.5}, {"candidates": float("nan")}, {"growth": "dense"}, {"candidates": "8"}):
            with pytest.raises(ValueError):
                make_algorithm(name, **bad)


def test_cli_refuses_fewer_candidates_than_weights(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "redr", "train", "--dataset", "fashion-mnist", "--algorithm", "gradient",
                        "--candidates", "0.5", "--out", str(out), "--no-download"], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "candidates must be a number >= 1" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_row_candidates_are_distinct_inactive_and_exactly_the_quota():
    g = torch.Generator().manual_seed(0)
    in_f = 50
    active = torch.sort(torch.randperm(20 * in_f, generator=g)[:300]).values
    active = torch.cat([active, torch.arange(7 * in_f, 8 * in_f - 2)])  # row 7 nearly full: 2 free inputs
    active = torch.unique(active)
    rows = torch.tensor([1, 3, 7, 12, 19])
    free = torch.tensor([in_f - int(((active >= r * in_f) & (active < (r + 1) * in_f)).sum()) for r in rows.tolist()])
    quota = torch.minimum(free, torch.tensor([5, 40, 2, 1, 100]))
    keys = inactive_keys_in_rows(active, rows, quota, in_f, torch.Generator().manual_seed(1))
    assert bool((keys[1:] > keys[:-1]).all()) and not torch.isin(keys, active).any()
    assert [int(((keys // in_f) == r).sum()) for r in rows.tolist()] == quota.tolist()
    again = inactive_keys_in_rows(active, rows, quota, in_f, torch.Generator().manual_seed(1))
    assert torch.equal(keys, again)


def test_row_candidates_are_uniform():
    counts = torch.zeros(40)
    g = torch.Generator().manual_seed(3)
    active = torch.tensor([0, 5, 9])
    for _ in range(400):
        keys = inactive_keys_in_rows(active, torch.tensor([0]), torch.tensor([5]), 40, g)
        counts[keys] += 1
    assert counts[active].sum() == 0
    free = counts[counts > 0]
    assert free.numel() == 37 and float(free.min()) > 20 and float(free.max()) < 90  # expected 54 each


def test_global_candidate_counts_follow_free_positions():
    assert global_candidate_counts(10, 2.0, [100, 300, 0]) == [5, 15, 0]
    assert global_candidate_counts(10, math.inf, [100, 300, 0]) == [100, 300, 0]
    assert global_candidate_counts(10, 100.0, [3, 1000]) == [3, 998]
    assert global_candidate_counts(0, 2.0, [3, 4]) == [0, 0]


def test_float32_candidates_use_the_sddmm_kernel_and_match_the_dense_gradient():
    from redr.redistribution.signals import stream_layer_gradients

    model = mlp([30, 40, 6], 0.2, seed=4, dtype=torch.float32)
    x, y = data(16, 30, 6, seed=4, dtype=torch.float32)
    want, _ = naive_grads(model, x, y)
    seen = {}

    def consume(lg):
        keys = torch.arange(0, lg.in_features * lg.out_features, 3)
        seen[lg.index] = (keys, lg.entries_at_keys(keys))

    stream_layer_gradients(ctx_for(model, 0.5, x, y), consume)
    for i, (keys, got) in seen.items():
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want[i].flatten()[keys], rtol=1e-4, atol=1e-6)
