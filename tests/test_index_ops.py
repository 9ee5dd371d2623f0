"""The linear-time index operations of a topology change equal their torch reference versions."""
import pytest
import torch

from redr.sparse import index_ops
from redr.sparse.layout import CSRLayout


@pytest.fixture(params=["numba", "torch"])
def path(request, monkeypatch):
    if request.param == "torch":
        monkeypatch.setattr(index_ops, "HAVE_NUMBA", False)
    elif not index_ops.HAVE_NUMBA:
        pytest.skip("numba not installed")
    return request.param


def sorted_unique(n, high, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.sort(torch.randperm(high, generator=g)[:n]).values


def test_merge_sorted_positions_and_collision(path):
    a, b = sorted_unique(300, 10_000, 0), sorted_unique(200, 10_000, 1)
    b = b[~torch.isin(b, a)]
    merged, pa, pb = index_ops.merge_sorted(a, b)
    assert torch.equal(merged, torch.sort(torch.cat([a, b])).values)
    assert torch.equal(merged[pa], a) and torch.equal(merged[pb], b)
    assert index_ops.merge_sorted(a, torch.cat([b[:3], a[5:6]]).sort().values) is None
    empty = torch.empty(0, dtype=torch.int64)
    assert torch.equal(index_ops.merge_sorted(a, empty)[0], a)


def test_sorted_intersect(path):
    a = torch.tensor([1, 4, 9, 12])
    assert index_ops.sorted_intersect(a, torch.tensor([2, 9]))
    assert not index_ops.sorted_intersect(a, torch.tensor([0, 2, 13]))
    assert not index_ops.sorted_intersect(a, torch.empty(0, dtype=torch.int64))


@pytest.mark.parametrize("shape,n", [((7, 5), 12), ((50, 80), 900), ((3, 1000), 0)])
def test_transpose_matches_dense_transpose(path, shape, n):
    keys = sorted_unique(n, shape[0] * shape[1], 2)
    layout = CSRLayout.from_keys(keys, shape)
    dense = torch.zeros(shape, dtype=torch.int64)
    dense.view(-1)[keys] = torch.arange(1, n + 1)  # entry k holds k+1
    t = dense.T.contiguous()
    rows_t, cols_t = t.nonzero(as_tuple=True)
    counts = torch.bincount(rows_t, minlength=shape[1])
    assert torch.equal(layout.crow_t.long(), torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)]))
    assert torch.equal(layout.row_t.long(), cols_t)
    assert torch.equal(layout.perm_t.long() + 1, t[rows_t, cols_t])
