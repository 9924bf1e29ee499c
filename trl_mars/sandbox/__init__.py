"""Secure, fast execution of untrusted Python against tests (standard library only). See docs/sandbox.md.

The names are imported lazily, so the zygote (``python -m trl_mars.sandbox.zygote``) loads only what it
runs, not the parent's pool, threads and test splitting: every page it holds is a page each check's fork
copies the page tables of.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Check": "trl_mars.sandbox.cases",
    "TestCase": "trl_mars.sandbox.cases",
    "make_check": "trl_mars.sandbox.cases",
    "split_humaneval": "trl_mars.sandbox.cases",
    "validate_tests": "trl_mars.sandbox.cases",
    "SandboxConfig": "trl_mars.sandbox.config",
    "Sandbox": "trl_mars.sandbox.pool",
    "SandboxUnavailable": "trl_mars.sandbox.pool",
    "ExecutionResult": "trl_mars.sandbox.verdict",
    "Status": "trl_mars.sandbox.verdict",
    "TestVerdict": "trl_mars.sandbox.verdict",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
