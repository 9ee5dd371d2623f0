"""The memory estimate (issue 15, item 4): exact persistent bytes, bounded activations, the refusal."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from redr.errors import UsageError
from redr.training.config import RunConfig
from redr.training.estimate import estimate_run
from redr.training.trainer import Trainer


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def trainer(**options):
    config = RunConfig.from_options(preset="synthetic", dataset="synthetic", epochs=4, train_rows=128, test_rows=32,
                                    **options)
    return Trainer(config, None, progress=False, log=lambda *_: None)


CONFIGS = [dict(density=0.2), dict(density=0.3, distribution="erk", dense_last=True), dict(fan_in=5, hidden=[40, 30]),
           dict(model="dense-neuron"), dict(model="dense-param", density=0.1), dict(algorithm="woodtaylor", density=0.2),
           dict(algorithm="gradient-global", density=0.2)]


@pytest.mark.parametrize("options", CONFIGS)
def test_persistent_gradient_and_optimizer_bytes_are_exact(options):
    t = trainer(**options)
    est = t.memory_estimate
    model = t.model
    assert est.persistent_bytes == tensor_bytes([*model.parameters(), *model.buffers()])
    assert est.part("values") == tensor_bytes(model.parameters())
    t.train_epoch(1)  # gradients and Adam state exist after a step
    assert est.part("gradients") == tensor_bytes(p.grad for p in model.parameters())
    assert est.part("optimizer") == tensor_bytes(v for s in t.optimizer.state.values() for v in s.values()
                                                 if torch.is_tensor(v))
    if options.get("algorithm") == "woodtaylor":
        assert est.part("fisher blocks") == t.redistributor.algorithm.fisher.nbytes


def test_activations_bound_what_autograd_saves():
    t = trainer(density=0.2, hidden=[50, 40, 30], batch_size=32)
    saved = []

    def pack(x):
        saved.append(x.numel() * x.element_size() if torch.is_tensor(x) else 0)
        return x

    x = t.data.train_x[:32]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss = t.loss_fn(t.model(x), t.data.train_y[:32])
    loss.backward()
    bound = t.memory_estimate.part("activations")
    assert 0 < sum(saved) <= bound <= 16 * sum(saved), (sum(saved), bound)


def test_algorithm_parts_follow_the_options():
    def parts(algorithm="random", **options):
        config = RunConfig.from_options(dataset="fashion-mnist", algorithm=algorithm, algorithm_options=options)
        return {p.name: p.bytes for p in estimate_run(config, 784, 10).parts}

    assert "gradient pass" not in parts() and "topology change" in parts()
    assert "topology change" not in parts("none")
    exact = parts("gradient", growth="exact")
    sampled = parts("gradient", growth="sampled")
    assert "gradient tiles" in exact and "candidates" not in exact and "candidates" in sampled
    assert parts("gradient", growth="sampled", candidates=16)["candidates"] == 2 * sampled["candidates"]
    small = parts("woodfisher", block_size=8)["fisher blocks"]
    ratio = (33 / 2 + 8) / (9 / 2 + 8)  # (B + 1) / 2 + 8 numbers per weight (up to the padding of last blocks)
    assert parts("woodfisher", block_size=32)["fisher blocks"] == pytest.approx(small * ratio, rel=0.02)


def test_refusal_names_the_biggest_part_and_the_fix():
    config = RunConfig.from_options(dataset="fashion-mnist", algorithm="woodfisher", hidden=[20000, 20000], density=0.5)
    est = estimate_run(config, 784, 10)
    assert est.biggest().name == "fisher blocks"
    with pytest.raises(UsageError, match=r"needs about .* GiB but 10.0 GiB are available; the biggest part is fisher "
                                          r"blocks .*--block-size"):
        est.check(10 * 2**30)
    est.check(est.total_bytes)  # fits exactly: no error
    est.check(None)  # unknown: no refusal


def test_redr_train_refuses_a_net_too_large_and_writes_nothing(tmp_path, shared_data_dir):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "redr", "train", "--dataset", "fashion-mnist", "--hidden", "100000",
                        "100000", "--density", "0.5", "--data-dir", str(shared_data_dir), "--no-download", "--out",
                        str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()
    assert len(line) == 1 and "needs about" in line[0] and "the biggest part is" in line[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_the_estimate_is_among_the_start_lines():
    lines = []
    config = RunConfig.from_options(preset="synthetic", dataset="synthetic", epochs=1, train_rows=64, test_rows=16)
    Trainer(config, None, progress=False, log=lines.append).run()
    assert lines[1].startswith("memory estimate: ") and "values" in lines[1] and "indices" in lines[1]
