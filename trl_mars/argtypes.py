"""``argparse`` types shared by the ``trl-mars`` commands: each rejects a bad value before anything loads.

>>> positive_int("3"), ks("1,10"), probability("0.5")
(3, [1, 10], 0.5)
"""

from __future__ import annotations

import argparse


def _bounded(value: str, parse: type, within, expected: str):
    """``parse(value)`` if it parses and ``within`` holds, else an ``ArgumentTypeError`` saying what was expected
    (showing the parsed integer, or the number as typed)."""
    try:
        number = parse(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}") from None
    if not within(number):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {number if parse is int else value}")
    return number


def positive_int(value: str) -> int:
    """An integer >= 1 (``--max-nodes``, ``--limit``, ...)."""
    return _bounded(value, int, lambda n: n >= 1, "an integer >= 1")


def non_negative_int(value: str) -> int:
    """An integer >= 0 (``--sandbox-fusion-retries``)."""
    return _bounded(value, int, lambda n: n >= 0, "an integer >= 0")


def positive_float(value: str) -> float:
    """A finite number > 0 (timeouts, temperature)."""
    return _bounded(value, float, lambda x: 0 < x < float("inf"), "a number > 0")


def non_negative_float(value: str) -> float:
    """A finite number >= 0 (``--temperature``: 0 is greedy)."""
    return _bounded(value, float, lambda x: 0 <= x < float("inf"), "a number >= 0")


def probability(value: str) -> float:
    """A number in (0, 1] (``--top-p``)."""
    return _bounded(value, float, lambda x: 0 < x <= 1, "a number in (0, 1]")


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
