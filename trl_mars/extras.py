"""Optional dependencies: import one lazily, or fail with the ``pip install 'trl-mars[EXTRA]'`` that brings it."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str, feature: str, package: str | None = None) -> ModuleType:
    """``import module``, or raise ``ImportError`` saying that ``feature`` needs ``package`` (the distribution,
    default ``module``) from the extra ``extra``.

    >>> require("json", "none", "parsing").__name__
    'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{feature} needs the '{package or module}' package: pip install 'trl-mars[{extra}]'"
        ) from err
