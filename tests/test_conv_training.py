"""Training CNNs: the README's own-CNN example, ``redr train --arch cnn`` and loading its checkpoint."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

import redr
from redr.cli import main
from redr.sparse import SparseConv2d

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_cnn_example_runs_with_few_added_lines(capsys):
    block = next(b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if "nn.Conv2d" in b)
    assert len([line for line in block.splitlines() if line.rstrip().endswith("# redr")]) <= 10
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    model = namespace["model"]
    assert isinstance(model[3], SparseConv2d) and isinstance(model[0], torch.nn.Conv2d)
    total = sum(layer.nnz for _, layer in redr.sparse_layers(model))
    assert capsys.readouterr().out.strip() == str(total)
    assert len(namespace["redistributor"].history) == 2  # epochs 1 and 2 of a 3-epoch schedule


def fashion_mnist_available() -> bool:
    root = Path(os.environ.get("REDR_DATA_DIR", "")) / "fashion-mnist"
    return (root / "train-images-idx3-ubyte.gz").exists()


@pytest.mark.skipif(not fashion_mnist_available(), reason="needs Fashion-MNIST in $REDR_DATA_DIR")
@pytest.mark.parametrize("model, algorithm", [("sparse", "gradient-global"), ("sparse", "loss"), ("dense-neuron", "none")])
def test_train_arch_cnn_and_load_its_checkpoint(tmp_path, capsys, model, algorithm):
    out = tmp_path / "run"
    args = ["train", "--dataset", "fashion-mnist", "--arch", "cnn", "--model", model, "--algorithm", algorithm,
            "--epochs", "2", "--train-rows", "128", "--test-rows", "64", "--batch-size", "64", "--no-download",
            "--no-progress", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    start = capsys.readouterr().out.splitlines()[0]  # the start line names the CNN, not an MLP's "784-10"
    assert start.startswith("fashion-mnist: cnn ") and "parameter-equivalent" not in start, start
    loaded, config = redr.load_checkpoint(out)
    assert config.arch == "cnn"
    convs = [m for m in loaded.modules() if isinstance(m, SparseConv2d)]
    assert len(convs) == (1 if model == "sparse" else 0)
    x = torch.rand(3, 784)
    assert loaded(x).shape == (3, 10)
    exported = redr.export_dense_state_dict(loaded)
    dense = redr.sparse.conv_net.build_cnn(784, 10, generator=torch.Generator().manual_seed(0))
    dense.load_state_dict(exported)
    torch.testing.assert_close(dense.eval()(x), loaded(x), rtol=1e-5, atol=1e-6)


def test_arch_cnn_refuses_non_image_data_and_dense_param(capsys):
    from redr.training.config import RunConfig
    from redr.training.model import build_model

    config = RunConfig.from_options(dataset="synthetic", arch="cnn", epochs=1)
    with pytest.raises(redr.errors.UsageError, match="--arch cnn needs square one-channel images"):
        build_model(config, 32, 4, torch.Generator(), "cpu")
    config = RunConfig.from_options(dataset="fashion-mnist", arch="cnn", model="dense-param", epochs=1)
    with pytest.raises(redr.errors.UsageError, match="dense-neuron"):
        build_model(config, 784, 10, torch.Generator(), "cpu")


def test_arch_cnn_on_fashion_mnist_starts_from_the_cnn_preset():
    from redr.training.config import RunConfig

    chosen = dict(arch="cnn", batch_size=128, lr=3e-3, epochs=15, augment=False, dense_last=False, init="kaiming")
    for options in (dict(dataset="fashion-mnist", arch="cnn"), dict(preset="fashion-mnist-cnn")):
        config = RunConfig.from_options(**options)
        assert config.preset == "fashion-mnist-cnn" and config.dataset == "fashion-mnist"
        assert {name: getattr(config, name) for name in chosen} == chosen
    # the MLP and an explicit --preset keep theirs; a dataset without a CNN preset keeps its own
    assert RunConfig.from_options(dataset="fashion-mnist").batch_size == 256
    assert RunConfig.from_options(dataset="fashion-mnist").arch == "mlp"
    explicit = RunConfig.from_options(dataset="fashion-mnist", arch="cnn", preset="fashion-mnist")
    assert (explicit.preset, explicit.batch_size, explicit.epochs) == ("fashion-mnist", 256, 20)
    assert RunConfig.from_options(dataset="kmnist", arch="cnn").preset == "kmnist"
    assert RunConfig.from_options(preset="fashion-mnist-cnn", model="dense-neuron").algorithm == "none"
