"""The ``trl-mars`` console script: ``trl-mars {eval,search,view} ...`` (``trl-mars COMMAND --help`` for each)."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "eval": ("trl_mars.eval.cli", "main", "score samples or reference solutions on a code benchmark (pass@k)"),
    "search": ("trl_mars.search.cli", "main", "MARS² tree search with one or more models on a benchmark"),
    "view": ("trl_mars.search.cli", "view_main", "render a saved trees.json as a self-contained HTML page"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="trl-mars", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, _, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help or the usage error, and exits
        return 2
    module, function, _ = COMMANDS[argv[0]]
    return getattr(importlib.import_module(module), function)(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
