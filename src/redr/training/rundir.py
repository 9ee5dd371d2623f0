"""The run directory: what a training run writes and how it is read back.

``config.json`` (the options, the model summary, versions, machine, command), ``metrics.csv`` (one row per
epoch, rewritten whole and atomically with every checkpoint), the checkpoints
(:mod:`redr.training.checkpoint`) and ``DONE`` once the last epoch is saved. The trainer writes them; the
experiments, the reports and the benchmarks read them through this module.
"""
from __future__ import annotations

import csv
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from redr.errors import UsageError
from redr.training import checkpoint

CONFIG_FILE, METRICS_FILE, DONE_FILE = "config.json", "metrics.csv", "DONE"
OUR_FILES = (CONFIG_FILE, METRICS_FILE, checkpoint.CHECKPOINT, checkpoint.PREVIOUS, checkpoint.TEMPORARY,
             checkpoint.PREVIOUS + ".tmp", DONE_FILE)


def write_done(out_dir: Path) -> None:
    """The ``DONE`` marker of a finished run (its time, UTC)."""
    (out_dir / DONE_FILE).write_text(datetime.now(timezone.utc).isoformat() + "\n")


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def write_metrics(path: Path, rows: list[dict]) -> None:
    """The whole CSV, rewritten atomically from the rows (so it always matches the checkpoint)."""
    tmp = path.with_suffix(".csv.tmp")
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """metrics.csv back as dicts of floats (ints where whole)."""
    rows = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            parsed = {}
            for k, v in row.items():
                try:
                    f = float(v)
                    parsed[k] = int(f) if k == "epoch" or k.startswith("nnz[") else f
                except (TypeError, ValueError):
                    parsed[k] = v
            rows.append(parsed)
    return rows


def check_out_dir(out_dir: Path, overwrite: bool = False, resume: bool = False) -> list[str]:
    """Refuse to touch an existing run unless asked (no side effects); returns our files found there."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} exists and is not a directory")
    existing = [name for name in OUR_FILES if (out_dir / name).exists()]
    if resume:
        if not any((out_dir / name).exists() for name in (checkpoint.CHECKPOINT, checkpoint.PREVIOUS, CONFIG_FILE)):
            raise UsageError(f"--resume {out_dir}: no checkpoint there to resume from")
    elif existing and not overwrite:
        raise UsageError(f"output dir {out_dir} already holds a run ({', '.join(existing)}); "
                         "pass --overwrite to replace it or --resume to continue it")
    return existing


def saved_config(out: Path) -> dict:
    """The ``config`` of a run directory's config.json (a UsageError if missing or unreadable)."""
    try:
        return json.loads((out / CONFIG_FILE).read_text())["config"]
    except FileNotFoundError:
        raise UsageError(f"--resume {out}: no {CONFIG_FILE} there (not a redr run directory)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"--resume {out}: {CONFIG_FILE} is unreadable ({type(exc).__name__}: {exc})") from None
