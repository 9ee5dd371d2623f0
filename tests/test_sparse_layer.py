"""SparseLinear against dense float64 math, topology init invariants, topology changes."""
import math

import pytest
import torch

from redr.sparse import SparseLinear, TopologyError
from redr.sparse.convert import build_mlp, count_weights, parameter_equivalent_sizes, sparsify
from redr.sparse.distribution import fan_in_for_density
from redr.sparse.kernels import HAVE_NUMBA
from redr.sparse.validate import CorruptSparseStateError

from conftest import cuda

BACKENDS = ["torch", "dense"] + (["numba"] if HAVE_NUMBA else [])


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def random_layer(in_f, out_f, density, backend, seed=0, empty_rows=(), empty_cols=()):
    g = torch.Generator().manual_seed(seed)
    layer = SparseLinear(in_f, out_f, density, generator=g, backend=backend)
    with torch.no_grad():
        layer.values.normal_(generator=g)
        layer.bias.normal_(generator=g)
    rows, cols = layer.indices
    drop = torch.zeros(layer.nnz, dtype=torch.bool)
    for r in empty_rows:
        drop |= rows == r
    for c in empty_cols:
        drop |= cols == c
    if drop.any():
        layer.change_topology(drop.nonzero().squeeze(1), torch.empty(2, 0, dtype=torch.long))
        with torch.no_grad():
            layer.values.normal_(generator=g)
    return layer


CASES = [  # in, out, density, batch, empty rows, empty cols
    (37, 23, 0.2, 5, (), ()),
    (64, 48, 0.1, 1, (), ()),
    (300, 200, 0.06, 17, (0, 5, 199), (1, 2, 299)),
    (128, 300, 0.03, 64, (7,), ()),
    (50, 3, 1.0, 9, (), (49,)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("in_f,out_f,density,batch,empty_rows,empty_cols", CASES)
def test_forward_and_gradients_match_dense_float64(backend, in_f, out_f, density, batch, empty_rows, empty_cols):
    layer = random_layer(in_f, out_f, density, backend, empty_rows=empty_rows, empty_cols=empty_cols)
    x = torch.randn(batch, in_f, requires_grad=True)
    gy = torch.randn(batch, out_f)
    y = layer(x)
    y.backward(gy)

    W = layer.to_dense().double()
    for r in empty_rows:
        assert W[r].abs().sum() == 0
    xd = x.detach().double()
    y_ref = xd @ W.T + layer.bias.detach().double()
    gx_ref = gy.double() @ W
    gW_ref = gy.double().T @ xd
    rows, cols = layer.indices
    assert y.shape == (batch, out_f)
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(x.grad, gx_ref) < 1e-5
    assert rel_err(layer.values.grad, gW_ref[rows, cols]) < 1e-5
    assert rel_err(layer.bias.grad, gy.double().sum(0)) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_extra_leading_dims_and_no_bias(backend):
    layer = SparseLinear(20, 7, 0.3, bias=False, backend=backend)
    x = torch.randn(2, 3, 20)
    y = layer(x)
    assert y.shape == (2, 3, 7)
    assert rel_err(y, x.double() @ layer.to_dense().double().T) < 1e-5


def test_layers_chain_in_feature_major_layout():
    """A second sparse layer consumes the first one's transposed output without a copy and stays exact."""
    torch.manual_seed(1)
    net = build_mlp([64, 96, 80, 5], 0.2, backend="numba" if HAVE_NUMBA else "torch")
    x = torch.randn(33, 64, requires_grad=True)
    y = net(x)
    y.square().sum().backward()
    Ws = [m.to_dense().double() for m in net if isinstance(m, SparseLinear)]
    bs = [m.bias.detach().double() for m in net if isinstance(m, SparseLinear)]
    xd = x.detach().double().requires_grad_()
    h = torch.relu(xd @ Ws[0].T + bs[0])
    h = torch.relu(h @ Ws[1].T + bs[1])
    ref = h @ Ws[2].T + bs[2]
    ref.square().sum().backward()
    assert rel_err(y, ref) < 1e-5
    assert rel_err(x.grad, xd.grad) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_gradient_in_either_input_layout(backend):
    """A batch-major input gets a batch-major (contiguous) gradient from the kernel; a feature-major view stays exact."""
    layer = random_layer(70, 40, 0.15, backend)
    gy = torch.randn(9, 40)
    x = torch.randn(9, 70, requires_grad=True)
    layer(x).backward(gy)
    xT = torch.randn(70, 9, requires_grad=True)  # the layout activations have between sparse layers
    layer(xT.t()).backward(gy)
    W = layer.to_dense().double()
    assert x.grad.is_contiguous()
    assert rel_err(x.grad, gy.double() @ W) < 1e-5
    assert rel_err(xT.grad, (gy.double() @ W).T) < 1e-5


def test_float64_layer_matches():
    layer = SparseLinear(40, 30, 0.2, dtype=torch.float64, backend="torch")
    x = torch.randn(4, 40, dtype=torch.float64)
    assert rel_err(layer(x), x @ layer.to_dense().T + layer.bias) < 1e-12


# ---------------------------------------------------------------- topology init
@pytest.mark.parametrize("in_f,out_f,density", [(784, 256, 0.1), (256, 256, 0.06), (21, 256, 0.1), (10, 4, 0.03), (7, 3, 1.0)])
def test_topology_init_invariants(in_f, out_f, density):
    layer = SparseLinear(in_f, out_f, density, generator=torch.Generator().manual_seed(3))
    n = fan_in_for_density(in_f, density)
    rows, cols = layer.indices
    assert layer.nnz == n * out_f
    assert torch.equal(torch.bincount(rows, minlength=out_f), torch.full((out_f,), n))
    keys = rows * in_f + cols
    assert torch.unique(keys).numel() == keys.numel()
    assert bool((keys[1:] > keys[:-1]).all()), "values must be stored row-major"
    bounds = torch.arange(n + 1) * in_f // n
    part = torch.bucketize(cols, bounds[1:], right=True).view(out_f, n)
    assert torch.equal(part, torch.arange(n).expand(out_f, n)), "exactly one active input per partition"
    assert layer.values.abs().max() <= 1.0 / n
    assert layer.bias.abs().max() <= 1.0 / math.sqrt(n)
    assert layer.values.abs().max() > 0.5 / n  # the full range is used, not a degenerate init


def test_topology_init_is_seeded_and_uniform_within_partitions():
    a = SparseLinear(100, 50, 0.1, generator=torch.Generator().manual_seed(7))
    b = SparseLinear(100, 50, 0.1, generator=torch.Generator().manual_seed(7))
    c = SparseLinear(100, 50, 0.1, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)
    assert not torch.equal(a.indices, c.indices)
    big = SparseLinear(100, 20000, 0.1, generator=torch.Generator().manual_seed(0))
    offset = big.indices[1] % 10  # 10 partitions of width 10: the offset inside each is uniform on 0..9
    freq = torch.bincount(offset, minlength=10).double() / offset.numel()
    assert (freq - 0.1).abs().max() < 0.01


def test_density_validation():
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="density"):
            SparseLinear(10, 10, bad)
    with pytest.raises(ValueError, match="backend"):
        SparseLinear(10, 10, 0.5, backend="cusparse")


# ---------------------------------------------------------------- topology change
def adam_layer(seed=0):
    torch.manual_seed(seed)
    layer = SparseLinear(30, 20, 0.2, generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(8, 30)).square().mean().backward()
        opt.step()
    return layer, opt


def inactive_positions(layer, k, seed=0):
    dense = layer.to_dense() != 0
    free = (~dense).nonzero()
    pick = torch.randperm(free.shape[0], generator=torch.Generator().manual_seed(seed))[:k]
    return free[pick].T.contiguous()


def test_topology_change_keeps_values_and_moments_zeroes_new():
    layer, opt = adam_layer()
    old_idx, old_vals = layer.indices.clone(), layer.values.detach().clone()
    old_state = {k: v.clone() for k, v in opt.state[layer.values].items()}
    remove = torch.tensor([0, 5, 17, layer.nnz - 1])
    add = inactive_positions(layer, 7)
    change = layer.change_topology(remove, add, optimizers=[opt])
    assert layer.nnz == old_vals.numel() - 4 + 7 == change.new_nnz
    new_idx = layer.indices
    keys = new_idx[0] * 30 + new_idx[1]
    assert bool((keys[1:] > keys[:-1]).all())
    kept = torch.ones(old_vals.numel(), dtype=torch.bool)
    kept[remove] = False
    pos = {tuple(p): i for i, p in enumerate(new_idx.T.tolist())}
    for i in kept.nonzero().squeeze(1).tolist():
        j = pos[tuple(old_idx[:, i].tolist())]
        assert layer.values[j] == old_vals[i]
        for key in ("exp_avg", "exp_avg_sq"):
            assert opt.state[layer.values][key][j] == old_state[key][i]
    for r, c in add.T.tolist():
        j = pos[(r, c)]
        assert layer.values[j] == 0
        for key in ("exp_avg", "exp_avg_sq"):
            assert opt.state[layer.values][key][j] == 0
    for i in remove.tolist():
        assert tuple(old_idx[:, i].tolist()) not in pos
    assert torch.equal(opt.state[layer.values]["step"], old_state["step"])


def test_adam_trains_correctly_after_topology_change():
    """After a change, Adam on the sparse layer equals Adam on an independent dense float64 reference."""
    layer, opt = adam_layer(seed=2)
    old_idx = layer.indices.clone()
    old_state = {k: v.clone() for k, v in opt.state[layer.values].items()}
    old_vals = layer.values.detach().clone()
    remove = torch.arange(0, layer.nnz, 3)
    add = inactive_positions(layer, 11, seed=4)
    layer.change_topology(remove, add, optimizers=[opt])

    # reference: dense matrices, moments placed by position, masked Adam by hand in float64
    def to_dense(vals, idx):
        d = torch.zeros(20, 30, dtype=torch.float64)
        d[idx[0], idx[1]] = vals.double()
        return d
    keep = torch.ones(old_vals.numel(), dtype=torch.bool)
    keep[remove] = False
    W = to_dense(old_vals[keep], old_idx[:, keep])
    m = to_dense(old_state["exp_avg"][keep], old_idx[:, keep])
    v = to_dense(old_state["exp_avg_sq"][keep], old_idx[:, keep])
    mask = to_dense(torch.ones(layer.nnz), layer.indices) != 0
    b = layer.bias.detach().double().clone()
    mb = opt.state[layer.bias]["exp_avg"].double().clone()
    vb = opt.state[layer.bias]["exp_avg_sq"].double().clone()
    step = int(old_state["step"])
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
    for _ in range(4):
        x = torch.randn(8, 30)
        opt.zero_grad()
        layer(x).square().mean().backward()
        opt.step()
        Wr = W.clone().requires_grad_()
        br = b.clone().requires_grad_()
        (x.double() @ Wr.T + br).square().mean().backward()
        step += 1
        for p, g, mm, vv in ((W, Wr.grad * mask, m, v), (b, br.grad, mb, vb)):
            mm.mul_(b1).add_(g, alpha=1 - b1)
            vv.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (vv / (1 - b2**step)).sqrt() + eps
            p.sub_(lr / (1 - b1**step) * mm / denom)
    assert rel_err(layer.to_dense(), W) < 1e-5
    assert rel_err(layer.bias, b) < 1e-5
    assert layer.to_dense()[~mask].abs().sum() == 0


def test_topology_change_can_move_nnz_and_empty_a_row():
    layer = SparseLinear(10, 4, 0.5)
    rows = layer.indices[0]
    change = layer.change_topology((rows == 2).nonzero().squeeze(1), torch.empty(2, 0, dtype=torch.long))
    assert layer.nnz == 15 and change.new_nnz == 15
    assert layer.to_dense()[2].abs().sum() == 0
    layer(torch.randn(3, 10)).sum().backward()  # a neuron with no inputs still works
    layer.change_topology(torch.empty(0, dtype=torch.long), torch.tensor([[2, 2], [0, 9]]))
    assert layer.nnz == 17


@pytest.mark.parametrize("remove,add,match", [
    ([0, 0], [[], []], "duplicates"),
    ([-1], [[], []], "out of range"),
    ([10_000], [[], []], "out of range"),
    ([], [[0], [30]], "out of range"),
    ([], [[20], [0]], "out of range"),
    ("active", None, "already active"),
    ("removed", None, "already active"),
    ("dup", None, "duplicates"),
])
def test_topology_change_rejects_bad_requests(remove, add, match):
    layer, opt = adam_layer()
    before = (layer.indices.clone(), layer.values.detach().clone())
    rows, cols = layer.indices
    if remove == "active":
        remove, add = [], [[rows[3].item()], [cols[3].item()]]
    elif remove == "removed":  # a weight removed now cannot regrow in the same step
        remove, add = [3], [[rows[3].item()], [cols[3].item()]]
    elif remove == "dup":
        free = inactive_positions(layer, 1)
        remove, add = [], torch.cat([free, free], 1)
    with pytest.raises(TopologyError, match=match):
        layer.change_topology(torch.tensor(remove, dtype=torch.long), torch.as_tensor(add, dtype=torch.long).reshape(2, -1), [opt])
    assert torch.equal(layer.indices, before[0]) and torch.equal(layer.values, before[1]), "a rejected change alters nothing"


def test_state_dict_roundtrip_with_other_nnz():
    a = SparseLinear(30, 20, 0.2, generator=torch.Generator().manual_seed(0))
    a.change_topology(torch.arange(10), inactive_positions(a, 3))
    b = SparseLinear(30, 20, 0.2, generator=torch.Generator().manual_seed(1))
    assert "crow_t" not in a.state_dict()
    b.load_state_dict(a.state_dict())
    assert b.nnz == a.nnz and torch.equal(b.indices, a.indices)
    x = torch.randn(5, 30)
    assert torch.allclose(a(x), b(x))


def test_load_rejects_corrupt_structure():
    a = SparseLinear(30, 20, 0.2)
    sd = a.state_dict()
    sd["col"] = sd["col"].clone()
    sd["col"][1] = sd["col"][0]
    with pytest.raises(CorruptSparseStateError, match="duplicated"):
        SparseLinear(30, 20, 0.2).load_state_dict(sd)
    sd = a.state_dict()
    sd["col"] = sd["col"].clone()
    sd["col"][0] = 99
    with pytest.raises(CorruptSparseStateError, match="out of range"):
        SparseLinear(30, 20, 0.2).load_state_dict(sd)


# ---------------------------------------------------------------- conversion, builders
def test_sparsify_keeps_named_layers_dense_and_copies_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    dense_w = model[0].weight.detach().clone()
    sparsify(model, 0.25, keep_dense=["2"], copy_weights=True)
    assert isinstance(model[0], SparseLinear) and isinstance(model[2], torch.nn.Linear)
    rows, cols = model[0].indices
    assert torch.equal(model[0].values.detach(), dense_w[rows, cols])
    with pytest.raises(ValueError, match="keep_dense"):
        sparsify(torch.nn.Sequential(torch.nn.Linear(3, 3)), 0.5, keep_dense=["nope"])


def test_parameter_equivalent_widths_are_the_papers():
    kmnist = build_mlp([784, 256, 256, 10], 0.1)
    higgs = build_mlp([21, 256, 256, 256, 1], 0.1, dense_last=True)
    assert parameter_equivalent_sizes([784, 256, 256, 10], count_weights(kmnist)) == [784, 33, 33, 10]
    assert parameter_equivalent_sizes([21, 256, 256, 256, 1], count_weights(higgs)) == [21, 79, 79, 79, 1]
    assert isinstance(higgs[-1], torch.nn.Linear)


@cuda
def test_cuda_matches_cpu():
    layer = random_layer(300, 200, 0.1, "torch")
    x = torch.randn(16, 300)
    gy = torch.randn(16, 200)
    y = layer(x.requires_grad_())
    y.backward(gy)
    gpu = random_layer(300, 200, 0.1, "auto").cuda()
    assert gpu.resolved_backend() == "torch"
    xg = x.detach().cuda().requires_grad_()
    yg = gpu(xg)
    yg.backward(gy.cuda())
    assert rel_err(yg.cpu(), y) < 1e-5
    assert rel_err(xg.grad.cpu(), x.grad) < 1e-5
    assert rel_err(gpu.values.grad.cpu(), layer.values.grad) < 1e-5
    change = gpu.change_topology(torch.tensor([0, 1]), inactive_positions(layer, 2).cuda())
    assert change.new_nnz == layer.nnz


@pytest.mark.parametrize("backend", ["dense", "numba"])
def test_a_graph_alive_across_a_topology_change_does_not_break_the_next_backward(backend):
    """A graph built before the change and still referenced (a variable, a reference cycle not yet collected)
    kept autograd's gradient accumulator of the old ``values`` alive: the next backward then failed with
    "invalid gradient ... expected shape compatible with [old nnz]" (seen in a 2-process run)."""
    torch.manual_seed(0)
    layer = SparseLinear(64, 10, 0.1, backend=backend, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(layer.parameters())
    x = torch.randn(4, 64)
    old_loss = layer(x).sum()
    old_loss.backward()
    opt.step()
    dense = layer.to_dense()
    free = (dense == 0).nonzero()[:30].T  # 30 inactive positions, row-major
    layer.change_topology(torch.arange(10), free, [opt])
    assert layer.nnz == 80 and old_loss.grad_fn is not None  # the old graph is still referenced
    layer(x).sum().backward()
    assert layer.values.grad.shape == (80,)
    expected = x.double().sum(0)[layer.indices[1]]  # d(sum of outputs)/dw_ij = sum_n x_nj
    assert torch.allclose(layer.values.grad.double(), expected, atol=1e-5)
    assert opt.param_groups[0]["params"][0] is layer.values and layer.values in opt.state
