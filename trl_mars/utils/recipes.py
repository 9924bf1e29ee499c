"""Shared plumbing for the recipes (``trl_mars.recipes``, the ``recipes/`` folder of a checkout): a default YAML
config, the offline tiny models as defaults, and ``trl-mars train <method>``."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from trl import TrlParser

from trl_mars.extras import require
from trl_mars.utils.gguf import is_gguf_reference

TINY_MODEL_IDS = {"trl-mars/tiny-qwen2": "qwen2", "trl-mars/tiny-llama": "llama"}
"""Model ids that name the package's offline tiny models instead of a hub repository."""
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")

METHODS = {
    "mars2": "MARS² multi-agent tree search RL on code (MultiAgentTreeTrainer)",
    "selfplay": "R-Zero / R-Diverse / WIST Challenger-Solver self-play (SelfPlayTrainer)",
    "rerec": "ReRec reasoning recommender GRPO on MovieLens (ReasoningRecTrainer)",
    "trace": "TRACE reasoning embedder on MovieLens (TraceEmbedTrainer)",
}
"""``trl-mars train`` methods: the recipe modules of ``trl_mars.recipes``."""


def parse_recipe_args(
    dataclass_types: Sequence[type], default_config: str | os.PathLike, argv: list[str] | None = None
):
    """Parse ``--config file.yaml`` plus CLI overrides with ``TrlParser``; without ``--config``, use ``default_config``.

    So ``accelerate launch recipes/x.py`` with no argument runs the recipe's tiny default. ``--config`` may also
    name a config shipped with the recipes (``--config mars2_qwen3_8b_homo.yaml``). QLoRA flags
    (``load_in_4bit`` / ``load_in_8bit``) need the ``qlora`` extra, checked here before any model loads.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv:
        argv = ["--config", str(default_config), *argv]
    else:
        i = argv.index("--config") + 1
        if i < len(argv):
            argv[i] = str(shipped_config(argv[i]))
    parsed = TrlParser(tuple(dataclass_types)).parse_args_and_config(argv)
    for args in parsed:
        if dataclasses.is_dataclass(args) and (
            getattr(args, "load_in_4bit", False) or getattr(args, "load_in_8bit", False)
        ):
            require("bitsandbytes", "qlora", "load_in_4bit / load_in_8bit (QLoRA)")
    return parsed


def recipes_dir() -> Path:
    """The folder of the shipped recipes (``trl_mars/recipes``: ``configs/``, ``accelerate_configs/``)."""
    return Path(str(resources.files("trl_mars.recipes")))


def shipped_config(name: str | os.PathLike, folder: str = "configs") -> Path:
    """``name`` itself when it is an existing file, else the shipped ``<folder>/<name>[.yaml]``; unknown names are
    returned unchanged (the parser then reports the missing file)."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (recipes_dir() / folder / path.name, recipes_dir() / folder / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    return path


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


def check_model_reference(model: str, where: str) -> None:
    """Fail early (before any weight is read) on a model reference that cannot resolve."""
    if model in TINY_MODEL_IDS:
        return
    if is_gguf_reference(model):
        from trl_mars.utils.gguf import check_gguf_reference

        return check_gguf_reference(model, where)
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


def _configs() -> str:
    names = sorted(p.name for p in (recipes_dir() / "configs").glob("*.yaml"))
    launchers = sorted(p.stem for p in (recipes_dir() / "accelerate_configs").glob("*.yaml"))
    return f"shipped configs: {', '.join(names)}\nshipped accelerate configs: {', '.join(launchers)}"


def train_main(argv: list[str] | None = None) -> int:
    """``trl-mars train <method> [--config FILE] [--accelerate_config NAME|FILE] [overrides]``: run a recipe.

    Without ``--accelerate_config`` the recipe runs in this process (one device); with it, under
    ``accelerate launch --config_file ... -m trl_mars.recipes.<method>``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="trl-mars train",
        description=train_main.__doc__.split("\n\n")[0],
        epilog=_configs() + "\n\nEvery field of the method's config can be overridden, e.g. --max_steps 2; "
        "`trl-mars train <method> --help` lists them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("method", choices=list(METHODS), help="; ".join(f"{k}: {v}" for k, v in METHODS.items()))
    if not argv or argv[0] not in METHODS:
        parser.parse_args(argv[:1])  # prints help, or the usage error naming the methods
        return 2
    method, rest = argv[0], argv[1:]
    if "--accelerate_config" in rest:
        i = rest.index("--accelerate_config")
        if i + 1 >= len(rest):
            parser.error("--accelerate_config needs a NAME (one of the shipped accelerate configs) or a FILE")
        launcher = shipped_config(rest[i + 1], "accelerate_configs")
        if not launcher.is_file():
            parser.error(f"--accelerate_config {rest[i + 1]}: no such file or shipped accelerate config")
        rest = rest[:i] + rest[i + 2 :]
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launcher)]
        return subprocess.call([*command, "-m", f"trl_mars.recipes.{method}", *rest])
    module = importlib.import_module(f"trl_mars.recipes.{method}")
    saved = sys.argv
    sys.argv = [f"trl-mars train {method}", *rest]
    try:
        module.main()
    except FileNotFoundError as err:  # missing data (MovieLens offline) or config: one line, not a traceback
        raise SystemExit(f"trl-mars train {method}: error: {err}") from None
    finally:
        sys.argv = saved
    return 0
