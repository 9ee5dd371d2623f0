"""The numba paths taken only for wide layers, forced on tiny shapes, against dense float64 math."""
import os

import pytest
import torch

from redr.sparse import SparseLinear, kernels

pytestmark = pytest.mark.skipif(not kernels.HAVE_NUMBA, reason="needs numba")


def _layer(in_f, out_f, density, seed):
    g = torch.Generator().manual_seed(seed)
    layer = SparseLinear(in_f, out_f, density, generator=g, backend="numba")
    with torch.no_grad():
        layer.values.normal_(generator=g)
        layer.bias.normal_(generator=g)
    return layer


@pytest.mark.parametrize("in_f,out_f,density,batch", [(37, 23, 0.2, 5), (300, 200, 0.06, 17), (64, 130, 0.5, 33)])
def test_fused_backward_matches_dense_float64(monkeypatch, in_f, out_f, density, batch):
    """Force the one-sweep backward (the threshold at 0 bytes); a hidden layer's input is a transposed view,
    as between layers of a net, so the feature-major input-gradient path is the one tested."""
    monkeypatch.setattr(kernels, "FUSED_BACKWARD_MIN_BYTES", 0)
    layer = _layer(in_f, out_f, density, seed=in_f)
    g = torch.Generator().manual_seed(1)
    xT = torch.randn(in_f, batch, generator=g, requires_grad=True)
    gy = torch.randn(batch, out_f, generator=g)
    layer(xT.t()).backward(gy)
    W = layer.to_dense().double()
    x = xT.detach().t().double()
    rows, cols = layer.indices
    torch.testing.assert_close(xT.grad.t().double(), gy.double() @ W, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.values.grad.double(), (gy.double().t() @ x)[rows, cols], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.bias.grad.double(), gy.double().sum(0), rtol=1e-5, atol=1e-5)


def test_fused_backward_taken_only_past_the_threshold(monkeypatch):
    """Small layers keep the two separate kernels (their sums bit for bit); past the threshold the fused one."""
    calls = []
    real = kernels.backward_input_and_values
    monkeypatch.setattr(kernels, "backward_input_and_values", lambda *a: calls.append(1) or real(*a))
    layer = _layer(64, 48, 0.2, seed=0)
    xT = torch.randn(64, 8, requires_grad=True)
    layer(xT.t()).sum().backward()
    assert calls == []
    monkeypatch.setattr(kernels, "FUSED_BACKWARD_MIN_BYTES", 48 * 8 * 4 - 1)
    layer(xT.t()).sum().backward()
    assert calls == [1]


def test_gather_values_matches_indexing():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(1000, generator=g, requires_grad=True)
    index = torch.randperm(1000, generator=g).to(torch.int32)
    with torch.no_grad():
        assert torch.equal(kernels.gather_values(values, index, "numba"), values[index.long()])


def test_huge_pages_requested_unless_the_user_chose():
    """Set at import for torch's allocator (docs/scale.md); a value the user set beforehand is kept."""
    assert os.environ.get("THP_MEM_ALLOC_ENABLE") is not None
