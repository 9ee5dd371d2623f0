"""--validation-rows: rows carved from the training split, never trained on, reported as val_acc beside test_acc."""
import pytest
import torch

from redr.data.synthetic import make_synthetic
from redr.data.validation import hold_out
from redr.errors import UsageError
from redr.training.config import RunConfig
from redr.training.trainer import Trainer


def test_hold_out_moves_rows_out_of_training_and_keeps_every_row_once():
    data = make_synthetic(200, 50)
    split = hold_out(data, 30)
    assert split.train_x.shape[0] == 170 and split.val_x.shape[0] == 30
    every = torch.cat([split.train_x, split.val_x])
    # each original training row appears exactly once (brute force over rows)
    original = {tuple(row.tolist()) for row in data.train_x}
    assert {tuple(row.tolist()) for row in every} == original and len(original) == 200
    assert torch.equal(split.test_x, data.test_x)
    assert split.info["validation"]["rows"] == 30


def test_the_held_out_rows_do_not_depend_on_the_run():
    a, b = hold_out(make_synthetic(200, 50), 20), hold_out(make_synthetic(200, 50), 20)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.val_y, b.val_y)


def test_trainer_reports_val_acc_beside_test_acc():
    config = RunConfig.from_options(preset="synthetic", epochs=1, validation_rows=256, seed=0)
    trainer = Trainer(config, progress=False, log=lambda *_: None)
    assert trainer.data.train_x.shape[0] == 2048 - 256
    rows = trainer.run()
    assert 0 <= rows[-1]["val_acc"] <= 1 and "test_acc" in rows[-1]
    plain = Trainer(RunConfig.from_options(preset="synthetic", epochs=1, seed=0), progress=False, log=lambda *_: None)
    assert "val_acc" not in plain.run()[-1]  # without the option the metrics keep their columns


@pytest.mark.parametrize("rows,match", [
    (0, r"^--validation-rows must be a whole number >= 1, got 0$"),
    (2048, r"^--validation-rows 2048 must leave training rows: use 1 to 2047"),
])
def test_bad_validation_rows(rows, match):
    with pytest.raises(UsageError, match=match):
        Trainer(RunConfig.from_options(preset="synthetic", epochs=1, validation_rows=rows), progress=False,
                log=lambda *_: None)
