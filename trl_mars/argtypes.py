"""``argparse`` types shared by the ``trl-mars`` commands: each rejects a bad value before anything loads.

>>> positive_int("3"), ks("1,10"), probability("0.5")
(3, [1, 10], 0.5)
"""

from __future__ import annotations

import argparse


def positive_int(value: str) -> int:
    """An integer >= 1 (``--max-nodes``, ``--limit``, ...)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {number}")
    return number


def non_negative_int(value: str) -> int:
    """An integer >= 0 (``--sandbox-fusion-retries``)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {number}")
    return number


def positive_float(value: str) -> float:
    """A finite number > 0 (timeouts, temperature)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}") from None
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return number


def non_negative_float(value: str) -> float:
    """A finite number >= 0 (``--temperature``: 0 is greedy)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value!r}") from None
    if not 0 <= number < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return number


def probability(value: str) -> float:
    """A number in (0, 1] (``--top-p``)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {value!r}") from None
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {value}")
    return number


def ks(value: str) -> list[int]:
    """One or more k of pass@k, comma-separated (``1,10``); with ``nargs="+"`` also ``--k 1 10``."""
    return [positive_int(part) for part in value.split(",") if part.strip()] or [positive_int(value)]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none (None, a flag's False) or the help states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return text
        if "default:" in text:
            return text
        return super()._get_help_string(action)
