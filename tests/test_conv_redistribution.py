"""Every redistribution algorithm on a small sparse CNN; the conv dense-gradient tiles against float64 autograd."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import redr
from redr.redistribution import Redistributor
from redr.redistribution.algorithms.registry import names
from redr.redistribution.mechanism.algorithm import RedistributionContext
from redr.redistribution.signals import stream_layer_gradients
from redr.sparse import SparseConv2d

CE = nn.CrossEntropyLoss()


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 5, 3, padding=1)
        self.conv2 = nn.Conv2d(5, 6, (3, 2), stride=2, dilation=(1, 2))
        self.fc = nn.Linear(6 * 3 * 3, 4)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(x.flatten(1))


def sparse_cnn(seed=0, dtype=torch.float32):
    return redr.sparsify(TinyCNN().to(dtype), density=0.4, generator=torch.Generator().manual_seed(seed))


def data(n, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 8, 8, generator=g, dtype=dtype), torch.randint(0, 4, (n,), generator=g)


def dense_reference(model, x, y):
    """dL/dW of every layer's dense weight and dL/d(output) of every layer, by float64 autograd on dense math."""
    weights = {name: m.to_dense().double().requires_grad_(True) for name, m in model.named_children()}
    outs = {}
    h = x.double()
    for name in ("conv1", "conv2"):
        m = getattr(model, name)
        outs[name] = F.conv2d(h, weights[name], m.bias.double(), m.stride, m.padding, m.dilation)
        outs[name].retain_grad()
        h = F.relu(outs[name])
    outs["fc"] = h.flatten(1) @ weights["fc"].t() + model.fc.bias.double()
    outs["fc"].retain_grad()
    CE(outs["fc"], y).backward()
    return ({n: w.grad.reshape(w.shape[0], -1) for n, w in weights.items()}, {n: o.grad for n, o in outs.items()})


@pytest.mark.parametrize("tile_rows", [1, 2, 64])
def test_conv_dense_gradient_tiles_match_float64_autograd(tile_rows):
    model = sparse_cnn(dtype=torch.float64)
    x, y = data(5, dtype=torch.float64)
    want, out_grads = dense_reference(model, x, y)
    layers = redr.sparse_layers(model)
    seen, errors, sampled = {}, {}, {}
    probe = (torch.tensor([0, 3, 4]), torch.tensor([0, 7, 29]))

    def consume(lg):
        seen[lg.index] = torch.cat([t for _, t in lg.tiles()])
        errors[lg.index] = lg.neuron_error()
        if lg.index == 1:
            sampled[1] = lg.entries(*probe)

    ctx = RedistributionContext(model, [m for _, m in layers], 0.3, torch.Generator().manual_seed(0), CE, [(x, y)])
    stream_layer_gradients(ctx, consume, tile_rows=tile_rows)
    for i, (name, _) in enumerate(layers):
        torch.testing.assert_close(seen[i], want[name], rtol=1e-10, atol=1e-12)
        g = out_grads[name]
        per_neuron = g.abs().sum(dim=(0, 2, 3)) if g.dim() == 4 else g.abs().sum(0)  # a conv neuron: an output channel
        torch.testing.assert_close(errors[i], per_neuron, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sampled[1], want["conv2"][probe], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", names())
def test_every_algorithm_redistributes_a_cnn_with_invariants_checked(name):
    torch.manual_seed(0)
    model = sparse_cnn(seed=1)
    assert isinstance(model.conv1, SparseConv2d)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    red = Redistributor(model, opt, name, total_epochs=5, seed=0, loss_fn=CE)  # check_invariants on by default
    x, y = data(48, seed=2)
    steps = 0
    for epoch in range(1, 6):
        for s in range(3):
            opt.zero_grad()
            CE(model(x[s * 16:(s + 1) * 16]), y[s * 16:(s + 1) * 16]).backward()
            opt.step()
        before = [layer.nnz for layer in red.layers]
        report = red.step(epoch, batches=[(x[:16], y[:16]), (x[16:32], y[16:32])])
        if report is None:
            continue
        steps += 1
        assert sum(report.nnz) == sum(before), "the total number of weights is constant"
        if name not in names("global"):
            assert report.nnz == before, "layer-local algorithms keep every layer's nnz"
        for layer in red.layers:
            keys = layer.layout.keys()
            assert bool((keys[1:] > keys[:-1]).all()) and layer.values.numel() == layer.nnz
            assert opt.state[layer.values]["exp_avg"].shape == layer.values.shape
    assert steps == 3  # epochs 1-3 of a 5-epoch schedule ("none" steps with empty plans)
    assert torch.isfinite(model(x[:4])).all()
