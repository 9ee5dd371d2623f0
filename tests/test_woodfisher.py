"""Block-wise empirical Fisher, Redr-Woodfisher and Redr-Woodtaylor (float64, small blocks)."""
import io
import math

import pytest
import torch

import redr
from redr.errors import UsageError
from redr.redistribution import RedistributionContext, algorithm_options, make_algorithm
from redr.redistribution.algorithms.woodfisher import RedrWoodfisher, RedrWoodtaylor
from redr.redistribution.selection import collapse_floors, global_smallest, proportional_shares
from redr.redistribution.signals import BlockFisher, BlockLayout, optimal_update, removal_statistics
from redr.redistribution.signals.fisher import damped_inverse
from redr.redistribution.signals.sherman_morrison import ShermanMorrisonInverse, sherman_morrison_block_inverse
from redr.sparse import SparseLinear

D = torch.float64


def explicit_block_fisher(layout, grads, dampening):
    """lambda I + (1/m) sum g g^T per block, straight from the definition (no code under test)."""
    m = len(grads)
    nb, B = layout.n_blocks, layout.block_size
    F = torch.zeros(nb, B, B, dtype=D)
    for g in grads:
        gb = torch.zeros(nb * B, dtype=D)
        pos = 0
        for v, n in zip(g, layout.nnz):
            gb[pos * B: pos * B + n] = v
            pos += -(-n // B)
        gb = gb.view(nb, B)
        F += gb.unsqueeze(-1) * gb.unsqueeze(-2) / m
    return F + dampening * torch.eye(B, dtype=D)


def random_grads(nnz, m, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [[scale * torch.randn(n, generator=g, dtype=D) for n in nnz] for _ in range(m)]


def filled_fisher(nnz, grads, B, dampening, buffer_steps=3, track_mean=True):
    fisher = BlockFisher(B, dampening, buffer_steps=buffer_steps, chunk_blocks=2, track_mean=track_mean)
    fisher.reset(nnz, dtype=D)
    for g in grads:
        fisher.add(g)
    return fisher


# ---------------------------------------------------------------- Fisher and its inverse
@pytest.mark.parametrize("m", [1, 3, 7, 20])  # fewer and more gradients than the block size
def test_sherman_morrison_and_fast_inverse_equal_explicit_inverse(m):
    nnz, B, lam = (10, 23, 4), 5, 0.1
    grads = random_grads(nnz, m, seed=m)
    layout = BlockLayout(B, nnz)
    F = explicit_block_fisher(layout, grads, lam)
    expected = torch.linalg.inv(F)

    stacked = torch.stack([layout.to_blocks(g, dtype=D) for g in grads])
    sm = sherman_morrison_block_inverse(stacked, lam)
    torch.testing.assert_close(sm, expected, rtol=1e-9, atol=1e-9)

    fisher = filled_fisher(nnz, grads, B, lam)  # buffer of 3: several full flushes plus a partial one
    torch.testing.assert_close(fisher.explicit_fisher(), F, rtol=1e-12, atol=1e-12)
    inv = fisher.inverse()
    torch.testing.assert_close(inv.dense(), expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(inv.diag(), torch.diagonal(expected, dim1=-2, dim2=-1), rtol=1e-9, atol=1e-9)
    v = torch.randn(layout.n_blocks, B, dtype=D)
    torch.testing.assert_close(inv.matvec(v), (expected @ v.unsqueeze(-1)).squeeze(-1), rtol=1e-9, atol=1e-9)
    mean = sum(layout.to_blocks(g, dtype=D) for g in grads) / m
    torch.testing.assert_close(inv.mean_grad, mean)
    assert inv.count == m and fisher.count == 0  # inverting consumes the statistics


def test_buffer_size_does_not_change_the_result():
    nnz, grads = (17, 9), random_grads((17, 9), 11, seed=4)
    results = [filled_fisher(nnz, grads, 4, 0.01, buffer_steps=r).inverse().packed for r in (1, 2, 5, 11, 50)]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=1e-10, atol=1e-10)


def test_no_gradient_gives_the_dampening_only():
    fisher = BlockFisher(4, 0.5, track_mean=True)
    fisher.reset([6], dtype=D)
    inv = fisher.inverse()
    torch.testing.assert_close(inv.dense(), torch.eye(4, dtype=D).expand(2, 4, 4) * 2.0)
    assert inv.count == 0 and bool((inv.mean_grad == 0).all())


def test_block_padding_at_layer_ends():
    layout = BlockLayout(4, (5, 3, 8))
    assert layout.blocks_per_layer == [2, 1, 2] and layout.block_offsets == [0, 2, 3] and layout.n_blocks == 5
    vecs = [torch.arange(1, n + 1, dtype=D) for n in layout.nnz]
    blocks = layout.to_blocks(vecs, dtype=D)
    assert blocks.tolist()[1] == [5, 0, 0, 0] and blocks.tolist()[2] == [1, 2, 3, 0]  # layers never share a block
    assert all(torch.equal(a, b) for a, b in zip(layout.from_blocks(blocks), vecs))
    assert layout.padding_mask().sum().item() == 16
    # padded slots: gradient 0, so F is lambda on their diagonal and couples them to nothing
    grads = random_grads(layout.nnz, 6, seed=1)
    lam = 0.3
    fisher = filled_fisher(layout.nnz, grads, 4, lam)
    F = fisher.explicit_fisher()
    pad = ~layout.padding_mask()
    for b, s in pad.nonzero().tolist():
        expected = torch.zeros(4, dtype=D)
        expected[s] = lam
        assert torch.equal(F[b, s], expected) and torch.equal(F[b, :, s], expected)
    inv = fisher.inverse().dense()
    for b, s in pad.nonzero().tolist():
        assert inv[b, s, s].item() == pytest.approx(1 / lam) and inv[b, s].abs().sum().item() == pytest.approx(1 / lam)


def test_damped_inverse_survives_a_rank_deficient_block():
    g = torch.randn(3, 6, dtype=D)
    S = (g.T @ g).unsqueeze(0)  # rank 3 of 6
    inv = damped_inverse(S, 1e-8)
    torch.testing.assert_close(inv[0] @ (S[0] + 1e-8 * torch.eye(6, dtype=D)), torch.eye(6, dtype=D), atol=1e-5, rtol=0)
    torch.testing.assert_close(S[0], g.T @ g)  # the input is not modified
    # a block Cholesky rejects falls back to a general inverse, the others keep theirs
    odd = torch.stack([torch.diag(torch.tensor([-2.0, 1.0], dtype=D)), torch.eye(2, dtype=D)])
    torch.testing.assert_close(damped_inverse(odd, 1.0), torch.stack([torch.diag(torch.tensor([-1.0, 0.5], dtype=D)),
                                                                      0.5 * torch.eye(2, dtype=D)]))


def test_all_reduce_sums_statistics_over_ranks():
    """Two ranks with different gradients: rank 0's inverse equals the Fisher of both ranks' gradients;
    with identical (DDP-averaged) gradients on both ranks nothing changes."""
    nnz, B, lam = (9, 7), 4, 0.05
    ga, gb = random_grads(nnz, 5, seed=10), random_grads(nnz, 3, seed=11)
    sent = []
    filled_fisher(nnz, gb, B, lam).inverse(all_reduce=lambda t: (sent.append(t.clone()), t)[1])
    calls = iter(sent)
    inv = filled_fisher(nnz, ga, B, lam).inverse(all_reduce=lambda t: t + next(calls))
    layout = BlockLayout(B, nnz)
    torch.testing.assert_close(inv.dense(), torch.linalg.inv(explicit_block_fisher(layout, ga + gb, lam)))
    torch.testing.assert_close(inv.mean_grad, sum(layout.to_blocks(g, dtype=D) for g in ga + gb) / 8)
    assert inv.count == 8
    same = filled_fisher(nnz, ga, B, lam).inverse(all_reduce=lambda t: t * 2)
    torch.testing.assert_close(same.dense(), torch.linalg.inv(explicit_block_fisher(layout, ga, lam)))


def test_fisher_state_dict_round_trip_resumes_exactly():
    nnz, B = (13, 6), 4
    grads = random_grads(nnz, 10, seed=2)
    a = filled_fisher(nnz, grads[:5], B, 0.01, buffer_steps=3)  # 3 folded, 2 waiting in the buffer
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = BlockFisher(B, 0.01, buffer_steps=3, track_mean=True)
    b.load_state_dict(torch.load(buf))
    for g in grads[5:]:
        a.add(g)
        b.add(g)
    ia, ib = a.inverse(), b.inverse()
    assert torch.equal(ia.packed, ib.packed) and torch.equal(ia.mean_grad, ib.mean_grad) and ia.count == ib.count == 10
    c = BlockFisher(B, 0.01, buffer_steps=1, track_mean=True)  # a smaller buffer folds the waiting rows at once
    buf.seek(0)
    c.load_state_dict(torch.load(buf))
    for g in grads[5:]:
        c.add(g)
    torch.testing.assert_close(c.inverse().packed, ia.packed)


# ---------------------------------------------------------------- the second-order model on a quadratic loss
def quadratic_setup(seed, B=5, nnz=(10,), m=8, lam=0.2, scale=1.0):
    grads = random_grads(nnz, m, seed=seed, scale=scale)
    fisher = filled_fisher(nnz, grads, B, lam)
    H = fisher.explicit_fisher()            # the Hessian of the quadratic loss *is* the damped Fisher
    inv = fisher.inverse()
    w = torch.randn(inv.layout.n_blocks, B, generator=torch.Generator().manual_seed(seed + 100), dtype=D)
    w = w * inv.layout.padding_mask()
    return inv, H, w


def quadratic_change(H, g, dw):
    """True change of L(w + dw) - L(w) for L with gradient g and Hessian H at w (block-diagonal)."""
    return (g * dw).sum() + 0.5 * (dw.unsqueeze(-2) @ H @ dw.unsqueeze(-1)).sum()


def one_removed(layout, block, slot):
    mask = torch.zeros(layout.n_blocks, layout.block_size, dtype=torch.bool)
    mask[block, slot] = True
    return mask


@pytest.mark.parametrize("seed", range(4))
def test_woodfisher_predicted_loss_change_is_exact_on_a_quadratic(seed):
    inv, H, w = quadratic_setup(seed)
    z, d, rho = removal_statistics(w, inv)
    g0 = torch.zeros_like(w)
    for b, s in inv.layout.padding_mask().nonzero().tolist():
        dw = optimal_update(inv, z, d, one_removed(inv.layout, b, s))
        assert (w[b, s] + dw[b, s]).abs().item() < 1e-12          # the removed weight lands on 0
        assert dw[torch.arange(inv.layout.n_blocks) != b].abs().max().item() == 0  # other blocks untouched
        assert quadratic_change(H, g0, dw).item() == pytest.approx(rho[b, s].item(), rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("seed", range(4))
def test_woodtaylor_predicted_loss_change_is_exact_on_a_quadratic(seed):
    inv, H, w = quadratic_setup(seed, scale=0.7)
    g = inv.mean_grad
    assert g.abs().max() > 0.05
    newton = inv.matvec(g)
    z, d, rho = removal_statistics(w, inv, newton)
    constant = -0.5 * (g * newton).sum().item()
    for b, s in inv.layout.padding_mask().nonzero().tolist():
        dw = optimal_update(inv, z, d, one_removed(inv.layout, b, s), newton)
        assert (w[b, s] + dw[b, s]).abs().item() < 1e-12
        assert quadratic_change(H, g, dw).item() == pytest.approx(rho[b, s].item() + constant, rel=1e-9, abs=1e-14)
        # and it is the constrained optimum: no feasible perturbation of dw (keeping w_q + dw_q = 0) does better
        for _ in range(3):
            e = torch.randn_like(dw) * inv.layout.padding_mask()
            e[b, s] = 0
            assert quadratic_change(H, g, dw + 1e-3 * e) >= quadratic_change(H, g, dw)


@pytest.mark.parametrize("seed", range(10))
def test_smallest_rho_never_costs_more_than_smallest_magnitude(seed):
    inv, H, w = quadratic_setup(seed, B=6, nnz=(12, 7), lam=0.05)
    z, d, rho = removal_statistics(w, inv)
    real = inv.layout.padding_mask()
    g0 = torch.zeros_like(w)
    q = torch.where(real, rho, torch.inf).flatten().argmin().item()
    p = torch.where(real, w.abs(), torch.inf).flatten().argmin().item()
    B = inv.layout.block_size
    by_rho = quadratic_change(H, g0, optimal_update(inv, z, d, one_removed(inv.layout, q // B, q % B)))
    by_mag = quadratic_change(H, g0, optimal_update(inv, z, d, one_removed(inv.layout, p // B, p % B)))
    plain = torch.zeros_like(w)
    plain.view(-1)[p] = -w.view(-1)[p]  # magnitude removal as Redr-Random does it: no update of the others
    assert by_rho <= by_mag + 1e-15 and by_rho <= quadratic_change(H, g0, plain) + 1e-15


def test_woodtaylor_update_reduces_to_woodfisher_when_gradient_is_zero():
    inv, H, w = quadratic_setup(3, nnz=(10, 8))
    newton = inv.matvec(torch.zeros_like(w))
    removed = torch.zeros_like(w, dtype=torch.bool)
    removed[0, 1] = removed[0, 3] = removed[2, 0] = True
    zf, df, rf = removal_statistics(w, inv)
    zt, dt, rt = removal_statistics(w, inv, newton)
    assert torch.equal(rf, rt)
    assert torch.equal(optimal_update(inv, zf, df, removed), optimal_update(inv, zt, dt, removed, newton))


# ---------------------------------------------------------------- selection
def test_global_smallest_respects_allowance_and_breaks_ties_by_layer_then_position():
    s = [torch.tensor([0.1, 5.0, 0.2, 0.1]), torch.tensor([0.1, 0.0, 9.0]), torch.tensor([3.0, 0.05])]
    # 0.0 and 0.05 first, then the 0.1s: layer 0 before layer 1, lower position first
    out, saturated = global_smallest(s, 4, [4, 3, 2])
    assert [o.tolist() for o in out] == [[0, 3], [1], [1]] and saturated == []
    assert [o.tolist() for o in global_smallest(s, 5, [4, 3, 2])[0]] == [[0, 3], [0, 1], [1]]
    # layer 0 may give only 1: it gives its smallest, the rest comes from the others by score
    out, saturated = global_smallest(s, 5, [1, 3, 2])
    assert [o.tolist() for o in out] == [[0], [0, 1], [0, 1]] and saturated == [0]
    assert [o.numel() for o in global_smallest(s, 99, [1, 1, 1])[0]] == [1, 1, 1]


# ---------------------------------------------------------------- the algorithms in training
def small_model(seed=0):
    return redr.build_mlp([40, 30, 20, 5], 0.2, generator=torch.Generator().manual_seed(seed)).double()


def train(algorithm, epochs=6, seed=0, steps=4, **options):
    torch.manual_seed(seed)
    model = small_model(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    red = redr.Redistributor(model, opt, algorithm, total_epochs=epochs, seed=seed, **options)
    x, y = torch.randn(64, 40, dtype=D), torch.randint(0, 5, (64,))
    records = []
    for epoch in range(1, epochs + 1):
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()  # no loss kept alive across a step()
            opt.step()
        before = [(layer.layout.keys().clone(), layer.nnz) for layer in red.layers]
        report = red.step(epoch)
        records.append((before, report, [layer.layout.keys().clone() for layer in red.layers]))
    return model, red, records


@pytest.mark.parametrize("algorithm", ["woodfisher", "woodtaylor"])
def test_invariants_hold_through_a_short_run_with_adam(algorithm):
    # Redistributor checks apply_plan's invariants after every step (nnz as planned, no duplicates,
    # grown positions inactive before, removed ones gone, new weights and Adam moments zero)
    model, red, records = train(algorithm, block_size=6)
    assert red.algorithm.needs_step_hook and len(red.history) == len(red.schedule.epochs()) == 4
    for before, report, after in records:
        if report is None:
            continue
        assert report.info["fisher_steps"] == 4  # exactly the steps since the last redistribution
        old_total = sum(n for _, n in before)
        assert sum(report.removed) == int(report.alpha * old_total)       # global fraction alpha
        assert sum(report.grown) == sum(report.removed) and sum(report.nnz) == old_total
        dense = [layer.in_features * layer.out_features for layer in red.layers]
        assert report.grown == proportional_shares(sum(report.removed), dense, [s - n for s, (_, n) in zip(dense, before)])
        assert report.info["floors"] == collapse_floors_of(red.layers, [n for _, n in before])
        for layer, (old_keys, old_nnz), new_keys, removed, grown, floor in zip(
                red.layers, before, after, report.removed, report.grown, report.info["floors"]):
            assert old_nnz - removed >= min(old_nnz, floor)
            assert (~torch.isin(new_keys, old_keys)).sum().item() == grown
    assert red.algorithm.fisher.count == 8  # epochs 5 and 6 have no redistribution: their steps accumulate
    assert all(torch.isfinite(p).all() for p in model.parameters())


def collapse_floors_of(layers, nnz):
    """The guard's formula written out: max(out_features, ceil(0.1 * uniform-density share)), capped by positions."""
    total, positions = sum(nnz), [l.in_features * l.out_features for l in layers]
    return [min(p, max(l.out_features, math.ceil(0.1 * total * p / sum(positions) - 1e-9))) for l, p in zip(layers, positions)]


def test_collapse_guard_protects_a_layer_of_cheap_weights():
    model = torch.nn.Sequential(SparseLinear(30, 30, 0.5), torch.nn.ReLU(), SparseLinear(30, 3, 1.0)).double()
    layers = [model[0], model[2]]
    assert collapse_floors(layers) == [50, 5] and collapse_floors(layers, 0.0, 50) == [50, 50]
    with torch.no_grad():
        model[2].values.mul_(1e-6)  # the output layer's weights are all tiny: global removal would take them all
    for algo, floor in ((RedrWoodfisher(block_size=4), 5), (RedrWoodfisher(block_size=4, min_weights_per_layer=60), 60)):
        plan = algo.plan(RedistributionContext(model, layers, 0.5, torch.Generator().manual_seed(0)))
        assert plan.layers[1].remove.numel() == 90 - floor and plan.layers[0].remove.numel() == 270 - (90 - floor)
        assert plan.info["guarded_layers"] == [1]
        assert plan.layers[1].grow.shape[1] == 0 and plan.layers[0].grow.shape[1] == 270  # the full layer has no room
    with pytest.raises(ValueError, match="min_layer_fraction"):
        RedrWoodfisher(min_layer_fraction=2.0)


def test_woodtaylor_equals_woodfisher_at_the_algorithm_level_when_gradients_cancel():
    plans = []
    for cls in (RedrWoodfisher, RedrWoodtaylor):
        model = small_model(1)
        layers = [m for m in model if isinstance(m, SparseLinear)]
        algo = cls(block_size=5, dampening=0.01)
        g = torch.Generator().manual_seed(7)
        for _ in range(4):
            grads = [torch.randn(layer.nnz, generator=g, dtype=D) for layer in layers]
            for sign in (1, -1):  # mean gradient exactly 0
                for layer, gr in zip(layers, grads):
                    layer.values.grad = sign * gr
                algo.after_step(layers)
        plans.append(algo.plan(RedistributionContext(model, layers, 0.3, torch.Generator().manual_seed(0))))
    for a, b in zip(*[p.layers for p in plans]):
        assert torch.equal(a.remove, b.remove) and torch.equal(a.grow, b.grow)
        torch.testing.assert_close(a.value_update, b.value_update, rtol=1e-12, atol=1e-15)


def test_plan_matches_the_formulas_on_a_tiny_model():
    """The plan's value_update is -F^-1 c from the explicit Fisher, on the positions the statistic picks."""
    model = small_model(2)
    layers = [m for m in model if isinstance(m, SparseLinear)]
    algo = RedrWoodfisher(block_size=6, dampening=0.02)
    grads = random_grads([layer.nnz for layer in layers], 9, seed=5, scale=0.3)
    for g in grads:
        for layer, gr in zip(layers, g):
            layer.values.grad = gr
        algo.after_step(layers)
    layout = BlockLayout(6, tuple(layer.nnz for layer in layers))
    Finv = torch.linalg.inv(explicit_block_fisher(layout, grads, 0.02))
    w = layout.to_blocks([layer.values.detach() for layer in layers], dtype=D)
    d = torch.diagonal(Finv, dim1=-2, dim2=-1)
    rho = w * w / (2 * d)
    plan = algo.plan(RedistributionContext(model, layers, 0.25, torch.Generator().manual_seed(0)))
    removed = layout.to_blocks([torch.zeros(l.nnz, dtype=D).index_fill_(0, lp.remove.long(), 1.0) for l, lp in zip(layers, plan.layers)], dtype=D).bool()
    assert removed.sum() == int(0.25 * sum(l.nnz for l in layers))
    # the smallest rho are removed globally, except in layers whose floor stopped the removal
    free = [i for i in range(len(layers)) if i not in plan.info["guarded_layers"]]
    assert free
    rho_l, removed_l = layout.from_blocks(rho), layout.from_blocks(removed)
    removed_max = max(rho_l[i][removed_l[i]].max() for i in free)
    kept_min = min(rho_l[i][~removed_l[i]].min() for i in free)
    assert removed_max <= kept_min
    c = torch.where(removed, w / d, torch.zeros((), dtype=D))
    expected = -(Finv @ c.unsqueeze(-1)).squeeze(-1)
    for got, exp in zip([lp.value_update for lp in plan.layers], layout.from_blocks(expected)):
        torch.testing.assert_close(got, exp, rtol=1e-9, atol=1e-12)


def test_redistributor_state_dict_round_trip_resumes_the_fisher():
    _, red, _ = train("woodfisher", epochs=6, block_size=5)
    buf = io.BytesIO()
    torch.save(red.state_dict(), buf)
    buf.seek(0)
    other = redr.Redistributor(small_model(), torch.optim.Adam(small_model().parameters()), "woodfisher",
                               total_epochs=6, block_size=5)
    other.load_state_dict(torch.load(buf))
    a, b = red.algorithm.fisher, other.algorithm.fisher
    assert a.count == b.count and a.layout == b.layout
    torch.testing.assert_close(a.explicit_fisher(), b.explicit_fisher(), rtol=0, atol=0)


def test_options_registry_and_errors():
    algo = make_algorithm("woodfisher", block_size=16, dampening=0.5)
    defaults = {"block_size": 34, "dampening": 1.0, "buffer_steps": 8, "min_layer_fraction": 0.1,
                "min_weights_per_layer": None}
    assert algo.options() == {**defaults, "block_size": 16, "dampening": 0.5} and algo.needs_step_hook
    assert make_algorithm("woodfisher").options()["dampening"] == 1e-6
    assert make_algorithm("woodtaylor").options() == defaults == algorithm_options("woodtaylor")
    with pytest.raises(UsageError, match="takes no option"):
        make_algorithm("woodfisher", blocksize=3)
    with pytest.raises(ValueError, match="dampening"):
        RedrWoodfisher(dampening=0.0)
    with pytest.raises(ValueError, match="block_size"):
        RedrWoodfisher(block_size=0)


def test_release_free_heap_is_harmless():
    from redr.redistribution.mechanism import release_free_heap
    assert release_free_heap() in (True, False)
    x = torch.ones(10)
    assert x.sum().item() == 10


def test_sherman_morrison_online_form():
    sm = ShermanMorrisonInverse(3, 4, 0.1, num_samples=5, dtype=D)
    g = torch.randn(5, 3, 4, dtype=D)
    for x in g:
        sm.update(x)
    F = 0.1 * torch.eye(4, dtype=D) + torch.einsum("mbi,mbj->bij", g, g) / 5
    torch.testing.assert_close(sm.inverse, torch.linalg.inv(F))
    torch.testing.assert_close(sm.diag(), torch.diagonal(torch.linalg.inv(F), dim1=-2, dim2=-1))
