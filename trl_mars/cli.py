"""The ``trl-mars`` console script: ``trl-mars {train,search,eval,view,data} ...`` (``trl-mars COMMAND --help``)."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": (
        "trl_mars.utils.recipes",
        "train_main",
        "run a training recipe: trl-mars train <method> [--config FILE]",
    ),
    "search": ("trl_mars.search.cli", "main", "MARS² tree search with one or more models on a benchmark"),
    "eval": ("trl_mars.eval.cli", "main", "score samples or reference solutions on a code benchmark (pass@k)"),
    "view": ("trl_mars.search.cli", "view_main", "render a saved trees.json as a self-contained HTML page"),
    "data": ("trl_mars.data.cli", "main", "download MovieLens into the cache; show where each data set is read from"),
}


def main(argv: list[str] | None = None) -> int:
    from trl_mars import __version__

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="trl-mars", description=__doc__)
    parser.add_argument("--version", action="version", version=f"trl-mars {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, _, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help, the version or the usage error, and exits
        return 2
    module, function, _ = COMMANDS[argv[0]]
    return getattr(importlib.import_module(module), function)(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
