"""Paths as a committed report may show them: relative to the project, or shortened, never absolute.

A report is read on other machines; ``/tmp/runs/x`` or ``/home/me/data`` means nothing there and tells
about the machine that wrote it. Paths inside the project (the folder holding ``pyproject.toml`` or
``.git`` above the report) become relative to it; other absolute paths keep only their last part
(``…/data``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

#: An absolute POSIX path of at least two parts, not inside a word, a relative path or a URL.
_ABSOLUTE = re.compile(r"(?<![\w./:~-])/(?:[\w.+~-]+/)+[\w.+~-]*")


def project_root(start: Path) -> Optional[Path]:
    """The nearest folder at or above ``start`` with ``pyproject.toml`` or ``.git``; None if there is none."""
    here = Path(start).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").exists() or (folder / ".git").exists():
            return folder
    return None


def portable(path: str | Path, root: Optional[Path]) -> str:
    """``path`` relative to ``root`` when inside it; an absolute path elsewhere as ``…/<last part>``; a
    relative path as given."""
    text = str(path)
    p = Path(text)
    if not p.is_absolute():
        return text
    if root is not None:
        try:
            return p.resolve().relative_to(root).as_posix() or "."
        except ValueError:
            pass
    return "…/" + (p.name or "")


def scrub(text: str, root: Optional[Path]) -> str:
    """Every absolute path in ``text`` (a command, an error message) made :func:`portable`."""
    return _ABSOLUTE.sub(lambda m: portable(m.group(0).rstrip("/"), root), text)
