"""Offline test fixtures shipped with the package: tiny tokenizer and tiny causal LMs built from configs."""

from trl_mars.testing.tiny_models import (
    CHAT_TEMPLATE,
    TINY_ARCHS,
    build_tiny_tokenizer,
    save_tiny_model,
    tiny_config,
    tiny_model_path,
)

__all__ = ["CHAT_TEMPLATE", "TINY_ARCHS", "build_tiny_tokenizer", "save_tiny_model", "tiny_config", "tiny_model_path"]
