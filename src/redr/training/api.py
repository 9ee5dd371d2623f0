"""Train one configuration, or resume the run saved in its directory: the entry points of ``redr train``, the
experiment runner and the Python API (``redr.train``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

from redr.errors import UsageError
from redr.training import checkpoint
from redr.training.config import RunConfig
from redr.training.resume import check_resume_config, validate_checkpoint
from redr.training.rundir import METRICS_FILE, check_out_dir, saved_config, write_metrics
from redr.training.trainer import Trainer


def resume_from(trainer: Trainer, out: Path, log: Callable[[str], None] = print) -> None:
    """Load the newest usable checkpoint of ``out`` into ``trainer`` (see :mod:`redr.training.resume`).

    The requested config must equal the saved one (except :data:`~redr.training.resume.RESUMABLE_CHANGES`);
    a checkpoint that does not load, fails its checksum or its validation is skipped for the previous one
    (a :class:`~redr.training.checkpoint.CheckpointFallbackWarning`). A run killed before its first
    checkpoint starts again from epoch 1.
    """
    requested = trainer.config.to_dict()
    if not any((out / name).exists() for name in (checkpoint.CHECKPOINT, checkpoint.PREVIOUS)):
        changes = check_resume_config(saved_config(out), requested, out)
        log(f"resuming {out}: no checkpoint yet (stopped during its first epoch); starting again from epoch 1")
        if changes and trainer.is_writer:
            trainer.write_config()
        return
    changes: list[str] = []

    def validate(state: dict) -> None:
        if not isinstance(state.get("config"), dict):
            raise checkpoint.CheckpointError("the checkpoint holds no config")
        changes[:] = check_resume_config(state["config"], requested, out)
        validate_checkpoint(state, trainer)
        try:
            trainer.load_state_dict(state)
        except Exception as exc:  # whatever validation missed: still one line naming the problem
            raise checkpoint.CheckpointError(f"cannot be loaded into the run ({type(exc).__name__}: {exc})") from exc

    checkpoint.load(out, validate=validate, map_location=trainer.device)
    if changes:
        log(f"resuming with changed option(s): {'; '.join(changes)}")
    if trainer.is_writer:  # metrics.csv may lag the checkpoint by one epoch after a kill
        write_metrics(out / METRICS_FILE, trainer.metrics)
    if trainer.epoch >= trainer.config.epochs:
        log(f"{out}: the run is already complete ({trainer.epoch} epochs); nothing to train")
    else:
        log(f"resuming {out} after epoch {trainer.epoch}" + (f", step {trainer.step_in_epoch}" if trainer.step_in_epoch else ""))


def train(config: RunConfig, out_dir: Optional[str | os.PathLike] = None, *, overwrite: bool = False, resume: bool = False,
          progress: bool = True, log: Callable[[str], None] = print, command: Optional[list] = None, **trainer_kwargs) -> Trainer:
    """Run ``config`` (writing into ``out_dir`` if given); with ``resume`` continue the run saved there.

    Everything that can fail on bad input (options, output dir, data files) fails before anything is written.
    """
    out = Path(out_dir) if out_dir is not None else None
    if resume and out is None:
        raise UsageError("resume needs the run's output directory")
    if resume and overwrite:
        raise UsageError("--resume continues the run in its directory and --overwrite replaces it: give one of them")
    existing = check_out_dir(out, overwrite, resume) if out is not None else []
    trainer = Trainer(config, out, progress=progress, log=log, **trainer_kwargs)
    if resume:
        resume_from(trainer, out, log)
    elif out is not None and trainer.is_writer:
        out.mkdir(parents=True, exist_ok=True)
        for name in existing:
            (out / name).unlink()
        trainer.write_config(command)
    trainer.run()
    return trainer
