"""Shared utilities: checkpointed method state, recipe argument parsing."""

from trl_mars.utils.checkpoint import (
    MethodStateMixin,
    atomic_write_json,
    last_complete_checkpoint,
    load_method_state,
    save_method_state,
)
from trl_mars.utils.recipes import TINY_MODEL_IDS, parse_recipe_args, resolve_model_path

__all__ = [
    "TINY_MODEL_IDS",
    "MethodStateMixin",
    "atomic_write_json",
    "last_complete_checkpoint",
    "load_method_state",
    "parse_recipe_args",
    "resolve_model_path",
    "save_method_state",
]
