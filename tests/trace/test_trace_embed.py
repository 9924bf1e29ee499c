"""Retrieval metrics, the MovieLens retrieval task, prompts and the collator."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoTokenizer

from trl_mars.embed.collator import TraceCollator, check_columns, image_columns, left_pad, negative_columns
from trl_mars.embed.metrics import retrieval_metrics
from trl_mars.embed.movielens_task import GENRE_PHRASES, decade, movie_description
from trl_mars.embed.prompts import add_emb_token, emb_token_id, prompt_ids, prompt_parts
from trl_mars.losses.trace import IGNORE_INDEX


def test_retrieval_metrics_hand_computed():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.5], [0.1, 0.2, 0.3, 0.4]])
    # query 0 ranking: 0, 1, 3, 2 with relevant {1, 2}; query 1 ranking: 3, 2, 1, 0 with relevant {0}
    m = retrieval_metrics(scores, [{1, 2}, {0}], ks=(1, 2, 4))
    assert m["recall@1"] == 0.0
    assert m["recall@2"] == pytest.approx((0.5 + 0.0) / 2)
    assert m["recall@4"] == pytest.approx(1.0)
    assert m["mrr@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["mrr@4"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    ndcg0 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    ndcg1 = (1 / math.log2(5)) / 1
    assert m["ndcg@4"] == pytest.approx((ndcg0 + ndcg1) / 2)


def test_retrieval_metrics_rejects_bad_input():
    with pytest.raises(ValueError, match="2 score rows but 1"):
        retrieval_metrics(torch.zeros(2, 3), [{0}])
    with pytest.raises(ValueError, match="at least one relevant"):
        retrieval_metrics(torch.zeros(1, 3), [set()])


def test_movielens_task_queries_are_consistent(trace_task):
    task = trace_task
    assert len(task.corpus) == 120 and len(task.train) + len(task.eval) == 240
    train_sources = {q.source for q in task.train}
    assert not train_sources & {q.source for q in task.eval}, "held-out movies must never be a training positive"
    simple = [q for q in task.train + task.eval if not q.complex]
    complex_ = [q for q in task.train + task.eval if q.complex]
    assert len(simple) == len(complex_) == 120
    assert all(q.target == "" for q in simple)
    for q in complex_:
        movie = task.movies[q.source]
        assert q.target.startswith("Genres: ") and f"Decade: {decade(movie.year)}s." in q.target
        # the query paraphrases: no catalogue genre name, but the genre phrase of each genre in the CoT
        genres = q.target.split(". ")[0].removeprefix("Genres: ").split(", ")
        assert all(GENRE_PHRASES[g] in q.text for g in genres)
    for q in task.train + task.eval:
        assert q.source in q.relevant
        tag = q.text.split("tagged ")[-1] if "tagged" in q.text else None
        for movie_id in q.relevant:
            if tag:
                assert tag in movie_description(task.movies[movie_id])


def test_train_rows_follow_sentence_transformers_layout(trace_task):
    rows = trace_task.train_rows(hard_negative=True)
    assert set(rows[0]) == {"query", "query_target", "positive", "negative"}
    text_to_id = dict(zip(trace_task.corpus, trace_task.corpus_ids))
    for q, row in zip(trace_task.train, rows):
        assert text_to_id[row["negative"]] not in q.relevant
        assert text_to_id[row["positive"]] == q.source


def test_columns_are_checked():
    check_columns(["query", "positive", "negative_1"])
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['positive'\]"):
        check_columns(["query", "query_target"])
    check_columns(["query", "positive", "query_image", "positive_image", "negative_1", "negative_1_image"])
    with pytest.raises(ValueError, match=r"\['image'\]; TRACE reads images from 'query_image'"):
        check_columns(["query", "positive", "image"])
    with pytest.raises(ValueError, match=r"image column\(s\) \['negative_2_image'\] without their text column"):
        check_columns(["query", "positive", "negative_1", "negative_2_image"])
    columns = ["negative_2", "query", "negative", "negative_1", "negatives", "negative_image", "negative_1_image"]
    assert negative_columns(columns) == ["negative", "negative_1", "negative_2"]
    assert image_columns([*columns, "positive_image"]) == ["positive_image", "negative_image", "negative_1_image"]


def test_left_pad():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.fixture
def tokenizer(trace_model_path):
    tok = AutoTokenizer.from_pretrained(trace_model_path)
    add_emb_token(tok)
    return tok


def test_emb_token_is_one_special_token(tokenizer):
    emb = emb_token_id(tokenizer)
    assert tokenizer("Genres: Drama.<|emb|>", add_special_tokens=False)["input_ids"][-1] == emb
    assert add_emb_token(tokenizer) == (emb, False)


def test_prompt_ids_truncate_the_text_and_keep_the_suffix(tokenizer):
    parts = prompt_parts(tokenizer, "Query.")
    assert parts.prefix.endswith("user\n") and parts.suffix.endswith("assistant\n")
    full = prompt_ids(tokenizer, parts, "movies tagged time travel", 200)
    assert tokenizer.decode(full) == parts.prefix + "movies tagged time travel" + parts.suffix
    short = prompt_ids(tokenizer, parts, "movies tagged time travel " * 20, 30)
    assert len(short) == 30 and tuple(short[-len(parts.suffix_ids) :]) == parts.suffix_ids
    with pytest.raises(ValueError, match="no room"):
        prompt_ids(tokenizer, parts, "x", len(parts.suffix_ids))


def test_collator_labels_cover_cot_and_emb_only(tokenizer):
    emb = emb_token_id(tokenizer)
    collator = TraceCollator(
        tokenizer, emb, prompt_parts(tokenizer, "Query."), prompt_parts(tokenizer, "Item."), 96, max_target_length=32
    )
    rows = [
        {
            "query": "movies tagged pixar",
            "query_target": "",
            "positive": "Toy Story (1995).",
            "negative": "Heat (1995).",
        },
        {
            "query": "laughs from the nineties",
            "query_target": "Genres: Comedy.",
            "positive": "Friday (1995).",
            "negative": "Se7en.",
        },
    ]
    batch = collator(rows)
    labels = batch["query_labels"]
    kept = [[t for t in row if t != IGNORE_INDEX] for row in labels.tolist()]
    assert kept[0] == [emb]
    assert kept[1] == [*tokenizer("Genres: Comedy.", add_special_tokens=False)["input_ids"], emb]
    assert batch["query_reasons"].tolist() == [False, True]
    for key in ("query_input_ids", "candidate_input_ids", "negative_input_ids"):
        assert (batch[key][:, -1] == emb).all(), f"{key} must end with <|emb|>"
    assert batch["negative_input_ids"].shape[0] == 2
    # the labelled span is the end of the query sequence, right after the generation prompt
    suffix = collator.query_parts.suffix_ids
    row = batch["query_input_ids"][1].tolist()
    assert tuple(row[-len(kept[1]) - len(suffix) : -len(kept[1])]) == suffix
