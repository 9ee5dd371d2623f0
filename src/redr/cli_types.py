"""argparse value types shared by the sub-commands; each rejects bad text with one clear line."""
from __future__ import annotations

import argparse
from typing import Callable


def whole_number(minimum: int | None = None) -> Callable[[str], int]:
    """An int, at least ``minimum`` when given (``None``: range checks are left to the config validation)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def comma_list(kind: Callable = str) -> Callable[[str], list]:
    """``"a,b,c"`` -> ``[kind(a), kind(b), kind(c)]``; an empty list is an error."""

    def parse(text: str) -> list:
        try:
            values = [kind(x.strip()) for x in text.split(",") if x.strip()]
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r} ({exc})") from None
        if not values:
            raise argparse.ArgumentTypeError("expected a non-empty comma-separated list")
        return values

    return parse


integer = whole_number()
positive_int = whole_number(1)
non_negative_int = whole_number(0)
