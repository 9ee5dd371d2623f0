"""Where data files are looked for and where derived caches are written.

Two roots are kept apart on purpose: the *data dir* holds the original downloads and may be read-only
(CI mounts the shared copies read-only), the *cache dir* holds what we derive from them (the HIGGS binary
cache) and must be writable. Nothing is ever written beside the source files except by a download.
"""
from __future__ import annotations

import os
from pathlib import Path

#: Environment variable naming the data directory (after an explicit ``--data-dir`` / ``data_dir=``).
DATA_DIR_ENV = "REDR_DATA_DIR"
#: Environment variable naming the writable cache directory for derived files.
CACHE_DIR_ENV = "REDR_CACHE_DIR"
#: Default for both when the variables are unset.
DEFAULT_DIR = Path("~/.cache/redr")


def _from_env(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else None


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data root: the explicit argument, else ``$REDR_DATA_DIR``, else ``~/.cache/redr``.

    Datasets live below it as ``<root>/kmnist/*.gz``, ``<root>/fashion-mnist/*.gz`` and
    ``<root>/higgs/HIGGS.csv.gz``. The directory need not exist yet (a download creates it).
    """
    return data_dir_and_origin(data_dir)[0]


def data_dir_and_origin(data_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Like :func:`resolve_data_dir`, plus which rule chose it (recorded in the run's config)."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser().absolute(), "argument (--data-dir)"
    env = _from_env(DATA_DIR_ENV)
    if env is not None:
        return env.absolute(), f"${DATA_DIR_ENV}"
    return DEFAULT_DIR.expanduser().absolute(), f"default ({DEFAULT_DIR})"


def resolve_cache_dir() -> Path:
    """The writable root for derived files: ``$REDR_CACHE_DIR``, else ``~/.cache/redr``."""
    env = _from_env(CACHE_DIR_ENV)
    return (env if env is not None else DEFAULT_DIR.expanduser()).absolute()
