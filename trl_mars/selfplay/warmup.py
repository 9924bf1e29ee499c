"""Scripted SFT warm-up so that a tiny (random) model emits parseable self-play output some of the time.

``warmup_examples`` writes role-formatted (prompt, completion) chats from MovieLens movie documents: Challenger
questions in the tags or JSON format, Solver answers in ``\\boxed{}``, and tree proposals, for
``trl_mars.utils.warmup.sft_warmup``. It is a recipe-level convenience for CPU demos, not part of the methods.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from trl_mars.selfplay.corpus import Document
from trl_mars.selfplay.movielens_corpus import movie_questions
from trl_mars.selfplay.questions import challenger_messages, expansion_messages, solver_messages


def warmup_examples(documents: Sequence[Document], task_source: str, n: int, seed: int = 0) -> list[list[dict]]:
    """``n`` chats (messages ending with the assistant turn) over the movie documents (level 4)."""
    movies = [d for d in documents if d.level == 4 and movie_questions(d)]
    if not movies:
        raise ValueError("warm-up needs movie documents (level 4) with at least one checkable fact")
    rng = np.random.default_rng(seed)
    chats = []
    for _ in range(n):
        doc = movies[int(rng.integers(len(movies)))]
        qa = movie_questions(doc)
        question, answer = qa[int(rng.integers(len(qa)))]
        kind = int(rng.integers(3))
        if kind == 0 and task_source == "tree":
            prompt = challenger_messages("json", f"Movies > {doc.facts['genres'][0]} > {doc.title}", doc.text)
            reply = json.dumps({"question": question, "correct_answer": answer})
        elif kind == 0:
            prompt, reply = challenger_messages("tags"), f"<question>{question}</question> \\boxed{{{answer}}}"
        elif kind == 1:
            prompt, reply = solver_messages(question), f"\\boxed{{{answer}}}"
        else:
            prompt = expansion_messages(f"Movies > {doc.facts['genres'][0]}", [], [], leaf=True)
            reply = f"[Proposition Start]{doc.title}[Proposition End]"
        chats.append([*prompt, {"role": "assistant", "content": reply}])
    return chats
