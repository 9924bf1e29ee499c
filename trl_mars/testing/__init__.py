"""Offline test fixtures shipped with the package: tiny tokenizer, tiny causal LMs and tiny VLMs built from configs."""

from trl_mars.testing.tiny_models import (
    CHAT_TEMPLATE,
    TINY_ARCHS,
    TINY_VLM_ARCHS,
    VISION_TOKENS,
    VL_CHAT_TEMPLATE,
    add_vision_tokens,
    build_tiny_tokenizer,
    save_tiny_model,
    save_tiny_vlm,
    tiny_config,
    tiny_model_path,
    tiny_vlm_config,
    tiny_vlm_path,
)

__all__ = [
    "CHAT_TEMPLATE",
    "TINY_ARCHS",
    "TINY_VLM_ARCHS",
    "VISION_TOKENS",
    "VL_CHAT_TEMPLATE",
    "add_vision_tokens",
    "build_tiny_tokenizer",
    "save_tiny_model",
    "save_tiny_vlm",
    "tiny_config",
    "tiny_model_path",
    "tiny_vlm_config",
    "tiny_vlm_path",
]
