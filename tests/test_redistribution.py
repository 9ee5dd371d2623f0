"""Schedule, selection primitives, the shared plan/apply mechanism, Redr-Random and the Redistributor."""
import math

import pytest
import torch

import redr
from redr.errors import UsageError
from redr.redistribution import InvariantError, LayerPlan, RedistributionPlan, RedistributionSchedule, apply_plan
from redr.redistribution.selection import largest_k, proportional_shares, random_inactive_keys, smallest_k
from redr.sparse import SparseLinear


# ---------------------------------------------------------------- schedule
def test_schedule_alpha_at_known_epochs():
    s = RedistributionSchedule(total_epochs=20)  # end at 15
    assert s.alpha(0) == pytest.approx(0.5)
    assert s.alpha(5) == pytest.approx(0.25 * (1 + math.cos(math.pi / 3)))  # 0.375
    assert s.alpha(7.5) == pytest.approx(0.25)
    assert s.alpha(15) == 0.0 and s.alpha(19) == 0.0
    assert s.epochs() == list(range(1, 15))
    assert all(s.alpha(e) > s.alpha(e + 1) for e in range(1, 14))
    t = RedistributionSchedule(total_epochs=80, every=4, alpha0=0.3)
    assert t.epochs() == list(range(4, 60, 4))
    assert t.alpha(30) == pytest.approx(0.15)
    for bad in ({"total_epochs": 0}, {"total_epochs": 5, "every": 0}, {"total_epochs": 5, "alpha0": 1.5}):
        with pytest.raises(ValueError):
            RedistributionSchedule(**bad)


# ---------------------------------------------------------------- selection
def test_smallest_and_largest_k_break_ties_by_index():
    scores = torch.tensor([3.0, 1.0, 2.0, 1.0, 1.0, 5.0, 2.0])
    assert smallest_k(scores, 2).tolist() == [1, 3]
    assert smallest_k(scores, 4).tolist() == [1, 2, 3, 4]
    assert largest_k(scores, 3).tolist() == [0, 2, 5]
    assert smallest_k(scores, 0).numel() == 0 and smallest_k(scores, 99).numel() == 7
    x = torch.randn(1000)
    assert torch.equal(smallest_k(x, 100), torch.sort(torch.argsort(x)[:100]).values)


def test_random_inactive_keys_are_inactive_distinct_and_seeded():
    active = torch.sort(torch.randperm(10_000)[:1_000]).values
    for k in (1, 500, 8_000, 9_000, 20_000):
        keys = random_inactive_keys(active, 10_000, k, torch.Generator().manual_seed(1))
        assert keys.numel() == min(k, 9_000)
        assert torch.unique(keys).numel() == keys.numel()
        assert not torch.isin(keys, active).any()
        again = random_inactive_keys(active, 10_000, k, torch.Generator().manual_seed(1))
        assert torch.equal(keys, again)
    # uniform over the free positions: each free position equally likely
    counts = torch.zeros(10_000)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        counts[random_inactive_keys(active, 10_000, 450, g)] += 1
    free = counts[~torch.isin(torch.arange(10_000), active)]
    assert abs(free.mean().item() - 10.0) < 0.1 and free.std().item() < 4.5  # binomial(200, 0.05): std 3.1


def test_proportional_shares():
    assert proportional_shares(10, [1, 1]) == [5, 5]
    assert proportional_shares(10, [3, 1]) == [8, 2]  # 7.5 / 2.5: the remainder goes to the earlier item
    assert proportional_shares(7, [1, 1, 1]) == [3, 2, 2]
    assert proportional_shares(10, [1, 1], capacity=[2, 100]) == [2, 8]
    assert proportional_shares(10, [1, 1], capacity=[2, 3]) == [2, 3]
    assert sum(proportional_shares(1001, [5, 17, 300])) == 1001


# ---------------------------------------------------------------- mechanism
def small_model(seed=0):
    g = torch.Generator().manual_seed(seed)
    return redr.build_mlp([40, 30, 20, 5], 0.2, generator=g)


def test_apply_plan_rejects_a_plan_that_regrows_a_removed_weight():
    model = small_model()
    layers = [m for m in model if isinstance(m, SparseLinear)]
    rows, cols = layers[0].indices
    bad = RedistributionPlan([LayerPlan(torch.tensor([0]), torch.tensor([[rows[0].item()], [cols[0].item()]]))]
                             + [LayerPlan.empty() for _ in layers[1:]])
    with pytest.raises(ValueError, match="already active"):
        apply_plan(layers, bad)
    with pytest.raises(InvariantError, match="plan has"):
        apply_plan(layers, RedistributionPlan([]))


def run_short_training(algorithm, epochs=6, seed=0, **options):
    torch.manual_seed(seed)
    model = small_model(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = torch.nn.functional.cross_entropy
    red = redr.Redistributor(model, opt, algorithm, total_epochs=epochs, seed=seed, loss_fn=loss_fn, **options)
    x, y = torch.randn(64, 40), torch.randint(0, 5, (64,))
    snapshots = []
    for epoch in range(1, epochs + 1):
        for _ in range(3):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        before = [(layer.layout.keys().clone(), layer.nnz) for layer in red.layers]
        report = red.step(epoch, batches=[(x, y)])
        snapshots.append((before, report, [layer.layout.keys().clone() for layer in red.layers]))
    return model, red, snapshots


def test_random_keeps_nnz_and_grows_only_previously_inactive():
    model, red, snaps = run_short_training("random")
    assert len(red.history) == len(red.schedule.epochs()) == 4
    for before, report, after in snaps:
        if report is None:
            continue
        for (old_keys, old_nnz), new_keys, removed, grown in zip(before, after, report.removed, report.grown):
            assert new_keys.numel() == old_nnz, "Redr-Random keeps every layer's nnz"
            assert removed == grown == int(report.alpha * old_nnz)
            added = new_keys[~torch.isin(new_keys, old_keys)]
            assert added.numel() == grown, "every grown weight is at a previously inactive position"


def test_same_seed_same_topology_and_state_dict_resumes_the_generator():
    _, a, _ = run_short_training("random", seed=3)
    _, b, _ = run_short_training("random", seed=3)
    assert all(torch.equal(x.indices, y.indices) for x, y in zip(a.layers, b.layers))
    model = small_model(5)
    opt = torch.optim.Adam(model.parameters())
    r1 = redr.Redistributor(model, opt, "random", total_epochs=10, seed=1)
    r2 = redr.Redistributor(small_model(5), torch.optim.Adam(model.parameters()), "random", total_epochs=10, seed=99)
    r1.step(1)
    r2.load_state_dict(r1.state_dict())
    assert torch.equal(r1.generator.get_state(), r2.generator.get_state()) and len(r2.history) == 1


def test_static_sparse_changes_nothing():
    model, red, snaps = run_short_training("none")
    for before, report, after in snaps:
        if report is not None:
            assert all(torch.equal(o, n) for (o, _), n in zip(before, after))


def test_unknown_algorithm_and_option_are_clear_errors():
    model = small_model()
    opt = torch.optim.Adam(model.parameters())
    with pytest.raises(UsageError, match="unknown algorithm 'sett'"):
        redr.Redistributor(model, opt, "sett", total_epochs=3)
    with pytest.raises(UsageError, match="takes no option block_size"):
        redr.Redistributor(model, opt, "random", total_epochs=3, block_size=34)
    with pytest.raises(ValueError, match="no SparseLinear"):
        redr.Redistributor(torch.nn.Linear(3, 3), opt, "random", total_epochs=3)


def test_largest_per_row_matches_brute_force_with_ties():
    from redr.redistribution.selection import largest_per_row

    g = torch.Generator().manual_seed(3)
    for trial in range(20):
        rows, cols = 7, 23
        scores = torch.randint(-1, 4, (rows, cols), generator=g).float()  # many ties; -1 marks active
        avail = (scores >= 0).sum(1)
        k = torch.stack([torch.randint(1, int(a) + 1, (1,), generator=g)[0] if a > 0 else torch.tensor(0) for a in avail])
        keep = k > 0
        scores, k = scores[keep], k[keep]
        r_idx, c_idx = largest_per_row(scores.clone(), k)
        got = sorted(zip(r_idx.tolist(), c_idx.tolist()))
        want = sorted((r, c) for r in range(scores.shape[0])
                      for c in sorted(range(scores.shape[1]), key=lambda c: (-scores[r, c].item(), c))[:int(k[r])])
        assert got == want, trial


def test_keys_to_positions_roundtrip_and_narrow():
    from redr.redistribution.selection import keys_to_positions

    keys = torch.tensor([0, 5, 4096 * 4096 - 1, 123456789], dtype=torch.int64)
    pos = keys_to_positions(keys, 4096 * 8)
    assert pos.dtype == torch.int32
    assert torch.equal(pos[0].long() * 4096 * 8 + pos[1].long(), keys)
    big = torch.tensor([2**40 + 7])
    pos = keys_to_positions(big, 2**20)
    assert pos.dtype == torch.int64 and pos.tolist() == [[2**20], [7]]
