"""Tests for the readings of the paper listed in docs/deviations.md that no other test pins down.

Each test names the row of that table it checks. The expected values are computed here from the rule as
the table states it, not by calling the code that implements it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from redr.training.config import RunConfig
from redr.training.trainer import Trainer


def _trainer(**options) -> Trainer:
    base = dict(preset="synthetic", device="cpu", train_rows=256, test_rows=64, batch_size=64)
    return Trainer(RunConfig.from_options(**{**base, **options}), progress=False, log=lambda *_: None)


def test_fisher_window_spans_every_step_since_the_last_redistribution_when_t_is_above_1():
    """Row 'Fisher window when t > 1': with t = 2 the Fisher holds the gradients of both epochs."""
    t = _trainer(algorithm="woodfisher", epochs=4, redistribute_every=2)
    t.run()
    steps_per_epoch = math.ceil(256 / 64)
    reports = t.redistributor.history
    assert [r.epoch for r in reports] == [2]  # the schedule: every 2nd epoch, none from 0.75 * 4 = 3 on
    assert reports[0].info["fisher_steps"] == 2 * steps_per_epoch


def test_induced_loss_is_the_mean_loss_on_the_first_training_rows_without_augmentation():
    """Row 'induced loss on 4,096 training rows': the loss right before and after the step, on the first
    ``induced_loss_rows`` rows of the training set, as stored (no augmentation), in evaluation."""
    t = _trainer(algorithm="random", epochs=2, induced_loss_rows=100)
    measured = {}
    step = t.redistributor.step

    def loss_on_first_rows() -> float:
        x, y = t.data.train_x[:100], t.data.train_y[:100]
        with torch.no_grad():
            return float(F.cross_entropy(t.model(x).double(), y))

    def recording_step(epoch, batches=None):
        measured["before"] = loss_on_first_rows()
        report = step(epoch, batches)
        measured["after"] = loss_on_first_rows()
        return report

    t.redistributor.step = recording_step
    rows = t.run()
    assert abs(rows[0]["loss_before_redistribution"] - measured["before"]) < 1e-5
    assert abs(rows[0]["loss_after_redistribution"] - measured["after"]) < 1e-5
    assert measured["before"] != measured["after"]  # the step changed the network


def test_gradient_growth_gets_one_unaugmented_training_batch_by_default():
    """Row 'the redistribution batch': one minibatch of stored training rows (never augmented)."""
    t = _trainer(algorithm="gradient", epochs=2)
    batches = t.redistribution_batches()
    assert len(batches) == 1
    x, y = batches[0]
    assert x.shape[0] == 64
    rows = {tuple(r.tolist()) for r in t.data.train_x}
    assert all(tuple(r.tolist()) in rows for r in x)  # every row is a stored training row, unchanged


def test_density_rounding_gives_higgs_first_layer_one_of_21_inputs_at_d003():
    """Row 'density rounding': round(0.03 x 21) = 1 input per neuron (4.8% instead of 3%) and round(0.03 x 256)
    = 8 (3.1%), so the sparse layers of the HIGGS net at d=0.03 hold 6.3% more weights than 3% of their
    positions, and the whole net (its dense output layer included) 12% more than 3% of all its positions."""
    from redr.sparse.convert import build_mlp, count_weights

    sizes = [21, 256, 256, 256, 1]
    net = build_mlp(sizes, 0.03, dense_last=True, generator=torch.Generator().manual_seed(0))
    first = net[0]
    assert first.nnz == 256 * 1
    sparse_positions = 21 * 256 + 256 * 256 * 2
    expected_sparse = 256 * round(0.03 * 21) + 2 * 256 * round(0.03 * 256)
    assert count_weights(net) == expected_sparse + 256  # + the dense last layer
    assert round(expected_sparse / (0.03 * sparse_positions), 3) == 1.063
    assert round((expected_sparse + 256) / (0.03 * (sparse_positions + 256)), 3) == 1.124
