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

A checkpoint is data, never code. Every read goes through :func:`_deserialize`, the one place a file
becomes objects: torch's weights-only unpickler, which builds tensors, numbers, strings and containers
and refuses anything else (a pickled ``os.system`` call is named in the error and never run). The
checksum cannot protect here: it lives inside the pickle and anyone who can write the file can write a
matching one, so it guards against corruption only, after the safe load. A checkpoint therefore holds
only such types; numpy's RNG state is stored as plain values and a tensor (:func:`numpy_rng_state`).
Format 1 (redr 0.1.0) held numpy's own tuple: such a file is read with exactly numpy's array classes
allowed (:data:`FORMAT_1_NUMPY`) and nothing else, and converted.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import pickletools
import re
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from redr.errors import RedrError, UsageError

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
TEMPORARY = CHECKPOINT + ".tmp"
FORMAT_VERSION = 2
#: Versions this redr reads (1: numpy's RNG state as numpy's tuple; 2: as plain values, see numpy_rng_state).
READABLE_VERSIONS = (1, 2)


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


# ---------------------------------------------------------------------- numpy's RNG state as plain values
def numpy_rng_state() -> dict:
    """numpy's global RNG state as a checkpoint may hold it: plain values and one int64 tensor."""
    state = np.random.get_state(legacy=False)
    return {"bit_generator": state["bit_generator"], "key": torch.from_numpy(state["state"]["key"].astype(np.int64)),
            "pos": int(state["state"]["pos"]), "has_gauss": int(state["has_gauss"]), "gauss": float(state["gauss"])}


def set_numpy_rng_state(state: dict) -> None:
    """Restore what :func:`numpy_rng_state` returned (bit for bit)."""
    np.random.set_state({"bit_generator": state["bit_generator"], "has_gauss": state["has_gauss"],
                         "gauss": state["gauss"],
                         "state": {"key": state["key"].cpu().numpy().astype(np.uint32), "pos": state["pos"]}})


def _numpy_state_from_format_1(legacy) -> dict:
    """numpy's ``get_state()`` tuple of a format-1 checkpoint -> the form of :func:`numpy_rng_state`."""
    if not (isinstance(legacy, tuple) and len(legacy) == 5 and isinstance(legacy[1], np.ndarray)):
        raise CheckpointError("format-1 checkpoint without numpy's RNG state tuple")
    name, key, pos, has_gauss, gauss = legacy
    return {"bit_generator": str(name), "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}


# ---------------------------------------------------------------------- reading: data only, never code
def _numpy_globals() -> dict:
    """The classes a format-1 checkpoint's numpy array needs, by the names numpy 1 and 2 pickle them under."""
    core = np._core if hasattr(np, "_core") else np.core
    reconstruct, uint32 = core.multiarray._reconstruct, type(np.dtype(np.uint32))  # uint32: the class BUILD sees
    return {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype, f"{uint32.__module__}.{uint32.__name__}": uint32,
            "numpy._core.multiarray._reconstruct": reconstruct, "numpy.core.multiarray._reconstruct": reconstruct}


#: Everything beyond torch's weights-only defaults that any checkpoint may use: numpy's uint32 array of a
#: format-1 file's RNG state (building an array from bytes runs no code; format 2 needs none of it).
FORMAT_1_NUMPY = frozenset(_numpy_globals())

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format; redr never writes anything else
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}


def _plain_pickle_globals(path: Path) -> list[str]:
    """The ``module.name`` of every global a plain (non-torch) pickle imports, read by disassembly (runs nothing)."""
    names, stack, memo = [], [], []
    try:
        for op, arg, _ in pickletools.genops(path.read_bytes()):
            if op.name in _STRING_OPS:
                stack.append(arg)
            elif op.name == "MEMOIZE" and stack:
                memo.append(stack[-1])
            elif op.name in ("BINGET", "LONG_BINGET", "GET") and isinstance(arg, int) and arg < len(memo):
                stack.append(memo[arg])
            elif op.name == "GLOBAL":
                names.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(stack) >= 2:
                names.append(f"{stack[-2]}.{stack[-1]}")
    except Exception:  # not a pickle, or a broken one: what was found so far
        pass
    return sorted(set(names))


def _not_weights(names) -> CheckpointError:
    return CheckpointError(f"holds objects that are not weights: {', '.join(names)}; refused, nothing in it "
                           "was run (a checkpoint is data: tensors, numbers, strings, lists and dicts)")


def _unreadable(path: Path, why: str) -> CheckpointError:
    size = path.stat().st_size if path.exists() else 0
    return CheckpointError(f"unreadable ({size:,} bytes; {why}): truncated, or not a checkpoint")


def _deserialize(path: Path, map_location) -> tuple[object, bool]:
    """The one place a checkpoint file becomes objects; returns ``(state, used format-1 numpy classes)``.

    Only a torch zip archive is unpickled, by torch's weights-only unpickler (never the unrestricted one):
    its pickle is first listed (disassembled, nothing runs) and refused if it names any class or function
    beyond torch's tensors and :data:`FORMAT_1_NUMPY`; the unpickler refuses the same at load time.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_ZIP_MAGIC))
    except FileNotFoundError:
        raise
    except OSError as exc:  # a folder, no permission, an I/O error
        raise _unreadable(path, f"{type(exc).__name__}: {_first_line(exc)}") from None
    if head != _ZIP_MAGIC:
        names = _plain_pickle_globals(path)
        raise _not_weights(names) if names else _unreadable(path, "not a torch zip archive")
    try:
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception as exc:
        raise _unreadable(path, f"{type(exc).__name__}: {_first_line(exc)}") from None
    if unsafe - FORMAT_1_NUMPY:
        raise _not_weights(sorted(unsafe - FORMAT_1_NUMPY))
    allowed = [(obj, name) for name, obj in _numpy_globals().items()] if unsafe else []
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True), bool(allowed)
    except Exception as exc:
        refused = re.search(r"GLOBAL (\S+)", str(exc)) if isinstance(exc, pickle.UnpicklingError) else None
        if refused:  # a global the listing could not see (named at load time); refused by the unpickler
            raise _not_weights([refused.group(1)]) from None
        raise _unreadable(path, f"{type(exc).__name__}: {_first_line(exc)}") from None  # truncated, not torch's


def read(path: str | os.PathLike, map_location="cpu") -> dict:
    """One checkpoint file, loaded as data only and checked for format and checksum (no fallback).

    A format-1 file comes back in the current format (numpy's RNG state as :func:`numpy_rng_state` gives it).
    """
    path = Path(path)
    try:
        state, numpy_used = _deserialize(path, map_location)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError("not a redr checkpoint (no format_version)")
    version = state["format_version"]
    if type(version) is not int or version not in READABLE_VERSIONS:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise CheckpointError(f"checkpoint format version {version!r}; this redr reads versions "
                              f"{READABLE_VERSIONS[0]} to {READABLE_VERSIONS[-1]}"
                              + (" (written by a newer redr: upgrade redr)" if newer else ""))
    if numpy_used and version != 1:
        raise CheckpointError(f"holds numpy arrays, which only format-1 checkpoints may (format {version!r} "
                              "stores numpy's RNG state as plain values); refused")
    if "digest" not in state:
        raise CheckpointError("no content checksum (not written by redr's checkpoint.save)")
    if content_digest(state) != state["digest"]:
        raise CheckpointError("content checksum mismatch: the file is corrupt (changed after it was written)")
    if version == 1 and isinstance(state.get("rng"), dict):
        state["rng"] = {**state["rng"], "numpy": _numpy_state_from_format_1(state["rng"].get("numpy"))}
        state["format_version"] = FORMAT_VERSION
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
