"""Atomic checkpoints: a crash (even ``kill -9``) during a write never leaves a corrupt newest one.

``save`` writes ``checkpoint.pt.tmp`` and fsyncs it; then the current ``checkpoint.pt`` becomes
``checkpoint.prev.pt`` (through a hard link, so that ``checkpoint.pt`` exists at every instant) and the
temporary file is renamed into place; finally the folder is fsynced. A failed or interrupted write
leaves at most a stale ``checkpoint.pt.tmp``; the newest complete checkpoint is untouched.

Every checkpoint carries a content checksum (BLAKE2b over every tensor's bytes and every other value
of the state, in order): ``torch.load`` notices a truncated file but not a flipped bit inside a tensor.
``load`` reads the newest checkpoint that loads, matches its checksum and passes the caller's
validation, and falls back to the previous one with a :class:`CheckpointFallbackWarning` that says
what is wrong with the newest.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from redr.errors import RedrError, UsageError

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
TEMPORARY = CHECKPOINT + ".tmp"
FORMAT_VERSION = 1


class CheckpointError(RedrError):
    """No usable checkpoint, or one that is wrong; the message says which file and what is wrong."""


class CheckpointFallbackWarning(UserWarning):
    """The newest checkpoint is unusable; the previous one was used instead."""


# ---------------------------------------------------------------------- content checksum
def _feed(h, value) -> None:
    if torch.is_tensor(value):
        t = value.detach()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray):
        h.update(f"N{value.dtype}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        h.update(f"D{len(value)}".encode())
        for k, v in value.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)}".encode())
        for v in value:
            _feed(h, v)
    else:
        h.update(f"V{type(value).__name__}:{value!r};".encode())


def content_digest(state: dict) -> str:
    """BLAKE2b of everything in ``state`` except its ``digest`` entry (dict order matters)."""
    h = hashlib.blake2b(digest_size=20)
    _feed(h, {k: v for k, v in state.items() if k != "digest"})
    return h.hexdigest()


# ---------------------------------------------------------------------- writing
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(state: dict, fh) -> None:
    """The serializer (a module attribute, so that tests can make it fail half-way)."""
    torch.save(state, fh)


def _keep_as_previous(final: Path, previous: Path) -> None:
    """``previous`` := ``final`` without a moment where ``final`` is missing (hard link, else rename)."""
    link = previous.with_name(previous.name + ".tmp")
    try:
        link.unlink(missing_ok=True)
        os.link(final, link)
        os.replace(link, previous)
    except OSError:  # a filesystem without hard links: the rename leaves a short window without `final`,
        os.replace(final, previous)  # during which `load` uses `previous`


def save(directory: str | os.PathLike, state: dict, writer: Optional[Callable] = None) -> Path:
    """Write ``state`` atomically as the newest checkpoint of ``directory``; keeps the previous one.

    ``writer(state, fh)`` serializes (default ``torch.save``). If it fails, the temporary file is
    removed, the existing checkpoints stay as they were, and a :class:`CheckpointError` says so.
    """
    directory = Path(directory)
    final, previous, tmp = directory / CHECKPOINT, directory / PREVIOUS, directory / TEMPORARY
    state = {"format_version": FORMAT_VERSION, **{k: v for k, v in state.items() if k != "digest"}}
    state["digest"] = content_digest(state)
    try:
        with open(tmp, "wb") as fh:
            (writer or _write)(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, Exception):
            kept = "the previous checkpoint is kept" if final.exists() else "no earlier checkpoint exists"
            raise CheckpointError(f"could not write a checkpoint in {directory} ({type(exc).__name__}: {exc}); "
                                  f"{kept}") from exc
        raise
    if final.exists():
        _keep_as_previous(final, previous)
    os.replace(tmp, final)
    _fsync_dir(directory)
    return final


# ---------------------------------------------------------------------- reading
def read(path: str | os.PathLike, map_location="cpu") -> dict:
    """One checkpoint file, checked for format and checksum (no fallback)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as exc:  # torch/zip/pickle errors: truncated or not a torch file at all
        size = path.stat().st_size if path.exists() else 0
        raise CheckpointError(f"unreadable ({size:,} bytes; {type(exc).__name__}: {_first_line(exc)}): "
                              "truncated, or not a checkpoint") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError("not a redr checkpoint (no format_version)")
    version = state["format_version"]
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise CheckpointError(f"checkpoint format version {version!r}; this redr reads version {FORMAT_VERSION}"
                              + (" (written by a newer redr: upgrade redr)" if newer else ""))
    if "digest" not in state:
        raise CheckpointError("no content checksum (not written by redr's checkpoint.save)")
    if content_digest(state) != state["digest"]:
        raise CheckpointError("content checksum mismatch: the file is corrupt (changed after it was written)")
    return state


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else ""


def load(path_or_dir: str | os.PathLike, validate: Optional[Callable[[dict], None]] = None,
         map_location="cpu") -> dict:
    """The newest usable checkpoint.

    A directory: ``checkpoint.pt``, else (with a :class:`CheckpointFallbackWarning`) ``checkpoint.prev.pt``;
    a file: that file only. Usable = loads, has this format version, matches its checksum and passes
    ``validate(state)`` (which raises). A :class:`~redr.errors.UsageError` from ``validate`` (e.g. a
    config mismatch) is raised at once: an older checkpoint of the same run would not do better.
    """
    path = Path(path_or_dir)
    if path.is_dir():
        candidates = [path / CHECKPOINT, path / PREVIOUS]
    elif path.exists():
        candidates = [path]
    else:
        raise CheckpointError(f"{path}: no such file or directory")
    problems = []
    for i, file in enumerate(candidates):
        if not file.exists():
            problems.append(f"{file.name}: missing")
            continue
        try:
            state = read(file, map_location=map_location)
            if validate is not None:
                validate(state)
        except UsageError:
            raise
        except Exception as exc:
            problems.append(f"{file.name}: {exc}")
            continue
        if i > 0:
            warnings.warn(f"{candidates[0]} is unusable ({problems[0].split(': ', 1)[1]}); "
                          f"using the previous checkpoint {file.name} (epoch {state.get('epoch')}, "
                          f"step {state.get('step_in_epoch')})", CheckpointFallbackWarning, stacklevel=2)
        return state
    where = f"in {path}" if path.is_dir() else ""
    raise CheckpointError(f"no usable checkpoint {where}".rstrip() + ": " + "; ".join(problems))
