"""Property-based tests of the plan mechanism: random topologies and random plans (hypothesis).

For every valid plan (remove any subset of the active weights, grow any subset of the inactive positions,
optionally update the values first) the result equals a reference built with Python sets and a dense
float64 matrix: exact nnz, strictly increasing keys (no duplicates), kept weights and their optimizer
moments carried over, new weights and moments exactly 0, forward and backward equal to the dense layer.
Every invalid plan (duplicate or out-of-range removal, growth at an active, duplicate or out-of-range
position, non-integer indices) is refused with TopologyError/InvariantError and leaves the layer as it was.

Examples per test: ``REDR_HYPOTHESIS_EXAMPLES`` (default 50, derandomized so CI runs the same ones).
"""
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layer_builders import keys_of, layer_with_keys
from redr.redistribution import InvariantError, LayerPlan, RedistributionPlan, apply_plan
from redr.sparse import TopologyError

D = torch.float64
SETTINGS = settings(max_examples=int(os.environ.get("REDR_HYPOTHESIS_EXAMPLES", 50)), deadline=None,
                    derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
REFUSED = (TopologyError, InvariantError)


# ---------------------------------------------------------------- building blocks
@st.composite
def layers(draw, max_out=6, max_in=7):
    """A float64 layer of random shape, topology (empty and full included), values, bias and backend,
    with Adam moments and an SGD momentum buffer for its values."""
    out_f, in_f = draw(st.integers(1, max_out)), draw(st.integers(1, max_in))
    active = draw(st.sets(st.integers(0, out_f * in_f - 1)))
    seed = draw(st.integers(0, 2**16))
    backend = draw(st.sampled_from(["numba", "torch", "dense"]))
    gen = torch.Generator().manual_seed(seed)
    layer = layer_with_keys(out_f, in_f, active, values=torch.randn(len(active), generator=gen, dtype=D),
                            bias=torch.randn(out_f, generator=gen, dtype=D), backend=backend, dtype=D)
    adam = torch.optim.Adam([layer.values], lr=1e-3)
    sgd = torch.optim.SGD([layer.values], lr=0.0, momentum=0.9)
    for opt in (adam, sgd):
        layer.values.grad = torch.randn(layer.nnz, generator=gen, dtype=D)
        opt.step()
    layer.values.grad = None
    return layer, [adam, sgd]


@st.composite
def valid_plans(draw, layer):
    nnz, n = layer.nnz, layer.in_features * layer.out_features
    remove = draw(st.lists(st.integers(0, nnz - 1), unique=True)) if nnz else []
    free = sorted(set(range(n)) - set(keys_of(layer)))
    grow = draw(st.lists(st.sampled_from(free), unique=True)) if free else []
    dtype = draw(st.sampled_from([torch.int32, torch.int64]))
    update = torch.randn(nnz, dtype=D, generator=torch.Generator().manual_seed(nnz)) if draw(st.booleans()) else None
    grow_t = torch.tensor([[k // layer.in_features for k in grow], [k % layer.in_features for k in grow]], dtype=dtype)
    return LayerPlan(torch.tensor(remove, dtype=dtype), grow_t.reshape(2, len(grow)), update)


def snapshot(layer, optimizers):
    """Everything a plan may change: key -> (value, moments...), plus bias and raw index tensors."""
    moments = [[s[name].detach().clone() for name in sorted(s) if torch.is_tensor(s[name]) and s[name].shape == layer.values.shape]
               for s in (opt.state[layer.values] for opt in optimizers)]
    per_key = {key: (float(layer.values.detach()[i]),) + tuple(float(m[i]) for ms in moments for m in ms)
               for i, key in enumerate(keys_of(layer))}
    return per_key, layer.bias.detach().clone(), layer.crow.clone(), layer.col.clone()


def dense_of(layer):
    W = torch.zeros(layer.out_features * layer.in_features, dtype=D)
    keys = keys_of(layer)
    if keys:
        W[torch.tensor(keys)] = layer.values.detach()
    return W.view(layer.out_features, layer.in_features)


def check_compute_matches_dense(layer):
    """Forward, input gradient and value gradient equal the dense float64 layer's (CSR and its transposed
    companion rebuilt correctly)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, layer.in_features, dtype=D, generator=gen, requires_grad=True)
    r = torch.randn(5, layer.out_features, dtype=D, generator=gen)
    y = layer(x)
    W = dense_of(layer)
    torch.testing.assert_close(y, x.detach() @ W.T + layer.bias.detach())
    (y * r).sum().backward()
    torch.testing.assert_close(x.grad, r @ W)
    grad_w = (r.T @ x.detach()).reshape(-1)
    if layer.nnz:
        torch.testing.assert_close(layer.values.grad, grad_w[torch.tensor(keys_of(layer))])
    layer.values.grad = None


# ---------------------------------------------------------------- valid plans
@SETTINGS
@given(st.data())
def test_every_valid_plan_gives_exactly_the_planned_layer(data):
    cases = data.draw(st.lists(layers(), min_size=1, max_size=3))
    plans = [data.draw(valid_plans(layer)) for layer, _ in cases]
    before = [snapshot(layer, opts) for layer, opts in cases]
    old_keys = [keys_of(layer) for layer, _ in cases]
    for (layer, opts), plan in zip(cases, plans):  # one optimizer list per layer: apply layer by layer
        apply_plan([layer], RedistributionPlan([plan]), opts)
    for (layer, opts), plan, (per_key, bias, _, _), keys in zip(cases, plans, before, old_keys):
        removed = {keys[i] for i in plan.remove.tolist()}
        grown = {int(r) * layer.in_features + int(c) for r, c in zip(*plan.grow.tolist())}
        expected = (set(keys) - removed) | grown
        now = keys_of(layer)
        assert layer.nnz == len(keys) - len(removed) + len(grown) == len(expected)
        assert now == sorted(expected)  # strictly increasing: no duplicates, row-major order
        after, bias_now, _, _ = snapshot(layer, opts)
        delta = dict(zip(keys, plan.value_update.tolist())) if plan.value_update is not None else {}
        for key in now:
            if key in grown:
                assert after[key] == (0.0,) * len(after[key])  # new weight and every moment exactly 0
            else:
                old = per_key[key]
                assert after[key][0] == pytest.approx(old[0] + delta.get(key, 0.0), rel=1e-15, abs=1e-15)
                assert after[key][1:] == old[1:]  # the moments follow the weight
        assert torch.equal(bias_now, bias)
        check_compute_matches_dense(layer)


# ---------------------------------------------------------------- invalid plans
INVALID = ("duplicate-removal", "removal-out-of-range", "growth-at-active", "growth-at-removed", "duplicate-growth",
           "growth-out-of-range", "float-indices")


@st.composite
def invalid_plans(draw, layer):
    """A valid plan, then one corruption from those applicable to this layer."""
    plan = draw(valid_plans(layer))
    remove, grow = plan.remove.long().tolist(), plan.grow.long().T.tolist()
    nnz, out_f, in_f = layer.nnz, layer.out_features, layer.in_features
    active = keys_of(layer)
    kinds = [k for k in INVALID if (k not in ("duplicate-removal", "growth-at-active", "growth-at-removed") or nnz)
             and (k != "duplicate-growth" or nnz < out_f * in_f)]
    kind = draw(st.sampled_from(kinds))
    if kind == "duplicate-removal":
        remove = remove + [draw(st.sampled_from(remove))] if remove else [0, 0]
    elif kind == "removal-out-of-range":
        remove = remove + [draw(st.sampled_from([nnz, nnz + 3, -1]))]
    elif kind in ("growth-at-active", "growth-at-removed"):
        if kind == "growth-at-removed":
            remove = remove or [0]
            key = active[draw(st.sampled_from(remove))]
        else:
            key = draw(st.sampled_from(active))
        grow = grow + [[key // in_f, key % in_f]]
    elif kind == "duplicate-growth":
        if not grow:
            free = sorted(set(range(out_f * in_f)) - set(active))
            grow = [[free[0] // in_f, free[0] % in_f]]
        grow = grow + [draw(st.sampled_from(grow))]
    elif kind == "growth-out-of-range":
        grow = grow + [draw(st.sampled_from([[out_f, 0], [0, in_f], [-1, 0], [0, -1]]))]
    remove_t = torch.tensor(remove, dtype=torch.int64)
    grow_t = torch.tensor(grow, dtype=torch.int64).reshape(-1, 2).T
    if kind == "float-indices":
        if remove:
            remove_t = remove_t.to(D)
        else:
            grow_t = torch.tensor([[0.0], [0.0]], dtype=D)
    return LayerPlan(remove_t, grow_t), kind


@SETTINGS
@given(st.data())
def test_every_invalid_plan_is_refused_and_leaves_the_layer_as_it_was(data):
    layer, opts = data.draw(layers())
    plan, kind = data.draw(invalid_plans(layer))
    before = snapshot(layer, opts)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, layer.in_features, dtype=D, generator=gen)
    y_before = layer(x).detach()
    with pytest.raises(REFUSED):
        apply_plan([layer], RedistributionPlan([plan]), opts)
    after = snapshot(layer, opts)
    assert after[0] == before[0] and all(torch.equal(a, b) for a, b in zip(after[1:], before[1:])), kind
    assert torch.equal(layer(x).detach(), y_before), kind
    check_compute_matches_dense(layer)


def test_a_plan_for_the_wrong_number_of_layers_is_refused():
    layer = layer_with_keys(3, 4, [0, 5, 7])
    with pytest.raises(InvariantError, match="plan has"):
        apply_plan([layer], RedistributionPlan([]))
    with pytest.raises(InvariantError, match="plan has"):
        apply_plan([layer], RedistributionPlan([LayerPlan.empty(), LayerPlan.empty()]))
    assert keys_of(layer) == [0, 5, 7]


# ---------------------------------------------------------------- all or nothing (gaps these tests found, fixed)
def layer_and_state():
    layer = layer_with_keys(4, 5, [0, 3, 6, 7, 11, 12, 18], dtype=D)
    return layer, snapshot(layer, [])


def unchanged(layer, state):
    after = snapshot(layer, [])
    return after[0] == state[0] and all(torch.equal(a, b) for a, b in zip(after[1:], state[1:]))


def test_an_invalid_plan_with_a_value_update_leaves_the_values_as_they_were():
    layer, state = layer_and_state()
    plan = LayerPlan(torch.tensor([0]), torch.tensor([[0], [3]]), value_update=torch.ones(7, dtype=D))  # (0, 3) active
    with pytest.raises(REFUSED):
        apply_plan([layer], RedistributionPlan([plan]))
    assert unchanged(layer, state)


def test_a_plan_invalid_in_one_layer_leaves_every_layer_as_it_was():
    (first, state), (second, _) = layer_and_state(), layer_and_state()
    plan = RedistributionPlan([LayerPlan(torch.tensor([1]), torch.empty(2, 0, dtype=torch.int64)),
                               LayerPlan(torch.tensor([2, 2]), torch.empty(2, 0, dtype=torch.int64))])
    with pytest.raises(REFUSED):
        apply_plan([first, second], plan)
    assert unchanged(first, state)


@pytest.mark.parametrize("remove, grow", [
    (torch.tensor([0, 1, 2]), torch.tensor([[0, 1], [0, 2], [0, 4]])),  # growth (k, 2); read as (2, k): 2, 5, 4
    (torch.tensor([[0, 1]]), torch.empty(2, 0, dtype=torch.int64)),     # removal given as (1, k)
], ids=["growth-k-by-2", "removal-2d"])
def test_a_plan_of_the_wrong_shape_is_refused_and_leaves_the_layer_as_it_was(remove, grow):
    layer, state = layer_and_state()
    with pytest.raises(REFUSED):
        apply_plan([layer], RedistributionPlan([LayerPlan(remove, grow)]))
    assert unchanged(layer, state)


@pytest.mark.parametrize("n", [1, 6], ids=["broadcast", "short"])
def test_a_value_update_of_the_wrong_length_is_refused(n):
    layer, state = layer_and_state()
    plan = LayerPlan(torch.empty(0, dtype=torch.int64), torch.empty(2, 0, dtype=torch.int64), torch.ones(n, dtype=D))
    with pytest.raises(REFUSED):
        apply_plan([layer], RedistributionPlan([plan]))
    assert unchanged(layer, state)
