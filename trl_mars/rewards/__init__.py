"""Reward functions with the TRL signature ``reward_func(prompts, completions, **kwargs) -> list[float]``."""

from trl_mars.rewards.code import completion_text, make_code_reward, score_completions
from trl_mars.rewards.code_extraction import extract_code

__all__ = ["completion_text", "extract_code", "make_code_reward", "score_completions"]
