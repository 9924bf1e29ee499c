"""Answer extraction and grading for self-play questions.

``extract_boxed`` takes the last ``\\boxed{...}`` (nested braces allowed). ``answers_match`` is the default grader:
equal after normalisation (case, spaces, ``\\text{}``, trailing punctuation, a leading ``(A)``-style option), or equal
as numbers (``0.5`` == ``1/2`` == ``50%``, relative tolerance 1e-6). ``math_verify_grader`` wraps the optional
``math-verify`` package. Graders may raise: callers count a raised grader as a mismatch.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction

Grader = Callable[[str, str], bool]

_TEXT_RE = re.compile(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}")
_OPTION_RE = re.compile(r"^\(?([a-d])\)?(?:[.:)]\s*|\s+|$)")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (balanced braces), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def normalize_answer(answer: str) -> str:
    """Case-folded, ``\\text{x}`` -> ``x``, ``$``/spaces/trailing ``.`` removed, ``(A) foo`` -> ``a``."""
    out = _TEXT_RE.sub(r"\1", answer).replace("$", "").strip().casefold().rstrip(".")
    option = _OPTION_RE.match(out)
    if option and (len(out) <= 3 or out[option.end() :].strip() == ""):
        return option.group(1)
    return " ".join(out.split())


def _as_number(text: str) -> Fraction | None:
    text = text.replace(",", "").replace(" ", "")
    scale = Fraction(1, 100) if text.endswith("%") else Fraction(1)
    text = text.rstrip("%")
    frac = re.fullmatch(r"\\[dt]?frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", text)
    if frac:
        text = f"{frac.group(1)}/{frac.group(2)}"
    try:
        return Fraction(text) * scale
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(prediction: str, reference: str) -> bool:
    """Default grader: normalised string equality or numeric equality (relative tolerance 1e-6)."""
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    if not pred or not ref:
        return False
    if pred == ref:
        return True
    a, b = _as_number(pred), _as_number(ref)
    if a is None or b is None:
        return False
    return abs(a - b) <= Fraction(1, 10**6) * max(1, abs(b))


def math_verify_grader(prediction: str, reference: str) -> bool:
    """Grade with ``math-verify`` (``pip install math-verify``): parse both sides and ``verify(gold, pred)``."""
    from math_verify import parse, verify

    return bool(verify(parse(f"${reference}$"), parse(f"${prediction}$")))


GRADERS: dict[str, Grader] = {"default": answers_match, "math_verify": math_verify_grader}


def get_grader(name: str) -> Grader:
    """The grader called ``name``; ``math_verify`` requires the optional package to be importable."""
    if name not in GRADERS:
        raise ValueError(f"grader must be one of {sorted(GRADERS)}, got {name!r}")
    if name == "math_verify":
        from trl_mars.extras import require

        require("math_verify", "math", "grader='math_verify'", package="math-verify")
    return GRADERS[name]
