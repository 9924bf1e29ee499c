"""Pull the Python program out of a model completion (markdown fences, or bare code)."""

from __future__ import annotations

import ast
import re

# An opening fence with an optional language tag, the body, and a closing fence on its own line.
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.DOTALL | re.MULTILINE)
_PYTHON_TAGS = {"python", "py", "python3", "py3"}


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def extract_code(text: str) -> str | None:
    """The LAST fenced ``python``/``py`` block that parses; else the last untagged block that parses; else the
    whole text when it parses as a program with at least one statement; else ``None``."""
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(text or "")]
    for wanted in (lambda t: t in _PYTHON_TAGS, lambda t: t == ""):
        for tag, body in reversed(blocks):
            if wanted(tag) and body.strip() and _parses(body):
                return body
    if not blocks and (text or "").strip() and "```" not in text and _parses(text):
        tree = ast.parse(text)
        if any(not isinstance(node, ast.Expr) for node in tree.body):
            return text
    return None
