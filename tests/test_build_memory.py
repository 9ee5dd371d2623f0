"""Building a sparse layer in row chunks (issue 15, item 4: building needs at most ~1.5x the model's own size).

The reference is the construction before the chunks, written out here: the whole layer's topology drawn at
once as int64 ``(rows, cols)``, the values drawn at once with the bound gathered per entry, the CSR and its
transposed companion from int64 keys. The chunked builders must give the same layer bit for bit (same
numbers from the same generator stream), with chunks forced small so that they cut the layer many times.
The peak is measured as ``redr bench memory`` and ``benchmarks/build_peak.py`` do: VmHWM above the resident
set of a fresh process, glibc's mmap threshold fixed so that freed temporaries leave the resident set.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import redr
import redr.sparse.topology as topology
from redr.sparse import SparseLinear
from redr.sparse.conv import SparseConv2d
from redr.sparse.layout import CSRLayout

LINUX_PEAK = sys.platform.startswith("linux") and os.path.exists("/proc/self/clear_refs")


def whole_layer_topology(out_f, in_f, fan_in, g):
    """The partitioned topology as it was drawn before the chunks: one draw for the whole layer, int64."""
    bounds = torch.arange(fan_in + 1, dtype=torch.int64) * in_f // fan_in
    starts, widths = bounds[:-1], bounds[1:] - bounds[:-1]
    u = torch.rand(out_f, fan_in, generator=g, dtype=torch.float64)
    cols = starts + torch.clamp((u * widths).long(), max=widths - 1)
    return torch.arange(out_f).repeat_interleave(fan_in), cols.reshape(-1)


def whole_layer(out_f, in_f, rows, cols, g, init="paper", dtype=torch.float32):
    """(values, bias, layout) as built before the chunks: values drawn at once, layout from int64 keys."""
    k = torch.bincount(rows, minlength=out_f).double().clamp_min(1.0)
    b_bound = 1.0 / torch.sqrt(k)
    w_bound = (1.0 / k if init == "paper" else b_bound)[rows]
    values = (torch.rand(rows.numel(), generator=g, dtype=torch.float64) * (2 * w_bound) - w_bound).to(dtype)
    bias = (torch.rand(out_f, generator=g, dtype=torch.float64) * (2 * b_bound) - b_bound).to(dtype)
    return values, bias, CSRLayout.from_keys(rows * in_f + cols, (out_f, in_f))


def assert_same_layer(layer, values, bias, layout):
    assert torch.equal(layer.values.detach(), values) and torch.equal(layer.bias.detach(), bias)
    for name in ("crow", "col", "crow_t", "row_t", "perm_t"):
        assert torch.equal(getattr(layer, name), getattr(layout, name)), name
        assert getattr(layer, name).dtype == torch.int32, name


@pytest.fixture(params=[1, 5, 64, None], ids=["chunk1", "chunk5", "chunk64", "default"])
def chunk(request, monkeypatch):
    """Chunks of this many weights (``None``: the default), so that tiny layers are cut many times."""
    if request.param is not None:
        monkeypatch.setattr(topology, "BUILD_CHUNK_WEIGHTS", request.param)
    return request.param


@pytest.mark.parametrize("out_f,in_f,fan_in,init", [(37, 23, 3, "paper"), (9, 50, 50, "kaiming"), (64, 7, 1, "paper")])
def test_chunked_linear_layer_equals_the_whole_layer_build(chunk, out_f, in_f, fan_in, init):
    layer = SparseLinear(in_f, out_f, fan_in / in_f, generator=torch.Generator().manual_seed(3), init=init)
    g = torch.Generator().manual_seed(3)
    rows, cols = whole_layer_topology(out_f, in_f, fan_in, g)
    assert_same_layer(layer, *whole_layer(out_f, in_f, rows, cols, g, init))
    got_rows, got_cols = redr.sparse.partitioned_topology(out_f, in_f, fan_in, torch.Generator().manual_seed(3))
    assert torch.equal(got_rows, rows) and torch.equal(got_cols, cols) and got_cols.dtype == torch.int64


def test_chunked_mlp_and_sparsify_equal_the_whole_layer_build(chunk):
    sizes, fan_in = [30, 21, 17, 4], 4
    model = redr.build_mlp(sizes, fan_in=fan_in, generator=torch.Generator().manual_seed(8))
    g = torch.Generator().manual_seed(8)
    for layer, (a, b) in zip(model[::2], zip(sizes[:-1], sizes[1:])):
        rows, cols = whole_layer_topology(b, a, fan_in, g)
        assert_same_layer(layer, *whole_layer(b, a, rows, cols, g))
    dense = nn.Sequential(nn.Conv2d(3, 6, 3, dtype=torch.float64), nn.Flatten(), nn.Linear(24, 5, dtype=torch.float64))
    redr.sparsify(dense, fan_in=5, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    assert isinstance(dense[0], SparseConv2d)
    for layer, (out_f, in_f) in ((dense[0], (6, 27)), (dense[2], (5, 24))):
        rows, cols = whole_layer_topology(out_f, in_f, 5, g)
        assert_same_layer(layer, *whole_layer(out_f, in_f, rows, cols, g, dtype=torch.float64))


def test_a_given_topology_with_uneven_rows_is_built_as_before(chunk):
    rows = torch.tensor([0, 0, 0, 0, 2, 3, 3, 3, 3, 3, 3, 5])
    cols = torch.tensor([1, 2, 5, 9, 0, 0, 2, 3, 4, 7, 8, 9])
    layer = SparseLinear.from_topology(10, 6, rows, cols, generator=torch.Generator().manual_seed(5))
    assert_same_layer(layer, *whole_layer(6, 10, rows, cols, torch.Generator().manual_seed(5)))


def test_a_csr_topology_of_another_shape_is_refused():
    with pytest.raises(redr.sparse.TopologyError, match="needs crow of 5 entries"):
        SparseLinear(10, 4, topology=topology.CSRTopology(torch.tensor([0, 1, 2]), torch.tensor([0, 1])))


def test_a_chunk_holds_whole_rows_and_the_chunks_cover_the_layer():
    crow = torch.tensor([0, 3, 3, 10, 11, 11, 20], dtype=torch.int32)
    chunks = list(topology.row_chunks(crow, 4))
    assert chunks == [(0, 2, 0, 3), (2, 3, 3, 10), (3, 5, 10, 11), (5, 6, 11, 20)]


PEAK_WORKER = r"""
import gc, json, sys
import torch
import redr
from redr.training.memory import reset_peak_memory

def status(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key + ":"))

redr.build_mlp([64, 32], fan_in=4, generator=torch.Generator().manual_seed(1))  # numba code and kernels loaded
gc.collect()
base = status("VmRSS")
assert reset_peak_memory(torch.device("cpu"))
model = redr.build_mlp([4096, 4096], fan_in=256, generator=torch.Generator().manual_seed(0))
peak = status("VmHWM") - base
tensors = list(model.parameters()) + list(model.buffers())
print(json.dumps({"peak": peak, "persistent": sum(t.numel() * t.element_size() for t in tensors)}))
"""


@pytest.mark.skipif(not LINUX_PEAK, reason="the peak resident set is read from /proc (Linux)")
def test_building_a_layer_peaks_below_one_and_a_half_times_its_own_size():
    """A 4096x4096 layer at fan-in 256 (1M weights, 16 MiB): the whole-layer build peaked at ~2x."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(128 * 1024))
    out = subprocess.run([sys.executable, "-c", PEAK_WORKER], env=env, capture_output=True, text=True, check=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert measured["persistent"] == 4096 * 256 * 16 + (4097 * 2 + 4096) * 4  # values + col, row_t, perm_t; crows; bias
    assert measured["peak"] <= 1.5 * measured["persistent"], measured
