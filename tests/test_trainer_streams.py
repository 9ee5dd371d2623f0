"""The trainer's random streams and schedule, checked from the outside.

* Data order: the trainer documents one generator per purpose, so that the training batches are the same
  whatever the algorithm (gradient-based growth draws its batches from its own stream). Recorded here
  through public hooks: a forward pre-hook on the first layer keeps the last input, an optimizer step
  pre-hook records a checksum of it at every step (the last forward before a step is that step's batch;
  evaluation and the redistribution's extra pass never step the optimizer).
* metrics.csv: the alpha column equals the paper's cosine schedule ``alpha0 / 2 * (1 + cos(pi * e /
  (end_fraction * epochs)))`` after epochs ``e`` that redistribute (every ``every``-th, before the end),
  0 elsewhere, computed here from the formula.
"""
import csv
import math

import pytest
import torch

import redr
from redr.training.config import RunConfig
from redr.training.trainer import Trainer


def config(**options):
    base = dict(preset="synthetic", epochs=3, seed=5, device="cpu", train_rows=512, test_rows=128)
    return RunConfig.from_options(**{**base, **options})


def training_batches(cfg) -> list:
    trainer = Trainer(cfg, None, progress=False, log=lambda *_: None)
    first = next(m for m in trainer.model.modules() if isinstance(m, (redr.SparseLinear, torch.nn.Linear)))
    last_input, seen = [], []
    first.register_forward_pre_hook(lambda module, args: last_input.append(args[0].detach().clone()))

    def record(optimizer, args, kwargs):
        x = last_input[-1]
        weights = torch.arange(1, x.numel() + 1, dtype=torch.float64).view_as(x)
        seen.append((tuple(x.shape), float((x.double() * weights).sum())))  # position-sensitive checksum
        last_input.clear()

    trainer.optimizer.register_step_pre_hook(record)
    trainer.run()
    return seen


@pytest.fixture(scope="module")
def static_order():
    order = training_batches(config(algorithm="none"))
    assert len(order) == 3 * (512 // 64)
    assert len(set(order)) == len(order)  # the checksum tells batches apart
    return order


@pytest.mark.parametrize("options", [
    dict(algorithm="random"), dict(algorithm="gradient"), dict(algorithm="gradient", redistribution_batches=3),
    dict(algorithm="gradient-global"), dict(algorithm="loss"), dict(algorithm="woodfisher"),
    dict(model="dense-neuron", algorithm="none"),
], ids=lambda o: "-".join(map(str, o.values())))
def test_training_data_order_is_the_same_for_every_algorithm(static_order, options):
    assert training_batches(config(**options)) == static_order


def schedule_alpha(epoch, epochs, every, alpha0, end_fraction):
    """The paper's schedule, from its definition (section 3.1)."""
    end = end_fraction * epochs
    if epoch % every or epoch >= end:
        return 0.0
    return alpha0 / 2 * (1 + math.cos(math.pi * epoch / end))


@pytest.mark.parametrize("epochs, every, alpha0, end_fraction", [(4, 1, 0.4, 0.75), (5, 2, 0.3, 1.0), (3, 1, 0.5, 0.5)])
def test_metrics_alpha_column_follows_the_cosine_schedule(tmp_path, epochs, every, alpha0, end_fraction):
    cfg = config(algorithm="random", epochs=epochs, redistribute_every=every, alpha0=alpha0, end_fraction=end_fraction)
    redr.train(cfg, tmp_path, progress=False, log=lambda *_: None)
    with open(tmp_path / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
    expected = [schedule_alpha(e, epochs, every, alpha0, end_fraction) for e in range(1, epochs + 1)]
    assert any(a > 0 for a in expected) and any(a == 0 for a in expected)  # both kinds of epoch occur
    for row, want in zip(rows, expected):
        assert float(row["alpha"]) == pytest.approx(want, rel=1e-12, abs=0), row["epoch"]
        redistributed = not math.isnan(float(row["loss_before_redistribution"]))
        assert redistributed == (want > 0), row["epoch"]
