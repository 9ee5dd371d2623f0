"""The ``redr`` command: one sub-command per module, each registering its own parser.

A sub-command module exposes ``add_parser(subparsers)`` which creates its parser and sets
``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit code).
Errors meant for the user are raised as :class:`redr.errors.UsageError` (exit code 2) or
:class:`redr.errors.RedrError` (exit code 1) and printed as one line, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Wide layers gather activation rows at random (one row per active weight): on 4 KiB pages a 64 MiB activation
# spans 16,384 pages, far more than the TLB holds, so nearly every gather also walks the page table. torch backs
# allocations of 2 MiB and more with transparent huge pages when THP_MEM_ALLOC_ENABLE is set, and it reads the
# variable once, before its first allocation, so the command sets it here, before torch is imported (measured
# 1.2-1.4x on the forward kernel at width 65536, docs/scale.md). A user's own setting wins; 0 turns it off. A
# library user sets it in the environment (setting it after torch has allocated anything has no effect).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from redr.errors import RedrError, UsageError

#: Sub-command modules, in the order ``redr --help`` lists them.
COMMAND_MODULES = (
    "redr.training.cli",
    "redr.data.cli",
    "redr.experiments.cli",
    "redr.bench.cli",
)


class _Parser(argparse.ArgumentParser):
    """argparse prints usage + error and exits 2; we keep the exit code and the one clear line."""

    def error(self, message: str) -> None:  # pragma: no cover - exercised through main()
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="redr", description="Dynamic sparse training with weight redistribution.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a part not built yet must not break the others
            if exc.name and name.startswith(exc.name):
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        args = parser.parse_args(argv)
        args.argv = argv  # the arguments as given (redr train --nproc passes them on to torchrun)
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RedrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # the trainer says where it stopped and that a checkpoint was saved
        print(f"interrupted: {exc}" if str(exc) else "interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
