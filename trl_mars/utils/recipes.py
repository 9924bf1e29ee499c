"""Shared plumbing for ``recipes/*.py``: a default YAML config and the offline tiny model as defaults."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from trl import TrlParser

TINY_MODEL_IDS = {"trl-mars/tiny-qwen2": "qwen2", "trl-mars/tiny-llama": "llama"}
"""Model ids that name the package's offline tiny models instead of a hub repository."""
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


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
    """Hub ids and local paths pass through; ``trl-mars/tiny-*`` ids build (once) and return the offline tiny model."""
    if name_or_path in TINY_MODEL_IDS and not Path(name_or_path).exists():
        from trl_mars.testing import tiny_model_path

        return tiny_model_path(TINY_MODEL_IDS[name_or_path])
    return name_or_path


def check_model_reference(model: str, where: str) -> None:
    """Fail early (before any weight is read) on a model reference that cannot resolve."""
    if model in TINY_MODEL_IDS:
        return
    path = Path(os.path.expanduser(model))
    if path.exists():
        if not (path / "config.json").exists():
            raise ValueError(f"{where}: local model folder {model!r} has no config.json")
        return
    if model.startswith((".", "/", "~")) or not _HUB_ID.match(model):
        raise ValueError(f"{where}: unknown model {model!r}: not a local folder and not a hub id like 'org/name'")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            raise ValueError(f"{where}: model {model!r} is not in the local cache and HF_HUB_OFFLINE=1")
