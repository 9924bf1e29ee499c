"""The trainers, one config + trainer per method; imported lazily (``from trl_mars import MultiAgentTreeTrainer``)."""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "MultiAgentTreeConfig": "trl_mars.trainers.mars2_config",
    "MultiAgentTreeTrainer": "trl_mars.trainers.mars2_trainer",
    "SelfPlayConfig": "trl_mars.trainers.selfplay_config",
    "SelfPlayTrainer": "trl_mars.trainers.selfplay_trainer",
    "ReRecConfig": "trl_mars.trainers.rerec_config",
    "ReasoningRecTrainer": "trl_mars.trainers.rerec_trainer",
    "TraceConfig": "trl_mars.trainers.trace_config",
    "TraceEmbedTrainer": "trl_mars.trainers.trace_trainer",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
