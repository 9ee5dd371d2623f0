"""SparseConv2d against float64 dense conv2d (the reference), its topology changes, errors and sparsify of CNNs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import redr
from redr.errors import UsageError
from redr.sparse import SparseConv2d, SparseLinear, SparseMatrixModule

# (in, out, kernel, stride, padding, dilation, batch, height, width)
SHAPES = [
    (3, 5, 3, 1, 0, 1, 4, 7, 7),
    (4, 6, 3, 2, 1, 1, 3, 9, 8),
    (2, 3, 3, 1, 2, 2, 2, 10, 9),
    (3, 4, (2, 3), (1, 2), (1, 0), 1, 2, 6, 8),
    (5, 2, 1, 1, 0, 1, 1, 5, 5),
    (3, 7, (3, 1), 1, (0, 1), (2, 1), 1, 8, 6),
    (4, 3, (2, 3), 2, (2, 1), (1, 2), 1, 7, 9),  # stride 2 on both sides at batch 1: one-number runs (direct)
]


def random_topology(out_f, in_f, density, gen, empty_rows=()):
    mask = torch.rand(out_f, in_f, generator=gen) < density
    mask[list(empty_rows)] = False
    rows, cols = mask.nonzero(as_tuple=True)
    return rows, cols


def reference(layer, x, gy):
    """Output, input gradient and value gradient from float64 dense conv2d on the layer's dense weight."""
    w = layer.to_dense().double().requires_grad_(True)
    b = None if layer.bias is None else layer.bias.detach().double().requires_grad_(True)
    xd = x.detach().double().requires_grad_(True)
    y = F.conv2d(xd, w, b, layer.stride, layer.padding, layer.dilation)
    y.backward(gy.double())
    rows, cols = layer.indices
    gw = w.grad.reshape(layer.out_channels, -1)[rows, cols]
    return y.detach(), xd.grad, gw, None if b is None else b.grad


@pytest.mark.parametrize("backend", ["numba:direct", "numba:unfold", "torch", "dense"])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_gradients_match_dense_float64(shape, backend):
    """Every compute path (the numba backend's two algorithms too) against float64 ``F.conv2d`` and its autograd."""
    backend, _, algorithm = backend.partition(":")
    cin, cout, k, s, p, d, n, h, w = shape
    gen = torch.Generator().manual_seed(1)
    kh, kw = (k, k) if isinstance(k, int) else k
    rows, cols = random_topology(cout, cin * kh * kw, 0.4, gen, empty_rows=(cout - 1,))  # an empty output channel
    layer = SparseConv2d.from_topology(cin, cout, k, rows, cols, stride=s, padding=p, dilation=d, generator=gen,
                                       backend=backend, algorithm=algorithm or "auto")
    x = torch.randn(n, cin, h, w, generator=gen, requires_grad=True)
    y = layer(x)
    gy = torch.randn(y.shape, generator=gen)
    y.backward(gy)
    ry, rgx, rgw, rgb = reference(layer, x, gy)
    tol = dict(rtol=1e-4, atol=1e-4)
    assert y.shape == ry.shape
    torch.testing.assert_close(y.double(), ry, **tol)
    torch.testing.assert_close(x.grad.double(), rgx, **tol)
    torch.testing.assert_close(layer.values.grad.double(), rgw, **tol)
    torch.testing.assert_close(layer.bias.grad.double(), rgb, **tol)


def test_direct_and_unfold_agree_and_auto_follows_the_rule():
    """The two numba algorithms give the same numbers on a larger layer; ``auto`` takes the one ``use_direct`` names."""
    from redr.sparse.conv_direct import use_direct

    gen = torch.Generator().manual_seed(5)
    layers = {a: SparseConv2d(6, 8, 3, padding=1, density=0.3, generator=torch.Generator().manual_seed(0),
                              backend="numba", algorithm=a) for a in ("direct", "unfold", "auto")}
    x = torch.randn(5, 6, 9, 9, generator=gen)
    gy = torch.randn(5, 8, 9, 9, generator=gen)
    results = {}
    for a, layer in layers.items():
        xi = x.clone().requires_grad_(True)
        layer(xi).backward(gy)
        results[a] = (xi.grad, layer.values.grad)
    for got, want in zip(results["direct"], results["unfold"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    chosen = "direct" if use_direct("auto", layers["auto"].geometry, "numba", torch.float32, 5, 9) else "unfold"
    assert use_direct("auto", layers["auto"].geometry, "numba", torch.float32, 128, 14)
    assert not use_direct("auto", layers["auto"].geometry, "numba", torch.float32, 1, 14)
    assert not use_direct("direct", layers["auto"].geometry, "torch", torch.float32, 128, 14)
    for got, want in zip(results["auto"], results[chosen]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("run_floats, chunk_bytes", [(1, 2**30), (8, 1), (2**30, 2000)])
def test_direct_kernels_split_rows_into_column_runs(monkeypatch, run_floats, chunk_bytes):
    """Rows longer than ``RUN_FLOATS`` are cut into column tiles (one column at ``1``; 4, 4, 1 columns at ``8``),
    the batch into chunks of at most ``CHUNK_BYTES`` of padded input (one sample each at ``1``, 2 + 1 at ``2000``)."""
    from redr.sparse import conv_direct

    monkeypatch.setattr(conv_direct, "RUN_FLOATS", run_floats)
    monkeypatch.setattr(conv_direct, "CHUNK_BYTES", chunk_bytes)
    gen = torch.Generator().manual_seed(6)
    rows, cols = random_topology(4, 3 * 3 * 3, 0.5, gen)
    layer = SparseConv2d.from_topology(3, 4, 3, rows, cols, padding=1, generator=gen, backend="numba", algorithm="direct")
    x = torch.randn(3, 3, 5, 9, generator=gen, requires_grad=True)  # a padded sample: 3 * 7 * 11 * 4 = 924 bytes
    y = layer(x)
    gy = torch.randn(y.shape, generator=gen)
    y.backward(gy)
    ry, rgx, rgw, _ = reference(layer, x, gy)
    tol = dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y.double(), ry, **tol)
    torch.testing.assert_close(x.grad.double(), rgx, **tol)
    torch.testing.assert_close(layer.values.grad.double(), rgw, **tol)


def test_unknown_algorithm_is_refused():
    with pytest.raises(ValueError, match="unknown algorithm 'im2col'"):
        SparseConv2d(2, 2, 3, density=0.5, algorithm="im2col")


def test_float64_torch_path_is_exact():
    gen = torch.Generator().manual_seed(2)
    layer = SparseConv2d(3, 4, 3, padding=1, stride=2, density=0.5, generator=gen, backend="torch", dtype=torch.float64)
    x = torch.randn(2, 3, 7, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    gy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    y.backward(gy)
    ry, rgx, rgw, _ = reference(layer, x, gy)
    torch.testing.assert_close(y, ry)
    torch.testing.assert_close(x.grad, rgx)
    torch.testing.assert_close(layer.values.grad, rgw)


def test_storage_is_the_flattened_kernel_matrix():
    gen = torch.Generator().manual_seed(3)
    layer = SparseConv2d(4, 6, (3, 2), density=0.25, generator=gen, bias=False)
    assert (layer.out_features, layer.in_features) == (6, 4 * 3 * 2)
    assert layer.nnz == 6 * round(0.25 * 24)
    assert layer.to_dense().shape == (6, 4, 3, 2)
    rows, cols = layer.indices
    dense = torch.zeros(6, 24)
    dense[rows, cols] = layer.values.detach()
    assert torch.equal(layer.to_dense().reshape(6, -1), dense)
    assert isinstance(layer, SparseMatrixModule) and set(layer.state_dict()) == {"values", "crow", "col"}


def test_topology_change_moves_optimizer_state():
    gen = torch.Generator().manual_seed(4)
    layer = SparseConv2d(2, 3, 3, density=0.5, generator=gen)
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    layer(torch.randn(2, 2, 5, 5, generator=gen)).sum().backward()
    opt.step()
    before = dict(zip(layer.flat_positions().tolist(), opt.state[layer.values]["exp_avg"].tolist()))
    active = set(layer.flat_positions().tolist())
    free = [p for p in range(3 * 18) if p not in active][:2]
    add = torch.tensor([[p // 18 for p in free], [p % 18 for p in free]])
    layer.change_topology(torch.tensor([0, 4]), add, [opt])
    after = dict(zip(layer.flat_positions().tolist(), opt.state[layer.values]["exp_avg"].tolist()))
    removed = [sorted(active)[0], sorted(active)[4]]
    assert set(after) == (active - set(removed)) | set(free)
    assert all(after[p] == before[p] for p in active - set(removed)) and all(after[p] == 0 for p in free)
    y = layer(torch.randn(1, 2, 5, 5, generator=gen))
    assert y.shape == (1, 3, 3, 3)


@pytest.mark.parametrize("kwargs, words", [
    (dict(groups=2), "groups=2"),
    (dict(padding_mode="reflect"), "padding_mode='reflect'"),
    (dict(padding="same"), "padding='same'"),
    (dict(density=0.01), "zero inputs"),
])
def test_bad_input_names_the_layer_and_fix(kwargs, words):
    kwargs = {"density": 0.5, **kwargs}
    with pytest.raises(UsageError, match="conv1") as info:
        SparseConv2d(4, 4, 3, name="conv1", **kwargs)
    assert words in str(info.value)


class SmallCNN(nn.Module):
    def __init__(self, channels=(1, 4, 6), classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(channels[0], channels[1], 3, padding=1)
        self.conv2 = nn.Conv2d(channels[1], channels[2], 3, stride=2)
        self.fc = nn.Linear(channels[2] * 3 * 3, classes)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(x.flatten(1))


def test_sparsify_converts_linear_and_conv_with_erk_kernel(caplog):
    model = SmallCNN()
    with caplog.at_level("INFO", logger="redr.sparsify"):
        redr.sparsify(model, density=0.3, distribution="erk", keep_dense=["conv1"], generator=torch.Generator().manual_seed(0))
    assert isinstance(model.conv1, nn.Conv2d) and isinstance(model.conv2, SparseConv2d) and isinstance(model.fc, SparseLinear)
    assert "conv2: SparseConv2d" in caplog.text and "conv1: Conv2d kept dense" in caplog.text
    # ERK with the kernel counted (RigL): eps * (out + in + kh + kw) / (out * in * kh * kw), same eps for both layers
    scale = {"conv2": (6 + 4 + 3 + 3) / (6 * 4 * 9), "fc": (3 + 54) / (3 * 54)}
    total = 6 * 36 + 3 * 54
    assert abs(model.conv2.nnz + model.fc.nnz - 0.3 * total) <= 6 + 3
    ratio = (model.conv2.density / scale["conv2"]) / (model.fc.density / scale["fc"])
    assert 0.8 < ratio < 1.25
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_sparsify_refuses_what_it_cannot_convert():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.ConvTranspose2d(4, 2, 3))
    with pytest.raises(UsageError, match=r"layer '0' has groups=2.*keep_dense=\['0'\]"):
        redr.sparsify(model, density=0.5)
    with pytest.raises(UsageError, match=r"layer '1' is a transposed convolution"):
        redr.sparsify(model, density=0.5, keep_dense=["0"])
    redr.sparsify(model, density=0.5, keep_dense=["0", "1"])  # both kept dense: nothing to refuse


def test_copy_weights_takes_the_dense_kernel_at_the_drawn_positions():
    model = SmallCNN()
    dense = model.conv2.weight.detach().clone()
    redr.sparsify(model, density=0.5, copy_weights=True, generator=torch.Generator().manual_seed(1))
    rows, cols = model.conv2.indices
    assert torch.equal(model.conv2.values.detach(), dense.reshape(6, -1)[rows, cols])


def test_export_dense_state_dict_loads_into_the_dense_cnn():
    gen = torch.Generator().manual_seed(5)
    sparse = redr.sparsify(SmallCNN(), density=0.4, generator=gen)
    exported = redr.export_dense_state_dict(sparse)
    dense = SmallCNN()
    dense.load_state_dict(exported)
    x = torch.randn(3, 1, 8, 8, generator=gen)
    torch.testing.assert_close(dense(x), sparse(x), rtol=1e-5, atol=1e-6)


def test_state_dict_loads_into_a_freshly_sparsified_model(tmp_path):
    trained = redr.sparsify(SmallCNN(), density=0.3, generator=torch.Generator().manual_seed(6))
    trained.conv2.change_topology(torch.tensor([0, 1, 2]), torch.zeros(2, 0, dtype=torch.long))  # another nnz
    torch.save(trained.state_dict(), tmp_path / "cnn.pt")
    fresh = redr.sparsify(SmallCNN(), density=0.3, generator=torch.Generator().manual_seed(7))
    fresh.load_state_dict(torch.load(tmp_path / "cnn.pt"))
    assert fresh.conv2.nnz == trained.conv2.nnz
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(fresh(x), trained(x))


def test_checkpoint_of_another_architecture_is_refused():
    trained = redr.sparsify(SmallCNN(), density=0.3)
    other = redr.sparsify(SmallCNN(channels=(1, 4, 5)), density=0.3)
    with pytest.raises(ValueError, match="conv2: the saved layer has 6 output rows.*another architecture"):
        other.load_state_dict(trained.state_dict())


def test_bench_layer_times_conv_shapes(tmp_path, capsys):
    import json

    from redr.cli import main

    out = tmp_path / "layer.jsonl"
    assert main(["bench", "layer", "--quick", "--shapes", "16x8", "--conv-shapes", "4x6x3x6", "--densities", "0.5",
                 "--batches", "4", "--repeats", "1", "--warmup", "0", "--json", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    conv = [r for r in records if r["kind"] == "conv-time"]
    assert len(conv) == 1 and conv[0]["config"]["conv"] == "4x6x3x6" and conv[0]["results"]["conv2d_ms"] > 0
    assert conv[0]["ratios"]["torch"] == pytest.approx(conv[0]["results"]["conv2d_ms"] / conv[0]["results"]["torch_ms"], rel=1e-2)
    assert "nn.Conv2d ms / sparse ms" in capsys.readouterr().out
