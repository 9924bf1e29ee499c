"""Scripted SFT warm-up so that a tiny (random) model emits parseable self-play output some of the time.

``warmup_examples`` writes role-formatted (prompt, completion) chats from MovieLens movie documents: Challenger
questions in the tags or JSON format, Solver answers in ``\\boxed{}``, and tree proposals at every level (genre,
sub-genre, movie), for
``trl_mars.utils.warmup.sft_warmup``. ``tiny_model_for_warmup`` re-initialises the offline tiny model with a
tokenizer fitted to those chats: the stock tiny tokenizer is fitted to code tasks and spends ~80 tokens on one tagged
question (``<question>`` alone is 5), too many for a 2-layer model to learn to close the tags in a short warm-up; the
fitted one spends ~32. It is a recipe-level convenience for CPU demos, not part of the methods.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from trl_mars.selfplay.corpus import Document
from trl_mars.selfplay.movielens_corpus import DOMAIN, movie_questions, subgenre_title
from trl_mars.selfplay.questions import challenger_messages, expansion_messages, solver_messages
from trl_mars.testing import build_tiny_tokenizer, save_tiny_model


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
        kind = int(rng.integers(3 if task_source == "tree" else 2))  # tree proposals only where a tree grows
        if kind == 0 and task_source == "tree":
            prompt = challenger_messages("json", f"{_movie_path(doc)} > {doc.title}", doc.text)
            reply = json.dumps({"question": question, "correct_answer": answer})
        elif kind == 0:
            prompt, reply = challenger_messages("tags"), f"<question>{question}</question> \\boxed{{{answer}}}"
        elif kind == 1:
            prompt, reply = solver_messages(question), f"\\boxed{{{answer}}}"
        else:
            prompt, label = _proposal(doc, int(rng.integers(3)))
            reply = f"[Proposition Start]{label}[Proposition End]"
        chats.append([*prompt, {"role": "assistant", "content": reply}])
    return chats


def _proposal(doc: Document, depth: int) -> tuple[list[dict], str]:
    """A tree-expansion prompt one step below the movie's path ``Movies > genre > genre with other > title`` (depth 0:
    propose its genre under ``Movies``; 1: its sub-genre under the genre; 2: the movie under the sub-genre), and the
    label to propose. A single-genre movie is proposed as a leaf under its genre."""
    genres = doc.facts["genres"]
    if depth == 0:
        return expansion_messages(DOMAIN, [], [], leaf=False), genres[0]
    if depth == 1 and len(genres) > 1:
        return expansion_messages(f"{DOMAIN} > {genres[0]}", [], [], leaf=False), subgenre_title(*genres[:2])
    return expansion_messages(_movie_path(doc), [], [], leaf=True), doc.title


def _movie_path(doc: Document) -> str:
    """``Movies > genre > genre with other`` (``Movies > genre`` for a single-genre movie)."""
    genres = doc.facts["genres"]
    return f"{DOMAIN} > {genres[0]}" + (f" > {subgenre_title(*genres[:2])}" if len(genres) > 1 else "")


def tiny_model_for_warmup(
    arch: str, chats: Sequence[list[dict]], output_dir: str | os.PathLike, seed: int = 0, vocab_size: int = 1024
) -> str:
    """A randomly initialised tiny ``arch`` model whose byte-level BPE tokenizer is fitted to the chats' text."""
    tokenizer = build_tiny_tokenizer(corpus=[m["content"] for chat in chats for m in chat], vocab_size=vocab_size)
    return str(save_tiny_model(arch, output_dir, tokenizer=tokenizer, seed=seed))
