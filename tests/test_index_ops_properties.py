"""Property-based tests of the index operations behind a topology change, on both code paths (numba on the
CPU, torch elsewhere), against Python references (sets, sorted lists, a dense transpose).

Examples per test: ``REDR_HYPOTHESIS_EXAMPLES`` (default 50, derandomized so CI runs the same ones).
"""
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redr.sparse import index_ops  # the one internal import (module path owned by redr.sparse)

SETTINGS = settings(max_examples=int(os.environ.get("REDR_HYPOTHESIS_EXAMPLES", 50)), deadline=None,
                    derandomize=True, database=None,
                    # the ``path`` fixture holds for the whole test (one path per test); not resetting it is intended
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
DTYPES = st.sampled_from([torch.int32, torch.int64])


@pytest.fixture(params=["numba", "torch"])
def path(request):
    """The code path: the torch one is what runs off the CPU, forced here by hiding numba."""
    if request.param == "numba" and not index_ops.HAVE_NUMBA:
        pytest.skip("numba not installed")
    with pytest.MonkeyPatch.context() as mp:
        if request.param == "torch":
            mp.setattr(index_ops, "HAVE_NUMBA", False)
        yield request.param


def ascending_tensor(values, dtype):
    return torch.tensor(sorted(values), dtype=dtype)


sets = st.sets(st.integers(0, 200), max_size=40)


@SETTINGS
@given(a=sets, b=sets, da=DTYPES, db=DTYPES)
def test_merge_sorted_equals_the_sorted_union_or_refuses_a_shared_key(path, a, b, da, db):
    ta, tb = ascending_tensor(a, da), ascending_tensor(b, db)
    result = index_ops.merge_sorted(ta, tb)
    if a & b:
        assert result is None
        return
    merged, pos_a, pos_b = result
    assert merged.tolist() == sorted(a | b)
    assert merged[pos_a.long()].tolist() == sorted(a) and merged[pos_b.long()].tolist() == sorted(b)


@SETTINGS
@given(a=sets, b=sets)
def test_sorted_intersect_and_isin_sorted_equal_set_membership(path, a, b):
    ta, tb = ascending_tensor(a, torch.int64), ascending_tensor(b, torch.int64)
    assert index_ops.sorted_intersect(ta, tb) == bool(a & b)
    assert index_ops.isin_sorted(tb, ta).tolist() == [x in a for x in sorted(b)]


@SETTINGS
@given(values=st.lists(st.integers(-50, 50), max_size=30))
def test_ascending_sorts(values):
    assert index_ops.ascending(torch.tensor(values, dtype=torch.int64)).tolist() == sorted(values)


@st.composite
def topologies(draw):
    out_f, in_f = draw(st.integers(1, 8)), draw(st.integers(1, 9))
    keys = sorted(draw(st.sets(st.integers(0, out_f * in_f - 1))))
    return out_f, in_f, keys


@SETTINGS
@given(topo=topologies(), dtype=DTYPES)
def test_csr_from_keys_and_back_and_the_transpose_equal_the_dense_matrix(path, topo, dtype):
    out_f, in_f, keys = topo
    crow, col = index_ops.csr_from_keys(torch.tensor(keys, dtype=torch.int64), (out_f, in_f), dtype)
    rows = [k // in_f for k in keys]
    assert crow.tolist() == [sum(r < i for r in rows) for i in range(out_f + 1)]
    assert col.tolist() == [k % in_f for k in keys]
    assert index_ops.csr_rows(crow).tolist() == rows
    assert index_ops.csr_keys(crow, col, in_f, torch.int64).tolist() == keys
    crow_t, row_t, perm_t = index_ops.transpose_csr(crow, col, in_f, dtype)
    by_column = sorted(range(len(keys)), key=lambda e: (keys[e] % in_f, keys[e] // in_f))  # W.T in row-major order
    assert perm_t.tolist() == by_column
    assert row_t.tolist() == [rows[e] for e in by_column]
    cols = [k % in_f for k in keys]
    assert crow_t.tolist() == [sum(c < j for c in cols) for j in range(in_f + 1)]
