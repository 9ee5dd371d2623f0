"""Redr-Gradient, Redr-Gradient-Global, Redr-Loss and the streamed dense gradient, against brute force.

The reference for every choice is a dense float64 copy of the net (``nn.Linear``-style matmuls on the
dense weight matrices), its full ``dL/dW`` from ``.backward()``, and plain sorting.
"""
import math

import pytest
import torch
from torch import nn

import redr
from redr.redistribution import RedistributionContext, Redistributor, make_algorithm
from redr.redistribution import algorithm_options, magnitude_removal
from redr.redistribution.algorithms.gradient import RedrGradient, RedrGradientGlobal
from redr.redistribution.algorithms.loss import RedrLoss
from redr.redistribution.selection import StreamingTopK, neuron_shares, removal_count, selected_count, water_fill
from redr.redistribution.selection import streaming_topk as dense_grad
from redr.redistribution.signals import stream_layer_gradients
from redr.sparse import SparseLinear

CE = nn.functional.cross_entropy


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny nets gain nothing from intra-op threads, and on a busy machine waiting for them dominates."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------- fixtures
def mlp(sizes, density, seed=0, dtype=torch.float64, backend="auto"):
    g = torch.Generator().manual_seed(seed)
    mods = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        mods.append(SparseLinear(a, b, density, generator=g, dtype=dtype, backend=backend))
        if i < len(sizes) - 2:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def sparse_layers(model):
    return [m for m in model.modules() if isinstance(m, SparseLinear)]


def data(n, features, classes, seed=0, dtype=torch.float64, zero_cols=()):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g).to(dtype)
    x[:, list(zero_cols)] = 0  # inputs that are always 0: whole gradient columns exactly 0 (ties)
    return x, torch.randint(0, classes, (n,), generator=g)


def naive_grads(model, x, y):
    """Dense float64 dL/dW of every sparse layer and dL/d(pre-activation) of every layer, for an MLP."""
    layers = sparse_layers(model)
    weights = [layer.to_dense().double().clone().requires_grad_(True) for layer in layers]
    pre = []
    h = x.double()
    for i, (layer, w) in enumerate(zip(layers, weights)):
        z = h @ w.t() + (layer.bias.detach().double() if layer.bias is not None else 0)
        z.retain_grad()
        pre.append(z)
        h = torch.relu(z) if i < len(layers) - 1 else z
    CE(h, y).backward()
    return [w.grad for w in weights], [z.grad for z in pre]


def ctx_for(model, alpha, x, y, all_reduce=None):
    extra = {} if all_reduce is None else {"all_reduce": all_reduce}
    return RedistributionContext(model, sparse_layers(model), alpha, torch.Generator().manual_seed(0), CE, [(x, y)], **extra)


def keys_of(grow, in_features):
    return sorted((grow[0] * in_features + grow[1]).tolist())


def ranked(scores, k):
    """Indices of the k largest scores, ties to the lower index (plain stable sort)."""
    order = torch.argsort(-scores, stable=True)
    return sorted(order[:k].tolist())


def inactive_scores_naive(layer, grad):
    s = grad.abs().flatten().clone()
    s[layer.layout.keys()] = -math.inf
    return s


# ------------------------------------------------------------------------------ the streamed gradient
@pytest.mark.parametrize("tile_rows", [1, 3, 100])
def test_streamed_dense_gradient_equals_naive_and_tiles_are_bounded(tile_rows):
    model = mlp([12, 10, 9, 4], 0.3)
    x, y = data(16, 12, 4)
    want, _ = naive_grads(model, x, y)
    seen = {}

    def consume(lg):
        full = torch.cat([t for _, t in lg.tiles()])
        seen[lg.index] = full
        assert lg.x.shape == (16, lg.in_features) and lg.gT.shape == (lg.out_features, 16)

    stats = stream_layer_gradients(ctx_for(model, 0.3, x, y), consume, tile_rows=tile_rows)
    assert list(seen) == [2, 1, 0], "layers are handed over as the backward reaches them"
    for i, w in enumerate(want):
        torch.testing.assert_close(seen[i], w, rtol=1e-10, atol=1e-12)
    assert stats.max_tile_rows <= tile_rows
    assert stats.max_work_elements <= tile_rows * 12
    assert stats.tiles == sum(math.ceil(layer.out_features / tile_rows) for layer in sparse_layers(model))


def test_gradient_pass_leaves_grads_buffers_rng_and_requires_grad_alone():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(SparseLinear(10, 8, 0.4, generator=g, dtype=torch.float64), nn.BatchNorm1d(8).double(),
                          nn.ReLU(), nn.Dropout(0.3), SparseLinear(8, 3, 0.5, generator=g, dtype=torch.float64))
    model.train()
    x, y = data(20, 10, 3)
    params = list(model.parameters())
    sentinel = {id(p): torch.full_like(p, 7.0) for p in params[::2]}
    for p in params:
        p.grad = sentinel[id(p)].clone() if id(p) in sentinel else None
    bn = model[1]
    bn_before = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    rng_before = torch.get_rng_state()
    for name in ("gradient", "gradient-global", "loss"):
        plan = make_algorithm(name).plan(ctx_for(model, 0.4, x, y))
        assert sum(lp.grow.shape[1] for lp in plan.layers) > 0
    for p in params:
        if id(p) in sentinel:
            assert torch.equal(p.grad, sentinel[id(p)]), "a parameter's .grad was touched"
        else:
            assert p.grad is None, "a .grad appeared"
        assert p.requires_grad
    assert torch.equal(bn.running_mean, bn_before[0]) and torch.equal(bn.running_var, bn_before[1])
    assert torch.equal(bn.num_batches_tracked, bn_before[2])
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_unreached_layer_gets_zero_gradient_and_shared_layer_gets_the_sum():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(1)
            self.a = SparseLinear(6, 6, 0.5, generator=g, dtype=torch.float64)
            self.unused = SparseLinear(6, 5, 0.5, generator=g, dtype=torch.float64)
            self.out = SparseLinear(6, 3, 0.5, generator=g, dtype=torch.float64)

        def forward(self, x):
            return self.out(torch.relu(self.a(torch.relu(self.a(x)))))  # ``a`` applied twice

    net = Net()
    x, y = data(8, 6, 3)
    grads = {}
    stream_layer_gradients(ctx_for(net, 0.3, x, y), lambda lg: grads.setdefault(lg.index, lg.tile(slice(None))),
                           tile_rows=100)
    wa = net.a.to_dense().clone().requires_grad_(True)
    wo = net.out.to_dense().clone().requires_grad_(True)
    h = torch.relu(x @ wa.t() + net.a.bias.detach())
    h = torch.relu(h @ wa.t() + net.a.bias.detach())
    CE(h @ wo.t() + net.out.bias.detach(), y).backward()
    torch.testing.assert_close(grads[0], wa.grad)
    torch.testing.assert_close(grads[2], wo.grad)
    assert torch.equal(grads[1], torch.zeros(5, 6, dtype=torch.float64))


# ------------------------------------------------------------------------------------ Redr-Gradient
@pytest.mark.parametrize("seed,tile_rows", [(0, 1), (1, 4), (2, 64)])
def test_gradient_grows_exactly_the_top_inactive_positions(seed, tile_rows):
    model = mlp([14, 12, 10, 5], 0.4, seed=seed)
    x, y = data(24, 14, 5, seed=seed, zero_cols=range(10))  # 10 zero inputs: ties at |grad| = 0
    alpha = 0.5
    want, _ = naive_grads(model, x, y)
    plan = RedrGradient(tile_rows=tile_rows).plan(ctx_for(model, alpha, x, y))
    ties_mattered = False
    for layer, lp, grad in zip(sparse_layers(model), plan.layers, want):
        assert torch.equal(lp.remove, magnitude_removal(layer, alpha))
        k = removal_count(layer.nnz, alpha)
        scores = inactive_scores_naive(layer, grad)
        expected = ranked(scores, k)
        assert keys_of(lp.grow, layer.in_features) == expected
        ties_mattered |= bool((scores[expected] == 0).any())
        # removed positions never regrow: every grown key was inactive before the step
        assert not torch.isin(torch.tensor(expected), layer.layout.keys()).any()
    assert ties_mattered, "the case should exercise tie-breaking at |grad| = 0"


def test_gradient_sampled_threshold_and_resweep_are_exact(monkeypatch):
    model = mlp([40, 60, 6], 0.1, seed=3)
    x, y = data(32, 40, 6, seed=3)
    want, _ = naive_grads(model, x, y)
    expected = [ranked(inactive_scores_naive(layer, g), removal_count(layer.nnz, 0.3))
                for layer, g in zip(sparse_layers(model), want)]
    monkeypatch.setattr(dense_grad, "SAMPLE_SIZE", 256)
    monkeypatch.setattr(dense_grad, "MIN_FREE_PER_SAMPLE", 1)
    plan = RedrGradient(tile_rows=8).plan(ctx_for(model, 0.3, x, y))
    assert plan.info["gradient"]["sampled_entries"] > 0
    for layer, lp, e in zip(sparse_layers(model), plan.layers, expected):
        assert keys_of(lp.grow, layer.in_features) == e
    # a threshold that is far too high forces the second sweep; the result is still exact
    monkeypatch.setattr(dense_grad, "sampled_threshold", lambda lg, sel, keys, sample_size=None: 1e30)
    plan = RedrGradient(tile_rows=8).plan(ctx_for(model, 0.3, x, y))
    assert plan.info["gradient"]["resweeps"] == 2
    for layer, lp, e in zip(sparse_layers(model), plan.layers, expected):
        assert keys_of(lp.grow, layer.in_features) == e


@pytest.mark.parametrize("sampled", [False, True])
def test_dead_rows_are_skipped_and_results_stay_exact(monkeypatch, sampled):
    model = mlp([30, 40, 24, 5], 0.2, seed=12)
    first = sparse_layers(model)[0]
    first.bias.data[28:] = -100.0  # hidden units 28..39 never fire: their dL/dW rows are exactly 0
    x, y = data(32, 30, 5, seed=12)
    want, _ = naive_grads(model, x, y)
    assert bool((want[0][28:] == 0).all())
    if sampled:
        monkeypatch.setattr(dense_grad, "SAMPLE_SIZE", 128)
        monkeypatch.setattr(dense_grad, "MIN_FREE_PER_SAMPLE", 1)
    plan = RedrGradient(tile_rows=4).plan(ctx_for(model, 0.3, x, y))
    for layer, lp, grad in zip(sparse_layers(model), plan.layers, want):
        assert keys_of(lp.grow, layer.in_features) == ranked(inactive_scores_naive(layer, grad), removal_count(layer.nnz, 0.3))
    assert plan.info["gradient"]["dead_rows"] >= 12
    assert plan.info["gradient"]["skipped_tiles"] == (3 if sampled else 0)  # only a threshold > 0 rules zeros out
    glob = RedrGradientGlobal(tile_rows=4, min_layer_fraction=0.0, min_weights_per_layer=0).plan(ctx_for(model, 0.3, x, y))
    expected, _ = global_expected(model, want, 0.3)
    assert global_grown_keys(model, glob) == expected
    assert glob.info["gradient"]["skipped_tiles"] == 3  # by layer 0 the global bound is above 0


def test_gradient_float32_numba_backend_picks_top_scores():
    model = mlp([64, 300, 10], 0.1, seed=4, dtype=torch.float32, backend="numba")
    x, y = data(64, 64, 10, seed=4, dtype=torch.float32)
    want, _ = naive_grads(model, x, y)
    plan = RedrGradient(tile_rows=37).plan(ctx_for(model, 0.5, x, y))
    for layer, lp, grad in zip(sparse_layers(model), plan.layers, want):
        scores = inactive_scores_naive(layer, grad)
        chosen = torch.tensor(keys_of(lp.grow, layer.in_features))
        assert chosen.numel() == removal_count(layer.nnz, 0.5)
        others = torch.ones_like(scores, dtype=torch.bool)
        others[chosen] = False
        others[layer.layout.keys()] = False
        # float32 vs float64 may swap near-equal scores at the boundary, nothing more
        assert scores[chosen].min() >= scores[others].max() - 1e-5 * scores.max()


# ----------------------------------------------------------------------------- Redr-Gradient-Global
def test_streaming_top_k_matches_sort_with_ties_in_any_offer_order():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (600,), generator=g).double()  # heavy ties
    for k in (1, 7, 250, 599, 600):
        want = ranked(scores, k)
        for chunk in (1, 13, 170, 5000):
            starts = list(range(0, 600, chunk))
            order = torch.randperm(len(starts), generator=g).tolist()  # layers arrive in any order
            sel = StreamingTopK(k, id_limit=600, slack=3)
            for j in order:
                s0 = starts[j]
                sel.offer(scores[s0:s0 + chunk], s0)
            ids, vals = sel.result()
            assert sorted(ids.tolist()) == want, (k, chunk)
            assert torch.equal(vals, scores[ids])


def test_kth_largest_is_exact_with_and_without_a_good_bracket():
    g = torch.Generator().manual_seed(1)
    for n, sample_size in ((300_000, 65536), (1000, 16), (1000, 4)):
        values = torch.randint(0, 50, (n,), generator=g).float()
        values[: n // 3] = torch.sort(values[: n // 3]).values  # structure that can bias a strided sample
        chunks = list(values.split(max(97, n // 10)))
        for k in (1, 5, n // 3, n - 1, n):
            want = torch.sort(values, descending=True).values[k - 1]
            assert dense_grad.kth_largest(chunks, n, k, sample_size) == want


def global_expected(model, grads, alpha, floors=None):
    layers = sparse_layers(model)
    removes = [removal_count(layer.nnz, alpha) for layer in layers]
    if floors is not None:
        removes = [min(r, max(0, layer.nnz - f)) for r, layer, f in zip(removes, layers, floors)]
    scores = torch.cat([inactive_scores_naive(layer, grad) for layer, grad in zip(layers, grads)])
    return ranked(scores, sum(removes)), removes


def global_grown_keys(model, plan):
    """Sorted grown positions of a plan, as ids into the concatenation of all layers' flattened weights."""
    got, offset = [], 0
    for layer, lp in zip(sparse_layers(model), plan.layers):
        got += [offset + k for k in keys_of(lp.grow, layer.in_features)]
        offset += layer.in_features * layer.out_features
    return sorted(got)


@pytest.mark.parametrize("tile_rows", [1, 3, 7, 1000])
def test_global_selection_equals_top_k_of_concatenated_gradients(tile_rows):
    model = mlp([16, 14, 12, 6], 0.35, seed=5)
    x, y = data(20, 16, 6, seed=5, zero_cols=range(4))
    want, _ = naive_grads(model, x, y)
    algo = RedrGradientGlobal(tile_rows=tile_rows, min_layer_fraction=0.0, min_weights_per_layer=0)
    plan = algo.plan(ctx_for(model, 0.5, x, y))
    expected, removes = global_expected(model, want, 0.5)
    assert [lp.remove.numel() for lp in plan.layers] == removes
    assert global_grown_keys(model, plan) == expected


def test_global_with_all_zero_gradients_breaks_ties_by_layer_then_position():
    model = mlp([8, 8, 8, 3], 0.3, seed=6)
    x = torch.zeros(4, 8, dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    for layer in sparse_layers(model):
        layer.bias.data.zero_()  # every activation 0: every gradient of a weight exactly 0
    want, _ = naive_grads(model, x, y)
    assert all(bool((g == 0).all()) for g in want)
    for tile_rows in (1, 5):
        plan = RedrGradientGlobal(tile_rows=tile_rows, min_layer_fraction=0.0, min_weights_per_layer=0).plan(
            ctx_for(model, 0.5, x, y))
        expected, _ = global_expected(model, want, 0.5)
        assert global_grown_keys(model, plan) == expected


def test_global_sampled_threshold_is_exact(monkeypatch):
    model = mlp([50, 60, 40, 5], 0.1, seed=7)
    x, y = data(32, 50, 5, seed=7, zero_cols=range(10))
    want, _ = naive_grads(model, x, y)
    expected, _ = global_expected(model, want, 0.4)
    monkeypatch.setattr(dense_grad, "SAMPLE_SIZE", 256)
    monkeypatch.setattr(dense_grad, "MIN_FREE_PER_SAMPLE", 1)
    plan = RedrGradientGlobal(tile_rows=9, min_layer_fraction=0.0, min_weights_per_layer=0).plan(ctx_for(model, 0.4, x, y))
    assert plan.info["gradient"]["sampled_entries"] > 0
    assert global_grown_keys(model, plan) == expected


def test_global_collapse_guard_keeps_a_starved_layer_at_its_floor():
    class Net(nn.Module):
        """``starved`` never influences the loss: zero gradient, so global growth never goes there."""

        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(2)
            self.a = SparseLinear(20, 16, 0.3, generator=g)
            self.starved = SparseLinear(16, 16, 0.3, generator=g)
            self.out = SparseLinear(16, 4, 0.5, generator=g)

        def forward(self, x):
            return self.out(torch.relu(self.a(x)))

    for guard in (True, False):
        net = Net()
        opts = {} if guard else {"min_layer_fraction": 0.0, "min_weights_per_layer": 0}
        algo = RedrGradientGlobal(**opts)
        x, y = data(32, 20, 4, dtype=torch.float32)
        layers = sparse_layers(net)
        total = sum(layer.nnz for layer in layers)
        history = []
        for _ in range(8):
            floors = algo.floors(layers)
            plan = algo.plan(ctx_for(net, 0.5, x, y))
            redr.redistribution.apply_plan(layers, plan)
            assert sum(layer.nnz for layer in layers) == total, "global growth keeps the total"
            history.append(layers[1].nnz)
            if guard:
                assert all(layer.nnz >= f for layer, f in zip(layers, floors))
        if guard:
            # floor of the starved layer: max(out_features, ceil(0.1 * its share at uniform density))
            fair = total * 256 / (320 + 256 + 64)
            assert history[-1] == max(16, math.ceil(0.1 * fair))
        else:
            assert history[-1] < 16, "without the guard the starved layer collapses"


def test_floors_rule():
    model = mlp([100, 50, 10], 0.1)
    layers = sparse_layers(model)
    algo = RedrGradientGlobal(min_layer_fraction=0.5)
    total = sum(layer.nnz for layer in layers)
    fair = [total * 5000 / 5500, total * 500 / 5500]
    assert algo.floors(layers) == [max(50, math.ceil(0.5 * fair[0])), max(10, math.ceil(0.5 * fair[1]))]
    assert RedrGradientGlobal(min_layer_fraction=0.0, min_weights_per_layer=3).floors(layers) == [3, 3]


# -------------------------------------------------------------------------------------------- Redr-Loss
def round_robin(total, capacity):
    """The reference for shares: one weight at a time to each neuron in rank order that can take one."""
    shares = [0] * len(capacity)
    while total > 0 and any(s < c for s, c in zip(shares, capacity)):
        for i, c in enumerate(capacity):
            if total and shares[i] < c:
                shares[i] += 1
                total -= 1
    return shares


def test_water_fill_equals_round_robin():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(1, 12, (1,), generator=g))
        cap = torch.randint(0, 9, (n,), generator=g)
        total = int(torch.randint(0, 60, (1,), generator=g))
        assert water_fill(total, cap).tolist() == round_robin(total, cap.tolist())
    assert water_fill(10, torch.tensor([1, 100, 100])).tolist() == [1, 5, 4]  # the first passes its share on
    # selection extended in rank order only when the selected neurons are full
    assert neuron_shares(7, torch.tensor([2, 1, 5, 5]), 2).tolist() == [2, 1, 4, 0]
    assert neuron_shares(3, torch.tensor([2, 1, 5, 5]), 2).tolist() == [2, 1, 0, 0]
    assert selected_count(10, 0.3) == 3 and selected_count(4096, 0.3) == 1229 and selected_count(2, 0.1) == 1


def loss_expected(model, alpha, fraction, grads, errs):
    out = []
    for layer, grad, err in zip(sparse_layers(model), grads, errs):
        total = removal_count(layer.nnz, alpha)
        e = err.abs().sum(0)
        order = torch.argsort(-e, stable=True).tolist()
        free = (layer.in_features - layer.layout.row_counts()).tolist()
        n = selected_count(layer.out_features, fraction)
        cap = [free[i] for i in order]
        while n < len(order) and sum(cap[:n]) < total:
            n += 1
        shares = round_robin(total, cap[:n])
        active = set(layer.layout.keys().tolist())
        keys = []
        for neuron, share in zip(order, shares):
            cols = [c for c in range(layer.in_features) if neuron * layer.in_features + c not in active]
            s = grad[neuron, cols].abs()
            best = torch.argsort(-s, stable=True)[:share].tolist()
            keys += [neuron * layer.in_features + cols[b] for b in best]
        out.append((sorted(keys), sorted(order[:n][i] for i in range(n) if shares[i] > 0)))
    return out


@pytest.mark.parametrize("tile_rows", [1, 2, 50])
def test_loss_picks_the_right_neurons_and_shares(tile_rows):
    model = mlp([16, 20, 10, 5], 0.3, seed=8)
    x, y = data(24, 16, 5, seed=8, zero_cols=range(3))
    grads, errs = naive_grads(model, x, y)
    plan = RedrLoss(tile_rows=tile_rows).plan(ctx_for(model, 0.5, x, y))
    for (keys, neurons), layer, lp in zip(loss_expected(model, 0.5, 0.3, grads, errs), sparse_layers(model), plan.layers):
        assert keys_of(lp.grow, layer.in_features) == keys
        assert sorted(set(lp.grow[0].tolist())) == neurons
        assert torch.equal(lp.remove, magnitude_removal(layer, 0.5))
    assert plan.info["growing_neurons"] == [6, 3, 2]


def test_loss_neuron_with_too_few_free_inputs_passes_its_share_on():
    model = mlp([10, 8, 4], 0.3, seed=9)
    x, y = data(16, 10, 4, seed=9)
    _, errs = naive_grads(model, x, y)
    layer = sparse_layers(model)[0]
    top = int(torch.argsort(-errs[0].abs().sum(0), stable=True)[0])
    # make the top-ranked neuron nearly full with zero-valued weights (the forward does not change)
    active = set(layer.layout.keys().tolist())
    fill = [c for c in range(10) if top * 10 + c not in active][:-1]
    layer.change_topology(torch.empty(0, dtype=torch.long), torch.tensor([[top] * len(fill), fill]))
    grads, errs = naive_grads(model, x, y)
    assert int(layer.in_features - layer.layout.row_counts()[top]) == 1
    plan = RedrLoss().plan(ctx_for(model, 0.5, x, y))
    (keys, neurons), _ = loss_expected(model, 0.5, 0.3, grads, errs)
    lp = plan.layers[0]
    assert keys_of(lp.grow, 10) == keys
    assert int((lp.grow[0] == top).sum()) == 1, "the top neuron takes its one free input"
    assert lp.grow.shape[1] == removal_count(layer.nnz, 0.5), "the rest of its share went to the others"


# ------------------------------------------------------------------------------------ all of them
def short_run(name, seed=0, epochs=5, **options):
    torch.manual_seed(seed)
    model = redr.build_mlp([30, 24, 16, 5], 0.25, generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    red = Redistributor(model, opt, name, total_epochs=epochs, seed=seed, loss_fn=CE, **options)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(96, 30, generator=g), torch.randint(0, 5, (96,), generator=g)
    for epoch in range(1, epochs + 1):
        for s in range(3):
            opt.zero_grad()
            CE(model(x[s * 32:(s + 1) * 32]), y[s * 32:(s + 1) * 32]).backward()
            opt.step()
        before = [layer.nnz for layer in red.layers]
        old_keys = [layer.layout.keys().clone() for layer in red.layers]
        report = red.step(epoch, batches=[(x[:32], y[:32]), (x[32:64], y[32:64])])
        if report is None:
            continue
        assert report.nnz == [layer.nnz for layer in red.layers]
        assert report.nnz == [b - r + g for b, r, g in zip(before, report.removed, report.grown)]
        assert sum(report.nnz) == sum(before), "the total number of weights is constant"
        if name != "gradient-global":
            assert report.nnz == before, "layer-local algorithms keep every layer's nnz"
            assert report.removed == [removal_count(b, report.alpha) for b in before]
        for layer, old in zip(red.layers, old_keys):
            new = layer.layout.keys()
            assert bool((new[1:] > new[:-1]).all())
            added = new[~torch.isin(new, old)]
            assert int((layer.values.detach()[torch.isin(new, added)] != 0).sum()) == 0
        if sum(report.removed):
            assert report.info["gradient"]["batches"] == 2 and report.info["gradient"]["samples"] == 64
        else:
            assert report.info["gradient"] is None, "nothing to move: no gradient pass"
    return red


@pytest.mark.parametrize("name", ["gradient", "gradient-global", "loss"])
def test_short_run_keeps_invariants_and_same_seed_same_topology(name):
    a = short_run(name, seed=4)
    assert len(a.history) == len(a.schedule.epochs()) == 3
    b = short_run(name, seed=4)
    assert all(torch.equal(p.indices, q.indices) for p, q in zip(a.layers, b.layers))
    c = short_run(name, seed=4, tile_rows=3)
    assert all(torch.equal(p.indices, q.indices) for p, q in zip(a.layers, c.layers)), "tile size changes nothing"


@pytest.mark.parametrize("name", ["gradient", "gradient-global", "loss"])
def test_all_reduce_is_applied_and_identical_ranks_agree(name):
    model = mlp([12, 10, 4], 0.3, seed=11)
    x, y = data(16, 12, 4, seed=11)
    calls = []

    def three_ranks(t):  # three ranks with the same data: every statistic summed is 3x
        calls.append(t.numel())
        return t * 3

    one = make_algorithm(name).plan(ctx_for(model, 0.4, x, y))
    three = make_algorithm(name).plan(ctx_for(model, 0.4, x, y, all_reduce=three_ranks))
    assert calls and three.info["gradient"]["all_reduce_calls"] == len(calls)
    for p, q in zip(one.layers, three.layers):
        assert torch.equal(p.remove, q.remove) and keys_of(p.grow, 1000) == keys_of(q.grow, 1000)


def test_options_registry_and_validation():
    assert RedrGradient.name == "gradient" and RedrGradientGlobal.name == "gradient-global" and RedrLoss.name == "loss"
    assert all(c.needs_batches for c in (RedrGradient, RedrGradientGlobal, RedrLoss))
    path = {"growth": "auto", "candidates": 8.0}
    assert algorithm_options("gradient") == {"tile_rows": 512, "num_batches": None, **path}
    assert algorithm_options("gradient-global") == {"tile_rows": 512, "num_batches": None, "min_layer_fraction": 0.1,
                                                    "min_weights_per_layer": None, **path}
    assert algorithm_options("loss") == {"neuron_fraction": 0.3, "tile_rows": 512, "num_batches": None, **path}
    for name in ("gradient", "gradient-global", "loss"):
        algo = make_algorithm(name, tile_rows=7, num_batches=2)
        assert algo.options()["tile_rows"] == 7 and algo.options()["num_batches"] == 2
        assert set(algo.options()) == set(algorithm_options(name))
    for bad in ({"tile_rows": 0}, {"num_batches": 0}, {"tile_rows": 2.5}):
        with pytest.raises(ValueError):
            RedrGradient(**bad)
    with pytest.raises(ValueError):
        RedrLoss(neuron_fraction=0.0)
    with pytest.raises(ValueError):
        RedrGradientGlobal(min_layer_fraction=1.5)
    model = mlp([6, 4], 0.5)
    with pytest.raises(ValueError, match="loss_fn"):
        RedrGradient().plan(RedistributionContext(model, sparse_layers(model), 0.5, torch.Generator(), None, [(None, None)]))


def test_num_batches_caps_the_batches_used():
    model = mlp([8, 6, 3], 0.5)
    x, y = data(12, 8, 3)
    batches = [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])]
    ctx = RedistributionContext(model, sparse_layers(model), 0.5, torch.Generator(), CE, batches)
    assert RedrGradient(num_batches=1).plan(ctx).info["gradient"]["samples"] == 4
    assert RedrGradient().plan(ctx).info["gradient"]["samples"] == 12


@pytest.mark.parametrize("name", ["random", "gradient", "gradient-global", "loss"])
def test_plans_are_narrow(name):
    """Plans hold int32 positions where they fit (a plan may be half a layer: its bytes set the peak memory)."""
    model = mlp([30, 40, 6], 0.3, dtype=torch.float32)
    x, y = data(16, 30, 6, dtype=torch.float32)
    plan = make_algorithm(name).plan(ctx_for(model, 0.5, x, y))
    assert any(lp.remove.numel() for lp in plan.layers)
    for lp in plan.layers:
        assert lp.remove.dtype == torch.int32 and lp.grow.dtype == torch.int32
