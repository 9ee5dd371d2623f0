"""A table computed once, then written as ``tables/<name>.csv`` and shown in ``report.md``.

The CSV holds every record with full-precision numbers; the Markdown views (:func:`flat`, :func:`pivot`)
format cells from the same records, so the two can never disagree.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

Cell = Callable[[dict], str]


@dataclass
class Table:
    """``columns``: the CSV header; ``records``: one dict per row with exactly those keys."""

    name: str
    columns: tuple[str, ...]
    records: list[dict] = field(default_factory=list)

    def add(self, **values) -> dict:
        if set(values) != set(self.columns):
            wrong = sorted(set(values) ^ set(self.columns))
            raise ValueError(f"table {self.name}: a record needs exactly its columns; wrong keys: {', '.join(wrong)}")
        self.records.append(values)
        return values

    def where(self, **equal) -> list[dict]:
        return [r for r in self.records if all(r[k] == v for k, v in equal.items())]

    @property
    def file(self) -> str:
        return f"tables/{self.name}.csv"

    def write_csv(self, folder: Path) -> Path:
        path = folder / self.file
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(self.columns)
            writer.writerows([csv_value(r[c]) for c in self.columns] for r in self.records)
        return path


def csv_value(value):
    """Missing numbers (None, NaN) are empty CSV cells."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def number(value, digits: int = 2, per: float = 1.0) -> str:
    """A Markdown number cell, ``value / per`` (e.g. bytes per MB); '-' when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value / per:.{digits}f}"


def mean_std(mean, std, digits: int = 2, scale: float = 100.0) -> str:
    """'62.51 ± 0.54' (accuracies are stored in [0, 1] and shown in percent)."""
    if mean is None or math.isnan(mean):
        return "-"
    return f"{scale * mean:.{digits}f} ± {scale * (std if not math.isnan(std) else 0.0):.{digits}f}"


def markdown(header: Sequence, rows: Iterable[Sequence]) -> str:
    """A Markdown table; a "|" inside a cell is escaped (it would split the cell)."""
    rows = list(rows)
    if not rows:
        return "_no runs_\n"

    def cell(c) -> str:
        return str(c).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(c) for c in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def flat(records: Sequence[dict], columns: Sequence[tuple[str, Cell]]) -> str:
    """One Markdown row per record: ``columns`` are (header, cell formatter) pairs."""
    return markdown([h for h, _ in columns], [[fmt(r) for _, fmt in columns] for r in records])


def pivot(records: Sequence[dict], row: Callable[[dict], object], col: Callable[[dict], Optional[object]],
          cell: Cell, row_order: Sequence, col_order: Sequence, row_label: Callable[[object], str],
          col_label: Callable[[object], str], corner: str) -> str:
    """Rows ``row(r)`` x columns ``col(r)``; a record whose ``col`` is None fills every column (a dense net
    has one size, shown at every density). Rows without any record are left out."""
    lookup: dict = {}
    for r in records:
        for c in ([col(r)] if col(r) is not None else col_order):
            lookup[(row(r), c)] = r
    body = [[row_label(k)] + [cell(lookup[(k, c)]) if (k, c) in lookup else "-" for c in col_order]
            for k in row_order if any((k, c) in lookup for c in col_order)]
    return markdown([corner] + [col_label(c) for c in col_order], body)
