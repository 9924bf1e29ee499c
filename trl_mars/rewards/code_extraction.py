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


def _defines(code: str, name: str) -> bool:
    """Whether ``code`` defines a function or class ``name`` (at any depth: a method of ``class Solution`` too)."""
    nodes = ast.walk(ast.parse(code))
    return any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and n.name == name for n in nodes)


def extract_code(text: str, entry_point: str | None = None) -> str | None:
    r"""The LAST fenced ``python``/``py`` block that parses; else the last untagged block that parses; else the
    whole text when it parses as a program with at least one statement; else ``None``.

    With an ``entry_point``, a block that defines it comes first (the last such python block, then untagged):
    models often answer with the function and then a usage example, whose block is the last one.

    >>> answer = "```python\ndef f(x):\n    return x\n```\nUse it:\n```python\nprint(f(1))\n```"
    >>> extract_code(answer)
    'print(f(1))\n'
    >>> extract_code(answer, entry_point="f")
    'def f(x):\n    return x\n'
    """
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(text or "")]
    parsing = [(tag, body) for tag, body in blocks if body.strip() and _parses(body)]
    preferences = [lambda t, b: t in _PYTHON_TAGS, lambda t, b: t == ""]
    if entry_point is not None:
        name = entry_point.rsplit(".", 1)[-1]
        preferences = [lambda t, b, w=w: w(t, b) and _defines(b, name) for w in preferences] + preferences
    for wanted in preferences:
        for tag, body in reversed(parsing):
            if wanted(tag, body):
                return body
    if not blocks and (text or "").strip() and "```" not in text and _parses(text):
        tree = ast.parse(text)
        if any(not isinstance(node, ast.Expr) for node in tree.body):
            return text
    return None
