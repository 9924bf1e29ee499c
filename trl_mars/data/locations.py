"""Where the package finds local data and keeps its cache; nothing is computed from the source path.

* ``$TRL_MARS_DATA``: an optional root of local copies, laid out as ``humaneval/HumanEval.jsonl.gz`` and
  ``movielens/`` (the ml-latest-small CSV files). Explicit arguments (``--benchmark``, ``movielens_path``)
  always win over it.
* ``$TRL_MARS_CACHE``: the package's cache (offline tiny models, downloaded MovieLens); default
  ``$XDG_CACHE_HOME/trl_mars``, i.e. ``~/.cache/trl_mars``.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "TRL_MARS_DATA"
CACHE_ENV = "TRL_MARS_CACHE"


def data_root() -> Path | None:
    """``$TRL_MARS_DATA`` as a path, or None when it is unset or empty."""
    value = os.environ.get(DATA_ENV, "").strip()
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """``$TRL_MARS_CACHE``, else ``$XDG_CACHE_HOME/trl_mars``, else ``~/.cache/trl_mars`` (not created here)."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "trl_mars"


def offline() -> bool:
    """True when the Hugging Face offline switches are set (``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE``)."""
    switches = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in switches)
