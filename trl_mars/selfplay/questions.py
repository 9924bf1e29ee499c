"""Role prompts and Challenger-output parsing.

Two Challenger formats: ``tags`` (R-Zero: ``<question>...</question>`` then ``\\boxed{answer}``) and ``json`` (WIST:
a JSON object with ``question`` and ``correct_answer``, grounded in a document). Unparseable or rule-breaking output
is never an error: it yields a ``ParsedQuestion`` with ``error`` set, which the trainer scores as invalid.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trl_mars.selfplay.grading import extract_boxed

CHALLENGER_SYSTEM_TAGS = (
    "You are an expert competition problem setter. Write one new, hard, self-contained question that fewer than 30% "
    "of strong students could answer. Output the question inside <question>...</question>, then its final answer "
    "as \\boxed{final_answer}."
)
CHALLENGER_USER_TAGS = "Write one new question now."

CHALLENGER_JSON = (
    "You write exam questions grounded in a document. Topic path: {path}.\n"
    "Document (ignore anything off the topic path):\n{text}\n\n"
    "Find a fact in the document that belongs to the topic path and turn it into one hard, self-contained "
    "{kind} question that does not mention the document. Reply with JSON only: "
    '{{"question": "...", "correct_answer": "..."}}'
)
_KINDS = {"free": "free-form (short answer: a number, a year or a few words)", "mcq": "multiple-choice (options A-D)"}

SOLVER_PROMPT = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."

EXPANSION_PROMPT = (
    "We are building a topic tree. Path: {path}.\nExisting children: {children}.\nSiblings of the parent (avoid "
    "these): {siblings}.\nPropose ONE new {kind} under the last topic of the path that is not an existing child. "
    "Answer as [Proposition Start]name[Proposition End], or say 'no more' if the topic is exhausted."
)

QUESTION_BLACKLIST = ("the text", "in the passage", "based on the given", "the document", "the section", "figure")
ANSWER_BLACKLIST = ("integer", "number", "expression", "theorem", "undefined")
_QUESTION_TAG_RE = re.compile(r"<question>(.*?)</question>", re.DOTALL | re.IGNORECASE)
_OPTIONS_RE = re.compile(r"(?:^|\s|\()([A-D])[).:]\s", re.MULTILINE)


@dataclass(frozen=True)
class ParsedQuestion:
    """A parsed Challenger output; ``error`` says why it is invalid (None when valid)."""

    question: str | None = None
    answer: str | None = None
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.error is None


def challenger_messages(question_format: str, path: str = "", text: str = "", question_type: str = "free") -> list:
    """Chat messages of a Challenger prompt (``tags``: fixed prompt; ``json``: grounded in path and document)."""
    if question_format == "tags":
        return [
            {"role": "system", "content": CHALLENGER_SYSTEM_TAGS},
            {"role": "user", "content": CHALLENGER_USER_TAGS},
        ]
    return [{"role": "user", "content": CHALLENGER_JSON.format(path=path, text=text, kind=_KINDS[question_type])}]


def solver_messages(question: str) -> list:
    return [{"role": "user", "content": SOLVER_PROMPT.format(question=question)}]


def expansion_messages(path: str, children: list[str], siblings: list[str], leaf: bool) -> list:
    kind = "atomic knowledge point" if leaf else "sub-topic"
    content = EXPANSION_PROMPT.format(
        path=path, children=", ".join(children) or "none", siblings=", ".join(siblings) or "none", kind=kind
    )
    return [{"role": "user", "content": content}]


def parse_tagged_question(text: str, min_chars: int = 1) -> ParsedQuestion:
    """R-Zero format: the question inside ``<question>`` tags (required) and an optional ``\\boxed{}`` answer."""
    match = _QUESTION_TAG_RE.search(text)
    if match is None:
        return ParsedQuestion(error="missing <question> tags")
    question = match.group(1).strip()
    if len(question) < min_chars:
        return ParsedQuestion(question=question, error=f"question shorter than {min_chars} characters")
    return ParsedQuestion(question=question, answer=extract_boxed(text[match.end() :]))


def _balanced_objects(text: str):
    """Top-level balanced ``{...}`` spans of ``text`` in order, in one pass (braces inside JSON strings ignored)."""
    depth, start, in_string, escaped = 0, -1, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"' and depth:
            in_string = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                yield text[start : i + 1]


def _first_json_object(text: str) -> dict | None:
    """The first top-level ``{...}`` span that parses as a JSON object, or None; linear in ``len(text)`` (each
    character is scanned once and belongs to at most one parsed span).

    >>> _first_json_object('Sure: {"a": "}{"} and {"b": 1}')
    {'a': '}{'}
    >>> _first_json_object('{oops} then {"q": [1, {"x": 2}]}')
    {'q': [1, {'x': 2}]}
    """
    for span in _balanced_objects(text):
        try:
            obj = json.loads(span)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _non_english_ratio(text: str) -> float:
    words = text.split()
    if not words:
        return 1.0
    return sum(1 for w in words if not w.isascii()) / len(words)


def parse_json_question(
    text: str,
    question_type: str = "free",
    min_chars: int = 50,
    document: str | None = None,
    max_answer_words: int = 5,
) -> ParsedQuestion:
    """WIST format: a JSON object with ``question`` and ``correct_answer``, checked with WIST's validity rules.

    Rules: question >= ``min_chars`` characters and free of blacklisted phrases; non-English word ratio <= 0.2;
    ``mcq`` needs options A-D and a single-letter answer; ``free`` needs no options and an answer of at most
    ``max_answer_words`` words, free of blacklisted words; with ``document``, a free-form answer must occur in it
    (a checkable, document-derived answer).
    """
    obj = _first_json_object(text)
    if obj is None:
        return ParsedQuestion(error="no JSON object")
    question, answer = obj.get("question"), obj.get("correct_answer")
    if not isinstance(question, str) or not isinstance(answer, str | int | float) or isinstance(answer, bool):
        return ParsedQuestion(error="missing question or correct_answer")
    question, answer = question.strip(), str(answer).strip()
    low_q, low_a = question.casefold(), answer.casefold()
    if len(question) < min_chars:
        return ParsedQuestion(question, answer, f"question shorter than {min_chars} characters")
    if any(phrase in low_q for phrase in QUESTION_BLACKLIST):
        return ParsedQuestion(question, answer, "question refers to the document")
    if _non_english_ratio(question) > 0.2:
        return ParsedQuestion(question, answer, "question is not English")
    has_options = len(set(_OPTIONS_RE.findall(question))) == 4
    if question_type == "mcq":
        letter = answer.strip("() .").upper()
        if not has_options or letter not in ("A", "B", "C", "D"):
            return ParsedQuestion(question, answer, "mcq needs options A-D and a letter answer")
        return ParsedQuestion(question, letter)
    if has_options:
        return ParsedQuestion(question, answer, "free-form question has options")
    if not answer or len(answer.split()) > max_answer_words or any(w in low_a for w in ANSWER_BLACKLIST):
        return ParsedQuestion(question, answer, "answer is not a short checkable value")
    if document is not None and low_a not in document.casefold():
        return ParsedQuestion(question, answer, "answer not found in the document")
    return ParsedQuestion(question, answer)


def subsample_keep_ratio(valid: Sequence[bool], g: int, rng: np.random.Generator) -> list[int]:
    """Indices (ascending) of ``g`` of the ``C = len(valid)`` candidates, keeping WIST's valid:invalid ratio.

    With v valid candidates, ``n = floor(g * v / C + 1/2)`` valid ones are kept, clamped to ``[1, g - 1]`` when both
    kinds exist (at least one of each), then to what is available; the rest are invalid ones. Which candidates of
    each kind are kept is drawn uniformly by ``rng``. ``C == g`` keeps every candidate.

    >>> valid = [True, True, True, False] * 4  # 12 valid of 16
    >>> keep = subsample_keep_ratio(valid, 8, np.random.default_rng(0))
    >>> len(keep), sum(valid[i] for i in keep)  # 8 * 12/16 = 6 valid, 2 invalid
    (8, 6)
    >>> one, all_but_one = [True] + [False] * 15, [True] * 15 + [False]
    >>> [sum(v[i] for i in subsample_keep_ratio(v, 8, np.random.default_rng(0))) for v in (one, all_but_one)]
    [1, 7]
    """
    c = len(valid)
    if not 0 < g <= c:
        raise ValueError(f"cannot keep {g} of {c} candidates")
    valid_ids = [i for i, v in enumerate(valid) if v]
    invalid_ids = [i for i, v in enumerate(valid) if not v]
    n_valid = math.floor(g * len(valid_ids) / c + 0.5)
    if valid_ids and invalid_ids:
        n_valid = min(max(n_valid, 1), g - 1)
    n_valid = max(min(n_valid, len(valid_ids)), g - len(invalid_ids))
    keep = [*rng.choice(valid_ids, n_valid, replace=False), *rng.choice(invalid_ids, g - n_valid, replace=False)]
    return sorted(int(i) for i in keep)


_PROPOSITION_RE = re.compile(r"\[Proposition Start\](.*?)\[Proposition End\]", re.DOTALL | re.IGNORECASE)


def parse_proposition(text: str) -> str | None:
    """The label inside ``[Proposition Start]...[Proposition End]``; ``"no more"`` is returned as such; else None."""
    match = _PROPOSITION_RE.search(text)
    if match:
        return match.group(1).strip()
    return "no more" if "no more" in text.casefold() else None
