"""Atomic checkpoints: a crash (even ``kill -9``) during a write never leaves a corrupt newest one.

``save`` writes ``checkpoint.pt.tmp``, fsyncs it, moves the current ``checkpoint.pt`` to
``checkpoint.prev.pt`` and renames the temporary file into place (then fsyncs the folder). ``load``
reads the newest checkpoint that loads and validates, falling back to the previous one with a warning.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from redr.errors import RedrError

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
FORMAT_VERSION = 1


class CheckpointError(RedrError):
    """No usable checkpoint; the message says which files were tried and what is wrong with each."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(directory: str | os.PathLike, state: dict, writer=torch.save) -> Path:
    """Write ``state`` atomically as the newest checkpoint of ``directory``; keeps the previous one."""
    directory = Path(directory)
    final, previous, tmp = directory / CHECKPOINT, directory / PREVIOUS, directory / (CHECKPOINT + ".tmp")
    state = {"format_version": FORMAT_VERSION, **state}
    try:
        with open(tmp, "wb") as fh:
            writer(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if final.exists():
        os.replace(final, previous)
    os.replace(tmp, final)
    _fsync_dir(directory)
    return final


def load(directory: str | os.PathLike, validate=None, map_location="cpu") -> dict:
    """The newest checkpoint of ``directory`` that loads and passes ``validate(state)`` (which raises)."""
    directory = Path(directory)
    problems = []
    for i, name in enumerate((CHECKPOINT, PREVIOUS)):
        path = directory / name
        if not path.exists():
            problems.append(f"{name}: missing")
            continue
        try:
            state = torch.load(path, map_location=map_location, weights_only=False)
            if not isinstance(state, dict) or "format_version" not in state:
                raise CheckpointError("not a redr checkpoint (no format_version)")
            if state["format_version"] != FORMAT_VERSION:
                raise CheckpointError(f"format version {state['format_version']}, this redr reads {FORMAT_VERSION}")
            if validate is not None:
                validate(state)
        except Exception as exc:  # a truncated or corrupt file: say so and try the previous one
            problems.append(f"{name}: {exc}")
            continue
        if i > 0:
            warnings.warn(f"newest checkpoint unusable ({problems[0]}); resuming from {name}", stacklevel=2)
        return state
    raise CheckpointError(f"no usable checkpoint in {directory}: " + "; ".join(problems))
