"""Gaps found by the mutation run (docs/testing.md, "Mutation testing"): each test here kills mutants of the
core that the rest of the suite let survive. References are the paper's formulas evaluated by hand and the
documented contracts (dtypes, devices, error messages), never the code under test."""
import math

import pytest
import torch

from redr.redistribution import InvariantError, RedistributionContext, LayerPlan, RedistributionPlan, RedistributionSchedule, apply_plan
from redr.redistribution.algorithms.gradient import RedrGradient
from redr.redistribution.mechanism.invariants import check_invariants
from redr.redistribution.mechanism.plan import no_growth
from redr.redistribution.selection import global_smallest, random_inactive_keys
from redr.redistribution.selection.budget import CollapseGuard, GlobalGrowthBudget, neuron_shares, proportional_shares, water_fill
from redr.sparse import SparseLinear
from redr.sparse.layer import TopologyChange


# ---------------------------------------------------------------- schedule (section 3.1)
def test_a_one_epoch_schedule_is_valid_and_the_errors_name_the_field():
    assert RedistributionSchedule(total_epochs=1).total_epochs == 1
    for bad, field in (({"total_epochs": 0}, "total_epochs"), ({"total_epochs": 5, "every": 0}, "interval"),
                       ({"total_epochs": 5, "alpha0": -0.1}, "alpha0"), ({"total_epochs": 5, "end_fraction": 1.5}, "end_fraction")):
        with pytest.raises(ValueError, match=field):
            RedistributionSchedule(**bad)


def test_the_bounds_of_alpha0_and_end_fraction_are_valid():
    """[0, 1] both ends included: alpha0 = 0 or end_fraction = 0 mean no redistribution, alpha0 = 1 moves all."""
    assert RedistributionSchedule(total_epochs=5, alpha0=0.0).epochs() == []
    assert RedistributionSchedule(total_epochs=5, end_fraction=0.0).epochs() == []
    assert RedistributionSchedule(total_epochs=5, alpha0=1.0).alpha(0) == 1.0


def test_alpha_before_an_end_epoch_of_at_most_one():
    """end = 0.5 * 2 = 1 epoch: alpha(0) = alpha0 / 2 * (1 + cos 0) = alpha0, and 0 from epoch 1 on."""
    s = RedistributionSchedule(total_epochs=2, alpha0=0.4, end_fraction=0.5)
    assert s.alpha(0) == pytest.approx(0.4) and s.alpha(1) == 0.0
    t = RedistributionSchedule(total_epochs=4, alpha0=0.4, end_fraction=0.2)  # end at 0.8
    assert t.alpha(0) == pytest.approx(0.4) and t.epochs() == []


def test_the_last_epochs_redistribute_when_the_schedule_ends_with_the_run():
    """end_fraction 1: alpha(e) = alpha0 / 2 * (1 + cos(pi e / 4)) > 0 for e = 1, 2, 3; 0 at e = 4."""
    s = RedistributionSchedule(total_epochs=4, end_fraction=1.0)
    assert s.epochs() == [1, 2, 3]
    assert s.alpha(3) == pytest.approx(0.25 * (1 + math.cos(3 * math.pi / 4)))


# ---------------------------------------------------------------- plan
def test_an_empty_plan_is_int64_and_on_the_requested_device():
    """A plan's positions are integer tensors on the layer's device ("meta" stands in for an accelerator)."""
    for device in (None, torch.device("meta")):
        lp = LayerPlan.empty(device)
        g = no_growth(device)
        assert lp.remove.shape == (0,) and lp.grow.shape == g.shape == (2, 0)
        assert lp.remove.dtype == lp.grow.dtype == g.dtype == torch.int64
        want = "cpu" if device is None else "meta"
        assert lp.remove.device.type == lp.grow.device.type == g.device.type == want


# ---------------------------------------------------------------- apply / invariants
def tiny_layer() -> SparseLinear:
    """3 x 4 with active (0,1), (1,0), (1,3), (2,2): flat keys 1, 4, 7, 10."""
    return SparseLinear.from_topology(4, 3, torch.tensor([0, 1, 1, 2]), torch.tensor([1, 0, 3, 2]),
                                      generator=torch.Generator().manual_seed(0))


def test_a_layer_the_plan_leaves_alone_reports_every_weight_kept_in_place():
    layers = [tiny_layer(), tiny_layer()]
    plan = RedistributionPlan([LayerPlan.empty(), LayerPlan(torch.tensor([2]), torch.tensor([[0], [0]]))])
    change = apply_plan(layers, plan)[0]
    assert (change.old_nnz, change.new_nnz) == (4, 4)
    assert change.kept_old.tolist() == change.kept_new.tolist() == [0, 1, 2, 3]
    assert change.added_new.numel() == 0


def test_the_invariant_check_refuses_a_change_record_whose_nnz_is_not_the_planned_one():
    """The layer is as planned (nothing moved) but the change record claims one weight more."""
    layer = tiny_layer()
    keys = layer.layout.keys(torch.int64)
    same = torch.arange(4)
    with pytest.raises(InvariantError, match=r"^nnz 4 after the step \(change record: 5\), planned 4$"):
        check_invariants(layer, TopologyChange(4, 5, same, same, same[:0]), LayerPlan.empty(), keys)
    check_invariants(layer, TopologyChange(4, 4, same, same, same[:0]), LayerPlan.empty(), keys)


@pytest.mark.parametrize("n_weights,broken_cols,why", [
    (2, [1, 1], "two equal positions in a 2-weight layer"),
    (4, [1, 3, 0, 2], "row 1's columns out of order (keys 1, 7, 4, 10)"),
])
def test_the_invariant_check_refuses_duplicate_or_unsorted_indices(n_weights, broken_cols, why):
    """Indices corrupted behind the layer's back (the check must not trust change_topology)."""
    if n_weights == 2:
        layer = SparseLinear.from_topology(4, 1, torch.tensor([0, 0]), torch.tensor([1, 2]))
    else:
        layer = tiny_layer()
    keys = layer.layout.keys(torch.int64)
    layer.col.copy_(torch.tensor(broken_cols, dtype=layer.col.dtype))
    same = torch.arange(n_weights)
    with pytest.raises(InvariantError, match="^duplicate or unsorted indices after the step$"):
        check_invariants(layer, TopologyChange(n_weights, n_weights, same, same, same[:0]), LayerPlan.empty(), keys)


def test_the_invariant_check_compares_exact_keys_of_a_layer_past_2_to_the_24_positions():
    """Keys 2**24 and 2**24 + 1 (row 4096, columns 0 and 1 of a 4097 x 4096 layer) are distinct; in float32
    they would be one number."""
    layer = SparseLinear.from_topology(4096, 4097, torch.tensor([4096, 4096]), torch.tensor([0, 1]))
    keys = layer.layout.keys(torch.int32)
    assert keys.tolist() == [2**24, 2**24 + 1]
    same = torch.arange(2)
    check_invariants(layer, TopologyChange(2, 2, same, same, same[:0]), LayerPlan.empty(), keys)


def adam_with_state(layer: SparseLinear, exp_avg: torch.Tensor) -> torch.optim.Optimizer:
    opt = torch.optim.Adam([layer.values])
    opt.state[layer.values] = {"step": torch.tensor(1.0), "exp_avg": exp_avg, "exp_avg_sq": torch.zeros(layer.nnz)}
    return opt


@pytest.mark.parametrize("case,message", [
    ("regrown", r"^a grown position was active before the step \(removed and grown sets must be disjoint\)$"),
    ("still-active", "^a removed position is still active$"),
    ("new-weight-not-zero", "^a new weight does not start at 0$"),
    ("moment-not-reset", "^optimizer state 'exp_avg' is not reset for new weights$"),
])
def test_the_invariant_check_refuses_each_broken_step(case, message):
    """The layer is left unchanged (keys 1, 4, 7, 10) and the plan or change record says otherwise."""
    layer = tiny_layer()
    keys = layer.layout.keys(torch.int64)
    same, opts = torch.arange(4), []
    change = TopologyChange(4, 4, same, same, same[:0])
    if case == "regrown":  # position 0 (key 1) removed and (0, 1) = key 1 grown: a removed weight regrown
        lp = LayerPlan(torch.tensor([0]), torch.tensor([[0], [1]]))
    elif case == "still-active":  # position 0 (key 1) removed, (0, 0) grown, but key 1 is still there
        lp = LayerPlan(torch.tensor([0]), torch.tensor([[0], [0]]))
    else:  # position 2 reported as a new weight
        lp, change = LayerPlan.empty(), TopologyChange(4, 4, same, same, torch.tensor([2]))
        with torch.no_grad():
            layer.values[2] = 0.5 if case == "new-weight-not-zero" else 0.0
        if case == "moment-not-reset":
            opts = [adam_with_state(layer, torch.tensor([0.0, 0.0, 0.1, 0.0]))]
    with pytest.raises(InvariantError, match=message):
        check_invariants(layer, change, lp, keys, opts)


def test_the_invariant_check_accepts_new_weights_and_moments_at_zero():
    layer = tiny_layer()
    with torch.no_grad():
        layer.values[2] = 0.0
    same = torch.arange(4)
    opt = adam_with_state(layer, torch.tensor([0.3, -0.2, 0.0, 0.1]))  # only the new weight's moment must be 0
    check_invariants(layer, TopologyChange(4, 4, same, same, torch.tensor([2])), LayerPlan.empty(),
                     layer.layout.keys(torch.int64), [opt])


# ---------------------------------------------------------------- budgets
def test_water_fill_returns_int64_and_nothing_for_a_negative_total():
    """(test_gradient_algorithms checks the shares against round-robin.) Shares are int64 whatever the
    capacities' dtype, and a total <= 0 hands out nothing."""
    got = water_fill(5, torch.tensor([1, 3, 3], dtype=torch.int32))
    assert got.dtype == torch.int64 and got.tolist() == [1, 2, 2]
    assert water_fill(-2, torch.tensor([1, 1, 1, 1])).tolist() == [0, 0, 0, 0]


def test_neuron_shares_extend_past_the_selected_when_they_cannot_take_the_total():
    """One neuron selected with room for 1 of 3: the next in rank order takes the other 2."""
    assert neuron_shares(3, torch.tensor([1, 5, 5]), 1).tolist() == [1, 2, 0]


def test_the_global_growth_budget_reports_its_floors_and_the_layers_it_held_back():
    """Floors of 3 weights: a 4-weight layer can give 1 of the 2 that alpha = 0.5 asks, a 10-weight layer all 5."""
    layers = [SparseLinear.from_topology(4, 2, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 2, 3])),
              SparseLinear.from_topology(5, 2, torch.arange(10) // 5, torch.arange(10) % 5)]
    budget = GlobalGrowthBudget(CollapseGuard(min_layer_fraction=0.0, min_weights_per_layer=3))
    removes, info = budget.remove((layer.values.detach().abs() for layer in layers), layers, 0.5)
    assert [r.numel() for r in removes] == [1, 5]
    assert info == {"floors": [3, 3], "guarded_layers": [0]}


def test_proportional_shares_give_the_remainder_to_the_largest_fraction_and_split_zero_sizes_equally():
    """10 over sizes 1 : 2 is 3.33 / 6.67: the one left over goes to the larger fraction (the second).
    Sizes all 0 split equally (ties to the earlier item), within the capacities."""
    assert proportional_shares(10, [1, 2]) == [3, 7]
    assert proportional_shares(10, [3, 5]) == [4, 6]  # 3.75 / 6.25: the larger fraction, not the larger item
    assert proportional_shares(14, [1, 1, 1], capacity=[1, 6, 7]) == [1, 6, 7]  # exactly full: every item at capacity
    assert proportional_shares(5, [0, 0], capacity=[3, 3]) == [3, 2]
    assert proportional_shares(4, [0, 0], capacity=[1, 5]) == [1, 3]


# ---------------------------------------------------------------- growth
def test_redr_gradient_grows_a_single_weight_too():
    """Layers of 8, 4 and 2 weights at alpha 0.3 give floor(0.3 * nnz) = 2, 1 and 0 and grow as many."""
    g = torch.Generator().manual_seed(0)
    layers = [SparseLinear.from_topology(4, 4, torch.arange(8) // 2, torch.arange(8) % 4, generator=g),
              SparseLinear.from_topology(4, 3, torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 2, 3]), generator=g),
              SparseLinear.from_topology(3, 2, torch.tensor([0, 1]), torch.tensor([0, 1]), generator=g)]
    model = torch.nn.Sequential(layers[0], torch.nn.ReLU(), layers[1], torch.nn.ReLU(), layers[2])
    x, y = torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g)
    ctx = RedistributionContext(model, layers, 0.3, torch.Generator().manual_seed(0),
                                torch.nn.functional.cross_entropy, [(x, y)])
    plan = RedrGradient().plan(ctx)
    assert [lp.remove.numel() for lp in plan.layers] == [lp.grow.shape[1] for lp in plan.layers] == [2, 1, 0]


# ---------------------------------------------------------------- selection
def test_the_collapse_guard_accepts_a_fraction_of_one_and_names_a_bad_minimum():
    assert CollapseGuard(min_layer_fraction=1.0).min_layer_fraction == 1.0
    for bad in (-1, 2.5):
        with pytest.raises(ValueError, match="^min_weights_per_layer must be a non-negative integer or None"):
            CollapseGuard(min_weights_per_layer=bad)


def test_no_growth_is_an_int64_empty_set_and_no_layers_choose_nothing():
    keys = random_inactive_keys(torch.tensor([0, 1]), 2, 3, torch.Generator().manual_seed(0))  # nothing is free
    assert keys.dtype == torch.int64 and keys.numel() == 0
    assert global_smallest([], 3, []) == ([], [])


def test_asking_for_more_than_is_free_gives_every_free_position():
    """90 of 100 positions active, 20 asked: the 10 free ones (90..99), whichever way they are drawn."""
    keys = random_inactive_keys(torch.arange(90), 100, 20, torch.Generator().manual_seed(0))
    assert keys.tolist() == list(range(90, 100))
