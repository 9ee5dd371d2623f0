"""batch_indices: each row once per epoch, one permutation from the CPU generator, rank slices add up."""
from __future__ import annotations

import pytest
import torch

from redr.data import batch_indices
from redr.errors import UsageError


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n, bs", [(103, 10), (100, 10), (5, 8), (0, 4)])
def test_every_row_exactly_once(n, bs):
    batches = batch_indices(n, bs, gen())
    assert all(b.dtype == torch.int64 for b in batches)
    assert sorted(torch.cat(batches).tolist() if batches else []) == list(range(n))
    assert [len(b) for b in batches][:-1] == [bs] * (len(batches) - 1)


def test_same_generator_same_order_and_epochs_differ():
    a, b = batch_indices(50, 7, gen(1)), batch_indices(50, 7, gen(1))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    g = gen(1)
    e1, e2 = torch.cat(batch_indices(50, 7, g)), torch.cat(batch_indices(50, 7, g))
    assert not torch.equal(e1, e2)
    assert torch.equal(e1, torch.randperm(50, generator=gen(1)))  # exactly one permutation per call


def test_no_shuffle_and_drop_last():
    batches = batch_indices(10, 4, None, shuffle=False, drop_last=True)
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("world, bs, n", [(2, 8, 37), (3, 8, 37), (4, 16, 100), (3, 2, 9)])
def test_rank_slices_concatenate_to_the_one_process_batches(world, bs, n):
    single = batch_indices(n, bs, gen(4))
    per_rank = [batch_indices(n, bs, gen(4), rank=r, world_size=world) for r in range(world)]
    assert all(len(p) == len(single) for p in per_rank)  # every rank runs the same number of steps
    for step, batch in enumerate(single):
        assert torch.equal(torch.cat([per_rank[r][step] for r in range(world)]), batch)


def test_arguments_are_checked():
    with pytest.raises(UsageError, match="CPU torch.Generator"):
        batch_indices(10, 2, None)
    with pytest.raises(UsageError, match="rank"):
        batch_indices(10, 2, gen(), rank=2, world_size=2)
    with pytest.raises(UsageError, match="batch_size"):
        batch_indices(10, 0, gen())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gets_the_cpu_order():
    cpu = batch_indices(64, 16, gen(9))
    gpu = batch_indices(64, 16, gen(9), device="cuda")
    assert all(g.is_cuda and torch.equal(g.cpu(), c) for g, c in zip(gpu, cpu))
