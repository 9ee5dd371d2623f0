"""A new algorithm written from the parts, without touching the mechanism: remove the weights of smallest
``|w * m|`` (``m`` = Adam's first moment, ``exp_avg``: small weights that the optimizer barely pushes go first),
grow at random in the same layer. Checked against a brute-force reference written from that rule."""
import pytest
import torch

import redr
from redr.redistribution import RedistributionAlgorithm, Redistributor
from redr.redistribution.algorithms.growth import RandomGrowth
from redr.redistribution.mechanism import RemovalScore
from redr.redistribution.selection import CollapseGuard, GlobalGrowthBudget, LayerBudget


# ------------------------------------------------------------------ the whole algorithm (test-only example)
class MomentumMagnitude(RemovalScore):
    """``|w * exp_avg|`` of every active weight (the first optimizer's Adam state)."""

    def scores(self, ctx):
        state = ctx.optimizers[0].state
        return ((layer.values.detach() * state[layer.values]["exp_avg"]).abs() for layer in ctx.layers)


class RemoveByMomentum(RedistributionAlgorithm):
    name = "momentum-magnitude"
    removal = MomentumMagnitude()
    budget = LayerBudget()  # floor(alpha * nnz) per layer, regrown in the same layer
    growth = RandomGrowth()


# ------------------------------------------------------------------ checks
def keyed(layer, tensor):
    """{flat key: value} of a per-active-weight tensor."""
    return dict(zip(layer.layout.keys().tolist(), tensor.detach().double().tolist()))


def run(seed, epochs=5, steps=3):
    torch.manual_seed(seed)
    model = redr.build_mlp([12, 10, 4], 0.4, generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    red = Redistributor(model, opt, RemoveByMomentum(), total_epochs=epochs, seed=seed)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(32, 12, generator=g), torch.randint(0, 4, (32,), generator=g)
    moved = 0
    for epoch in range(1, epochs + 1):
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        before = [(keyed(layer, layer.values), keyed(layer, opt.state[layer.values]["exp_avg"])) for layer in red.layers]
        report = red.step(epoch)
        if report is None:
            continue
        for layer, (w, m), removed, grown in zip(red.layers, before, report.removed, report.grown):
            # reference: sort the old keys by |w * m| (float64), ties to the lower key
            k = int(report.alpha * len(w))
            expected_removed = set(sorted(w, key=lambda key: (abs(w[key] * m[key]), key))[:k])
            new = keyed(layer, layer.values)
            assert removed == grown == k and len(new) == len(w), "nnz constant per layer"
            assert set(w) - set(new) == expected_removed, "removed exactly the smallest |w * exp_avg|"
            added = set(new) - set(w)
            assert len(added) == k and not added & set(w), "grown positions were inactive before"
            assert all(new[key] == 0 for key in added), "new weights start at 0"
            assert all(new[key] == w[key] for key in set(w) - expected_removed), "kept weights unchanged"
            state = {name: keyed(layer, t) for name, t in opt.state[layer.values].items() if t.shape == layer.values.shape}
            assert all(s[key] == 0 for s in state.values() for key in added), "Adam moments zero for new weights"
            moved += k
    assert moved > 0
    return [layer.layout.keys().clone() for layer in red.layers]


def test_custom_algorithm_runs_through_the_redistributor_with_adam():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny net: on a busy machine waiting for intra-op threads would dominate
    try:
        a, b, c = run(seed=3), run(seed=3), run(seed=4)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(p, q) for p, q in zip(a, b)), "same seed, same topology"
    assert not all(torch.equal(p, q) for p, q in zip(a, c))


def test_a_growth_rule_that_grows_per_layer_refuses_a_global_budget():
    class Mismatched(RemoveByMomentum):
        budget = GlobalGrowthBudget(CollapseGuard(0.0, 0))

    model = redr.build_mlp([6, 5, 3], 0.5)
    opt = torch.optim.Adam(model.parameters())
    torch.nn.functional.cross_entropy(model(torch.randn(4, 6)), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    with pytest.raises(TypeError, match="grows per layer"):
        Redistributor(model, opt, Mismatched(), total_epochs=4).step(1)
