"""What an expanding agent sees.

A first answer sees only the problem. A refinement sees the problem (the authors' code drops it; set
``include_problem=False`` to reproduce that), the parent's code and the verifier's feedback on it: a one-line
summary, or (MARS²-T+) the failing input, expected and actual output, or the error type and traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trl_mars.search.tree import Node

FeedbackMode = Literal["summary", "detailed"]
NO_CODE_FEEDBACK = "Your previous answer did not contain a Python code block (```python ... ```)."


@dataclass(frozen=True)
class PromptConfig:
    """How prompts are built; ``feedback`` applies to refinements only (first answers never see feedback)."""

    feedback: FeedbackMode = "summary"
    include_problem: bool = True
    system_prompt: str | None = None
    max_code_chars: int = 4000
    max_feedback_chars: int = 2000


def _messages(user: str, config: PromptConfig) -> list[dict[str, str]]:
    system = [{"role": "system", "content": config.system_prompt}] if config.system_prompt else []
    return [*system, {"role": "user", "content": user}]


def first_prompt(question: str, config: PromptConfig) -> list[dict[str, str]]:
    return _messages(question, config)


def feedback_text(node: Node, mode: FeedbackMode, max_chars: int) -> str:
    """The verifier's words on ``node``: its summary line, or its detailed report, truncated to ``max_chars``."""
    if node.code is None:
        return NO_CODE_FEEDBACK
    text = node.feedback.get(mode) or node.feedback.get("summary", "")
    return text if len(text) <= max_chars else text[: max_chars - 15] + "\n... (truncated)"


def refinement_prompt(question: str, parent: Node, config: PromptConfig) -> list[dict[str, str]]:
    """Problem + the parent's code + feedback on it, as one fresh user turn."""
    parts = [question] if config.include_problem else []
    if parent.code is not None:
        code = parent.code[: config.max_code_chars]
        parts.append(f"Your previous code:\n```python\n{code.rstrip()}\n```")
    parts.append(feedback_text(parent, config.feedback, config.max_feedback_chars))
    parts.append("Fix the code so that all tests pass. Answer with the full function in one ```python block.")
    return _messages("\n\n".join(parts), config)
