"""``report.md``, CSV tables and PNG figures from the finished runs of a folder (no training).

Written into the output folder (by default the runs' folder):

* ``report.md``: data and machine, the claims checked (with a test over seeds), every table with its figure;
* ``tables/*.csv``: the same tables, machine-readable (always all of them; empty when not run);
* ``figures/*.png``: per dataset with accuracy-grid runs, always the same set of files; a figure whose
  experiment was not run says so, with the command that runs it.

Modules: :mod:`.runset` (the runs read), :mod:`.tables`/:mod:`.measurements` (each table computed once,
:mod:`.table` renders it as Markdown and CSV), :mod:`.claims` and :mod:`.stats` (the paper's claims, Welch's
test), :mod:`.figures`, :mod:`.prose` (fixed text), :mod:`.sections` (their order), :mod:`.document`
(the file), :mod:`.names` (display names, from the algorithm registry), :mod:`.paths` (portable paths).

With ``copy_runs`` the small files of every run (``config.json``, ``metrics.csv``, ``cell.json``,
``DONE``/``FAILED``; no checkpoints) are copied to ``<out>/runs/<name>/``, so the copy regenerates the
same report on its own (``redr report <out>``).
"""
from redr.experiments.report.document import copy_small_files, figure_files, table_files, write_report

__all__ = ["copy_small_files", "figure_files", "table_files", "write_report"]
