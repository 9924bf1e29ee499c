"""Where local benchmark data lives: ``$TRL_MARS_DATA``, else ``<repo>/../shared/data``."""

from __future__ import annotations

import os
from pathlib import Path


def default_data_dir() -> Path:
    env = os.environ.get("TRL_MARS_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"


def humaneval_path() -> Path:
    return default_data_dir() / "humaneval" / "HumanEval.jsonl.gz"
