"""Random growth (Redr-Random, -Woodfisher, -Woodtaylor) draws uniformly among the inactive positions.

The sampler has two paths (the docstring of the random growth): layers with few free positions (nearly dense,
or a growth close to the number of free positions) enumerate them; sparse layers draw candidates and
subsample a surplus. The cases below sit well inside one regime each: 83% dense (dense path), 25% dense with
a growth of a twelfth of the free positions (sampling path), and 75% free with a growth of half of them
(dense path through the other condition).

Statistics, each with a false-alarm rate of 1e-4 (the seeds are fixed, so every run is the same):
* marginal counts per free position over many draws, each draw with its own seed: Pearson's statistic
  corrected for sampling without replacement (``k`` of ``C`` positions per draw: the count vector's
  covariance is ``C / (C - 1)`` times that of a multinomial, so ``T = (C - 1) / C * sum (O - Np)^2 /
  (N p (1 - p))`` with ``p = k / C`` is chi-square with ``C - 1`` degrees of freedom);
* the frequency of every ``k``-subset on the tiniest layers (uniform over subsets, not only marginally);
* large draws: the mean rank of the chosen positions among the free ones (a z-test; one uniform draw
  without replacement has mean ``(C - 1) / 2`` and variance ``(C^2 - 1) / 12 / k * (C - k) / (C - 1)``).
"""
import itertools
import math

import pytest
import torch

from layer_builders import layer_with_keys
from redr.redistribution import RedistributionContext, make_algorithm

FALSE_ALARM = 1e-4
Z_LIMIT = 3.8906  # two-sided normal quantile for FALSE_ALARM


def chi2_pvalue(statistic: float, df: int) -> float:
    """Upper tail of the chi-square distribution (regularised upper incomplete gamma)."""
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(statistic / 2, dtype=torch.float64)))


def random_keys(n_positions, nnz, seed):
    return torch.randperm(n_positions, generator=torch.Generator().manual_seed(seed))[:nnz].tolist()


def algorithm(name):
    options = {"block_size": 4, "dampening": 1.0, "min_layer_fraction": 0.0, "min_weights_per_layer": 0}  # no guard
    return make_algorithm(name, **options) if name.startswith("wood") else make_algorithm(name)


def grown_keys(algorithm, layer, alpha, seed):
    """The flat keys one plan of ``algorithm`` grows, its generator seeded with ``seed``."""
    ctx = RedistributionContext(layer, [layer], alpha, torch.Generator().manual_seed(seed))
    grow = algorithm.plan(ctx).layers[0].grow.long()
    return (grow[0] * layer.in_features + grow[1]).tolist()


# (out, in, nnz, alpha): the growth is floor(alpha * nnz) (for Woodfisher, of the layer's total, one layer here)
DENSE_PATH = (6, 8, 40, 0.1)       # 48 positions, 8 free (< 1/4), 4 grow
SAMPLING_PATH = (8, 8, 16, 0.25)   # 64 positions, 48 free, 4 grow (48 >= 4 * 4 and >= 64 / 4)
DENSE_BY_SHARE = (8, 8, 16, 1.0)   # 48 free, 16 grow (48 < 4 * 16)
CASES = {"dense": DENSE_PATH, "sampling": SAMPLING_PATH, "dense-by-share": DENSE_BY_SHARE}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", ["random", "woodfisher", "woodtaylor"])
def test_every_free_position_is_grown_equally_often(name, case):
    out_f, in_f, nnz, alpha = CASES[case]
    draws = 1000 if name == "random" else 500
    algo = algorithm(name)
    active = random_keys(out_f * in_f, nnz, seed=1)
    layer = layer_with_keys(out_f, in_f, active)
    free = sorted(set(range(out_f * in_f)) - set(active))
    counts = dict.fromkeys(free, 0)
    k = None
    for seed in range(draws):
        keys = grown_keys(algo, layer, alpha, seed)
        assert len(set(keys)) == len(keys) and set(keys) <= set(free)
        k = len(keys) if k is None else k
        assert len(keys) == k == math.floor(alpha * nnz)
        for key in keys:
            counts[key] += 1
    C, p = len(free), k / len(free)
    expected = draws * p
    statistic = (C - 1) / C * sum((o - expected) ** 2 for o in counts.values()) / (expected * (1 - p))
    pvalue = chi2_pvalue(statistic, C - 1)
    assert pvalue > FALSE_ALARM, f"{name} growth is not uniform on the {case} path: chi2={statistic:.1f}, p={pvalue:.2e}"


@pytest.mark.parametrize("out_f, in_f, nnz, alpha", [(3, 4, 4, 1.0), (4, 4, 4, 0.5)], ids=["dense", "sampling"])
def test_every_subset_of_free_positions_is_grown_equally_often(out_f, in_f, nnz, alpha):
    """4 active: of 12 positions, 8 free choose 4 (dense path, 70 subsets); of 16, 12 free choose 2 (sampling, 66)."""
    active = random_keys(out_f * in_f, nnz, seed=2)
    layer = layer_with_keys(out_f, in_f, active)
    free = sorted(set(range(out_f * in_f)) - set(active))
    k = math.floor(alpha * nnz)
    subsets = {s: 0 for s in itertools.combinations(free, k)}
    draws = 40 * len(subsets)
    algo = algorithm("random")
    for seed in range(draws):
        subsets[tuple(sorted(grown_keys(algo, layer, alpha, seed)))] += 1
    expected = draws / len(subsets)
    statistic = sum((o - expected) ** 2 for o in subsets.values()) / expected
    pvalue = chi2_pvalue(statistic, len(subsets) - 1)
    assert pvalue > FALSE_ALARM, f"subsets not uniform: chi2={statistic:.1f}, p={pvalue:.2e}"


@pytest.mark.parametrize("nnz, alpha", [(3500, 0.1), (410, 0.3)], ids=["dense", "sampling"])
def test_large_draws_are_not_biased_to_low_positions(nnz, alpha):
    """64 x 64 layer: 85% dense (dense path, 350 of 596 free grow) or 10% dense (123 of 3686 free grow);
    the mean rank over 5 independent draws (each its own seed) against its distribution under uniformity."""
    n, draws = 64 * 64, 5
    active = random_keys(n, nnz, seed=3)
    layer = layer_with_keys(64, 64, active)
    free = sorted(set(range(n)) - set(active))
    rank = {key: i for i, key in enumerate(free)}
    algo = algorithm("random")
    ranks = []
    for seed in range(draws):
        ranks.append([rank[key] for key in grown_keys(algo, layer, alpha, seed)])
    k, C = len(ranks[0]), len(free)
    mean = sum(map(sum, ranks)) / (k * draws)
    var = (C * C - 1) / 12 / k * (C - k) / (C - 1) / draws
    z = (mean - (C - 1) / 2) / math.sqrt(var)
    assert abs(z) < Z_LIMIT, f"mean rank {mean:.1f} of {draws} x {k} grown among {C} free: z={z:.2f}"
