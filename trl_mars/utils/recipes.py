"""Shared plumbing for ``recipes/*.py``: a default YAML config and the offline tiny model as defaults."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from trl import TrlParser

from trl_mars.utils.gguf import is_gguf_reference

TINY_MODEL_IDS = {"trl-mars/tiny-qwen2": "qwen2", "trl-mars/tiny-llama": "llama"}
"""Model ids that name the package's offline tiny models instead of a hub repository."""


def parse_recipe_args(
    dataclass_types: Sequence[type], default_config: str | os.PathLike, argv: list[str] | None = None
):
    """Parse ``--config file.yaml`` plus CLI overrides with ``TrlParser``; without ``--config``, use ``default_config``.

    So ``accelerate launch recipes/x.py`` with no argument runs the recipe's tiny default.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv:
        argv = ["--config", str(default_config), *argv]
    return TrlParser(tuple(dataclass_types)).parse_args_and_config(argv)


def resolve_model_path(name_or_path: str) -> str:
    """Hub ids and local paths pass through; ``trl-mars/tiny-*`` ids build (once) and return the offline tiny model;
    ``.gguf`` files and packaged GGUF ids (``trl_mars.utils.gguf``) return their cached dequantised checkpoint."""
    if is_gguf_reference(name_or_path):
        from trl_mars.utils.gguf import resolve_gguf

        return resolve_gguf(name_or_path)
    if name_or_path in TINY_MODEL_IDS and not Path(name_or_path).exists():
        from trl_mars.testing import tiny_model_path

        return tiny_model_path(TINY_MODEL_IDS[name_or_path])
    return name_or_path
