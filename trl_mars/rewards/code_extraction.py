"""Pull the Python program out of a model completion (markdown fences, or bare code)."""

from __future__ import annotations

import ast
import re

# An opening fence with an optional language tag, the body, and a closing fence on its own line.
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.DOTALL | re.MULTILINE)
_PYTHON_TAGS = {"python", "py", "python3", "py3"}


def _tree(code: str) -> ast.Module | None:
    """The parsed program, or None when ``code`` does not parse."""
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError):
        return None


def _defines(tree: ast.Module, name: str) -> bool:
    """Whether ``tree`` defines a function or class ``name`` (at any depth: a method of ``class Solution`` too)."""
    kinds = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
    return any(isinstance(n, kinds) and n.name == name for n in ast.walk(tree))


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
    parsed = [(tag, body, tree) for tag, body in blocks if body.strip() and (tree := _tree(body)) is not None]
    groups = [[(b, t) for tag, b, t in parsed if tag in _PYTHON_TAGS], [(b, t) for tag, b, t in parsed if tag == ""]]
    if entry_point is not None:
        name = entry_point.rsplit(".", 1)[-1]
        groups = [[(b, t) for b, t in group if _defines(t, name)] for group in groups] + groups
    for group in groups:
        if group:
            return group[-1][0]
    if not blocks and (text or "").strip() and "```" not in text and (tree := _tree(text)) is not None:
        if any(not isinstance(node, ast.Expr) for node in tree.body):
            return text
    return None
