"""Which weights every algorithm removes, against references written from the paper's definitions.

Magnitude removal (Redr-Random, -Gradient, -Loss, and per layer Redr-Gradient-Global): a layer with values
``v`` loses the ``floor(alpha * nnz)`` positions of smallest ``|v|`` (documented tie rule: lower position
first). Redr-Woodfisher/-Woodtaylor: the globally smallest ``rho`` over all layers, with ``rho`` built here
from an explicit damped empirical Fisher ``F = lambda I + (1/m) sum_j g_j g_j^T`` per block of ``B``
consecutive active weights of a layer, inverted with ``torch.linalg.inv`` in float64. The references sort
Python lists; nothing here calls the selection code under test. Values are distinct (ties cannot decide),
with random signs (so ``w`` and ``|w|`` order differently), except in the tests of the tie rule.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import redr
from layer_builders import keys_of
from redr.redistribution import RedistributionContext, apply_plan, make_algorithm
from redr.sparse import SparseLinear

D = torch.float64
MAGNITUDE_LOCAL = ("random", "gradient", "loss")


# ---------------------------------------------------------------- helpers (public API only)
def sparse_of(model):
    return [m for m in model.modules() if isinstance(m, SparseLinear)]


def model_with_values(sizes=(12, 10, 8, 4), density=0.5, seed=0, magnitudes=None):
    """A small sparse MLP whose values are distinct magnitudes with random signs (or ``magnitudes(n, gen)``)."""
    gen = torch.Generator().manual_seed(seed)
    model = redr.build_mlp(list(sizes), density, generator=gen)
    layers = sparse_of(model)
    total = sum(layer.nnz for layer in layers)
    mags = (torch.randperm(total, generator=gen).to(torch.float32) + 1) / total if magnitudes is None else magnitudes(total, gen)
    signs = torch.where(torch.rand(total, generator=gen) < 0.5, -1.0, 1.0)
    flat, start = mags * signs, 0
    with torch.no_grad():
        for layer in layers:
            layer.values.copy_(flat[start:start + layer.nnz])
            start += layer.nnz
    return model, layers


def context(model, layers, alpha, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(32, layers[0].in_features, generator=gen)
    y = torch.randint(0, layers[-1].out_features, (32,), generator=gen)
    return RedistributionContext(model, layers, alpha, torch.Generator().manual_seed(seed), F.cross_entropy, [(x, y)])


def smallest_abs(values, k):
    """Reference: the ``k`` positions of smallest ``|v|``, ties to the lower position."""
    order = sorted(range(len(values)), key=lambda i: (abs(values[i]), i))
    return set(order[:k])


def removed_keys(layers, plan_fn):
    """Apply the algorithm's plan; return per layer the flat keys that were active before and are not after."""
    before = [set(keys_of(layer)) for layer in layers]
    plan = plan_fn()
    apply_plan(layers, plan)
    return [sorted(b - set(keys_of(layer))) for b, layer in zip(before, layers)], plan


def expected_keys(layers, positions_per_layer):
    return [sorted(keys_of(layer)[p] for p in pos) for layer, pos in zip(layers, positions_per_layer)]


# ---------------------------------------------------------------- magnitude removal, per layer
@pytest.mark.parametrize("alpha", [0.25, 0.5])
@pytest.mark.parametrize("name", MAGNITUDE_LOCAL)
def test_local_algorithms_remove_the_smallest_magnitudes_of_every_layer(name, alpha):
    model, layers = model_with_values(seed=3)
    values = [layer.values.detach().tolist() for layer in layers]
    want = expected_keys(layers, [smallest_abs(v, math.floor(alpha * len(v))) for v in values])
    algorithm = make_algorithm(name)
    got, _ = removed_keys(layers, lambda: algorithm.plan(context(model, layers, alpha)))
    assert got == want


@pytest.mark.parametrize("name", MAGNITUDE_LOCAL + ("gradient-global",))
def test_magnitude_ties_go_to_the_lower_position(name):
    """Magnitudes from {1, 2, 3}/100 with random signs: many ties, on both sides of zero."""
    model, layers = model_with_values(seed=5, magnitudes=lambda n, g: (torch.randint(1, 4, (n,), generator=g) / 100.0))
    alpha = 0.5
    values = [layer.values.detach().tolist() for layer in layers]
    want = expected_keys(layers, [smallest_abs(v, math.floor(alpha * len(v))) for v in values])
    options = {"min_layer_fraction": 0.0, "min_weights_per_layer": 0} if name == "gradient-global" else {}
    algorithm = make_algorithm(name, **options)
    got, _ = removed_keys(layers, lambda: algorithm.plan(context(model, layers, alpha)))
    assert got == want


def global_floors(layers, min_layer_fraction, min_weights_per_layer):
    """The collapse guard as documented: ``min(positions, max(absolute, ceil(fraction * fair)))``,
    ``fair = total_nnz * positions / total_positions``, ``absolute`` defaulting to ``out_features``."""
    total_nnz = sum(layer.nnz for layer in layers)
    positions = [layer.in_features * layer.out_features for layer in layers]
    floors = []
    for layer, pos in zip(layers, positions):
        absolute = layer.out_features if min_weights_per_layer is None else min_weights_per_layer
        fair = total_nnz * pos / sum(positions)
        floors.append(min(pos, max(absolute, math.ceil(min_layer_fraction * fair - 1e-9))))
    return floors


@pytest.mark.parametrize("min_weights, binds", [(None, False), (35, True)])
def test_gradient_global_removes_the_smallest_magnitudes_per_layer_within_the_guard(min_weights, binds):
    model, layers = model_with_values(seed=7)  # nnz 60, 40, 16; out_features 10, 8, 4
    alpha = 0.5
    floors = global_floors(layers, 0.1, min_weights)
    counts = [min(math.floor(alpha * layer.nnz), max(0, layer.nnz - f)) for layer, f in zip(layers, floors)]
    assert (counts != [math.floor(alpha * layer.nnz) for layer in layers]) == binds  # the case is what it says
    values = [layer.values.detach().tolist() for layer in layers]
    want = expected_keys(layers, [smallest_abs(v, k) for v, k in zip(values, counts)])
    algorithm = make_algorithm("gradient-global", min_weights_per_layer=min_weights)
    got, plan = removed_keys(layers, lambda: algorithm.plan(context(model, layers, alpha)))
    assert got == want
    assert sum(lp.grow.shape[1] for lp in plan.layers) == sum(counts)  # the total moves, between layers


# ---------------------------------------------------------------- Woodfisher / Woodtaylor
def feed_gradients(algorithm, layers, m, seed, scales=None):
    """Hand ``m`` step gradients to the algorithm the way the training loop does (``.grad``, then after_step)."""
    gen = torch.Generator().manual_seed(seed)
    scales = scales or [1.0] * len(layers)
    recorded = []
    for _ in range(m):
        grads = [s * torch.randn(layer.nnz, generator=gen) for layer, s in zip(layers, scales)]
        for layer, g in zip(layers, grads):
            layer.values.grad = g.clone()
        algorithm.after_step(layers)
        recorded.append([g.to(D) for g in grads])
    for layer in layers:
        layer.values.grad = None
    return recorded


def woodfisher_reference(layers, recorded, block, lam, taylor):
    """Per layer: ``(rho, dw_fn)`` from the explicit block Fisher. ``dw_fn(removed positions)`` gives the
    optimal update of the kept weights, ``dw = -a - sum_{q removed} (z_q / d_q) F^-1 e_q`` per block."""
    m = len(recorded)
    out = []
    for li, layer in enumerate(layers):
        w = layer.values.detach().to(D)
        G = torch.stack([step[li] for step in recorded])  # (m, nnz)
        rho = torch.empty_like(w)
        blocks = []
        for s in range(0, w.numel(), block):
            idx = torch.arange(s, min(s + block, w.numel()))
            Gb = G[:, idx]
            Fb = lam * torch.eye(idx.numel(), dtype=D) + Gb.T @ Gb / m
            inv = torch.linalg.inv(Fb)
            a = inv @ Gb.mean(0) if taylor else torch.zeros(idx.numel(), dtype=D)
            z = w[idx] - a
            d = torch.diagonal(inv)
            rho[idx] = z.square() / (2 * d)
            blocks.append((idx, inv, a, z, d))

        def dw_fn(removed, blocks=blocks, n=w.numel()):
            dw = torch.zeros(n, dtype=D)
            mask = torch.zeros(n, dtype=torch.bool)
            mask[list(removed)] = True
            for idx, inv, a, z, d in blocks:
                c = torch.where(mask[idx], z / d, torch.zeros_like(z))
                dw[idx] = -a - inv @ c
            return dw
        out.append((rho.tolist(), dw_fn))
    return out


def greedy_global(rhos, k, allowance):
    """The ``k`` smallest ``rho`` over all layers (ties: lower layer, then lower position), skipping a layer
    once it has given its allowance. Equals the documented water-filling: a saturated layer gives exactly its
    allowance (its smallest rho), the rest comes from the others by smallest rho."""
    items = sorted((r, li, q) for li, rho in enumerate(rhos) for q, r in enumerate(rho))
    taken = [set() for _ in rhos]
    for _, li, q in items:
        if sum(map(len, taken)) == min(k, sum(allowance)):
            break
        if len(taken[li]) < allowance[li]:
            taken[li].add(q)
    return taken


def robust(rhos, k, allowance, rel=1e-4, tries=20):
    """Whether the reference choice survives relative perturbations of ``rel`` (far above the float32 rounding
    of the code's statistics): then the case is unambiguous and an exact comparison is fair."""
    gen = torch.Generator().manual_seed(0)
    want = greedy_global(rhos, k, allowance)
    for _ in range(tries):
        noisy = [[r * (1 + rel * (2 * float(torch.rand(1, generator=gen)) - 1)) for r in rho] for rho in rhos]
        if greedy_global(noisy, k, allowance) != want:
            return False
    return True


@pytest.mark.parametrize("name", ["woodfisher", "woodtaylor"])
@pytest.mark.parametrize("shrink_first, min_weights, binds", [(1.0, None, False), (1e-3, None, True), (1.0, 35, True)])
def test_woodfisher_removes_the_globally_smallest_statistic_of_the_explicit_fisher(name, shrink_first, min_weights, binds):
    """Layers of 60, 40 and 16 weights in blocks of 7 (every layer's last block shorter), 20 step gradients.
    ``shrink_first`` makes layer 0's weights (and gradients, for Woodtaylor's ``w - a``) tiny, so the global choice would take more than its guard allows;
    ``min_weights`` raises every layer's floor. Where the guard binds, the others give the rest."""
    block, lam, alpha, m = 7, 0.05, 0.5, 20
    model, layers = model_with_values(seed=11)
    with torch.no_grad():
        layers[0].values.mul_(shrink_first)
    algorithm = make_algorithm(name, block_size=block, dampening=lam, min_weights_per_layer=min_weights)
    recorded = feed_gradients(algorithm, layers, m, seed=12, scales=[shrink_first, 1.0, 1.0])
    ref = woodfisher_reference(layers, recorded, block, lam, taylor=name == "woodtaylor")
    rhos = [r for r, _ in ref]
    floors = global_floors(layers, 0.1, min_weights)
    allowance = [max(0, layer.nnz - f) for layer, f in zip(layers, floors)]
    total = sum(layer.nnz for layer in layers)
    chosen = greedy_global(rhos, math.floor(alpha * total), allowance)
    unconstrained = greedy_global(rhos, math.floor(alpha * total), [layer.nnz for layer in layers])
    assert (chosen != unconstrained) == binds  # the case is what it says
    assert robust(rhos, math.floor(alpha * total), allowance)

    old_values = [layer.values.detach().to(D).clone() for layer in layers]
    old_keys = [keys_of(layer) for layer in layers]
    plan = algorithm.plan(context(model, layers, alpha))
    assert [set(lp.remove.tolist()) for lp in plan.layers] == chosen
    assert sum(map(len, chosen)) == min(math.floor(alpha * total), sum(allowance))
    # the kept weights move by the optimal update of the explicit inverse
    apply_plan(layers, plan)
    for layer, (_, dw_fn), old, keys, c in zip(layers, ref, old_values, old_keys, chosen):
        expected = old + dw_fn(c)
        now = dict(zip(keys_of(layer), layer.values.detach().to(D).tolist()))
        for q, key in enumerate(keys):
            if q not in c:
                assert now[key] == pytest.approx(float(expected[q]), rel=1e-3, abs=1e-6)


def test_woodfisher_ties_go_to_the_lower_layer_then_the_lower_position():
    """No gradient seen: ``F = lambda I`` with lambda = 1, so ``rho = w^2 / 2`` exactly and equal ``|w|`` tie,
    within and across layers."""
    model, layers = model_with_values(seed=13, magnitudes=lambda n, g: torch.randint(1, 4, (n,), generator=g) / 4.0)
    alpha = 0.3
    algorithm = make_algorithm("woodfisher", block_size=5, dampening=1.0, min_layer_fraction=0.0, min_weights_per_layer=0)
    rhos = [[v * v / 2 for v in layer.values.detach().tolist()] for layer in layers]
    total = sum(layer.nnz for layer in layers)
    chosen = greedy_global(rhos, math.floor(alpha * total), [layer.nnz for layer in layers])
    plan = algorithm.plan(context(model, layers, alpha))
    assert [set(lp.remove.tolist()) for lp in plan.layers] == chosen
