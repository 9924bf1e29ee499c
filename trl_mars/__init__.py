"""trl-mars: research-grade RL and training methods for LLMs on top of Hugging Face TRL."""

from typing import Any

__version__ = "0.1.0.dev0"

from trl_mars.trainers import __all__ as _TRAINERS  # noqa: E402 - the names only, nothing heavy is imported

__all__ = list(_TRAINERS)


def __getattr__(name: str) -> Any:
    if name in _TRAINERS:
        import trl_mars.trainers

        return getattr(trl_mars.trainers, name)
    raise AttributeError(f"module 'trl_mars' has no attribute {name!r}")
