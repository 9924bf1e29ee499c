"""Held-out answer accuracy for self-play: does the Solver answer questions with known answers better after training?

* ``movielens_heldout``: the offline default, checkable questions (year, first genre, top tag) about MovieLens movies
  that are *not* among the ``skip`` most-rated ones the corpus and the warm-up use.
* ``load_qa_dataset``: (question, answer) pairs from any hub or local dataset (``datasets.load_dataset``: a hub name,
  a ``.json``/``.jsonl``/``.csv``/``.parquet`` file, or a saved folder), with configurable column names.
* ``answer_accuracy``: each question is asked in the Solver prompt; accuracy = share of samples whose last
  ``\\boxed{}`` answer the grader accepts against the gold answer (``boxed_rate``: share with a boxed answer).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from trl_mars.selfplay.grading import Grader, answers_match, extract_boxed


@dataclass(frozen=True)
class HeldOutResult:
    accuracy: float
    boxed_rate: float
    num_questions: int
    num_samples: int


def movielens_heldout(n: int = 64, skip: int = 150, path: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """``n`` (question, answer) pairs about the movies ranked after the ``skip`` most-rated ones (one question per
    movie, cycling year / genre / tag), so none is about a movie of the tiny demos' corpus or warm-up."""
    from trl_mars.data.movielens import load_movielens
    from trl_mars.selfplay.movielens_corpus import build_movielens_documents, movie_questions

    docs = build_movielens_documents(load_movielens(path), max_movies=skip + 4 * n)
    movies = [d for d in docs if d.level == 4][skip:]
    pairs = []
    for i, doc in enumerate(movies):
        qa = movie_questions(doc)
        if qa:
            pairs.append(qa[i % len(qa)])
        if len(pairs) == n:
            break
    if len(pairs) < n:
        raise ValueError(f"MovieLens has only {len(pairs)} held-out movies after the first {skip}, asked for {n}")
    return pairs


def load_qa_dataset(
    name_or_path: str,
    split: str = "test",
    question_column: str = "question",
    answer_column: str = "answer",
    limit: int | None = None,
) -> list[tuple[str, str]]:
    """(question, answer) pairs from a hub dataset or a local file/folder; answers are stringified. Raises a
    ``ValueError`` naming a missing column."""
    from datasets import load_dataset, load_from_disk

    path = Path(name_or_path)
    suffix = path.suffix.lstrip(".")
    if path.is_dir() and (path / "dataset_info.json").exists():
        data = load_from_disk(str(path))
    elif path.is_file():
        builder = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}.get(suffix)
        if builder is None:
            raise ValueError(f"{name_or_path}: unsupported file type {suffix!r} (json, jsonl, csv, parquet)")
        data = load_dataset(builder, data_files=str(path), split="train")
    else:
        data = load_dataset(name_or_path, split=split)
    if hasattr(data, "keys") and not hasattr(data, "column_names"):
        data = data[split]
    for column in (question_column, answer_column):
        if column not in data.column_names:
            raise ValueError(f"{name_or_path}: no column {column!r} (columns: {data.column_names})")
    rows = data if limit is None else data.select(range(min(limit, len(data))))
    return [(str(r[question_column]), str(r[answer_column])) for r in rows]


def answer_accuracy(
    answer: Callable[[list[str], int], list[list[str]]],
    qa: Sequence[tuple[str, str]],
    samples: int = 1,
    grader: Grader = answers_match,
) -> HeldOutResult:
    """``answer(questions, samples)`` returns ``samples`` completions per question; a completion is right when its
    last ``\\boxed{}`` grades equal to the gold answer (a raising grader counts as wrong).

    >>> fake = lambda qs, k: [[r"\\boxed{4}", "no box"] for _ in qs]
    >>> answer_accuracy(fake, [("2+2?", "4"), ("3+3?", "6")], samples=2)
    HeldOutResult(accuracy=0.25, boxed_rate=0.5, num_questions=2, num_samples=4)
    """
    if not qa:
        raise ValueError("qa must hold at least one (question, answer) pair")
    completions = answer([q for q, _ in qa], samples)
    right = boxed = total = 0
    for (_, gold), outs in zip(qa, completions, strict=True):
        for text in outs:
            total += 1
            pred = extract_boxed(text)
            boxed += pred is not None
            try:
                right += pred is not None and bool(grader(pred, gold))
            except Exception:  # a failing grader counts as a wrong answer
                pass
    return HeldOutResult(right / total, boxed / total, len(qa), total)
