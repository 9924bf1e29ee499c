"""Evaluation over mixed-modality corpora: hand-computed Hit/Recall@K globally, in local pools and per task,
reasoning rate per task, the candidates encoded once, the text-only call unchanged, and input errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from PIL import Image

from trl_mars.embed.evaluation import (
    RetrievalSet,
    encode_corpus,
    evaluate_retrieval,
    evaluate_retrieval_set,
    image_key,
)
from trl_mars.embed.metrics import retrieval_metrics

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the helper sits here
from fake_encoder import FakeEncoder  # noqa: E402

RED = Image.new("RGB", (4, 4), (255, 0, 0))
BLUE = Image.new("RGB", (4, 4), (0, 0, 255))
K = lambda text, image=None: (text, image_key(image))  # noqa: E731


def mixed_case():
    """4 candidates (text / image / text+image / image path) and 3 queries (text / image / text+image)."""
    corpus = ["a cat", "", "a dog", ""]
    corpus_images = [None, RED, BLUE, "images/x.png"]
    candidates = {K(t, i): v for t, i, v in zip(corpus, corpus_images, torch.eye(4).tolist())}
    queries = ["find red", "", "like this but bigger"]
    query_images = [None, RED.copy(), BLUE.copy()]  # equal pixels, other objects: keyed by content
    query_vectors = {
        K(queries[0]): [0.5, 0.2, 0.9, 0.1],  # ranking c2 c0 c1 c3
        K("", RED): [0.3, 0.8, 0.1, 0.0],  # ranking c1 c0 c2 c3
        K(queries[2], BLUE): [0.4, 0.1, 0.2, 0.3],  # ranking c0 c3 c2 c1
    }
    relevant = [{1}, {0, 2}, {3}]
    tasks = ["a", "b", "a"]
    local_pools = {"a": [1, 3], "b": [0, 2]}
    return corpus, corpus_images, candidates, queries, query_images, query_vectors, relevant, tasks, local_pools


def test_mixed_corpus_metrics_global_local_and_per_task_by_hand():
    corpus, corpus_images, candidates, queries, query_images, query_vectors, relevant, tasks, pools = mixed_case()
    encoder = FakeEncoder(query_vectors, candidates, routed={K("", RED)})
    encoder.model.train()
    results = evaluate_retrieval(
        encoder,
        queries,
        corpus,
        relevant,
        modes=("direct", "routed", "cot"),
        ks=(1, 2, 3),
        is_complex=[False, True, False],
        query_images=query_images,
        corpus_images=corpus_images,
        tasks=tasks,
        local_pools=pools,
        pools=("global", "local"),
        batch_size=2,
    )
    assert encoder.model.training, "the model's training flag is restored"
    direct = results["direct"]
    # global rankings: q0 c2 c0 c1 c3 (relevant 1: rank 3); q1 c1 c0 c2 c3 (relevant {0, 2}: ranks 2, 3);
    # q2 c0 c3 c2 c1 (relevant 3: rank 2)
    assert direct["hit@1"] == 0.0
    assert direct["hit@2"] == pytest.approx(2 / 3) and direct["hit@3"] == 1.0
    assert direct["recall@2"] == pytest.approx((0 + 0.5 + 1) / 3)
    assert direct["recall@3"] == pytest.approx(1.0)
    assert direct["mrr@3"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)
    assert direct["hit@2/a"] == pytest.approx(0.5) and direct["hit@2/b"] == 1.0
    assert direct["recall@2/b"] == pytest.approx(0.5)
    # local pools: a = {1, 3}: q0 c1 c3 (hit at 1), q2 c3 c1 (hit at 1); b = {0, 2}: q1 c0 c2 (both relevant)
    assert direct["local/hit@1"] == 1.0
    assert direct["local/recall@1"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert direct["local/recall@2/b"] == 1.0 and direct["local/hit@1/a"] == 1.0
    # complex split: q1 only
    assert direct["hit@2_complex"] == 1.0 and direct["hit@2_simple"] == pytest.approx(0.5)
    # reasoning: none direct, q1 routed, all cot
    assert direct["reasoning_rate"] == 0.0 and direct["reasoning_rate/b"] == 0.0
    routed, cot = results["routed"], results["cot"]
    assert routed["reasoning_rate"] == pytest.approx(1 / 3)
    assert routed["reasoning_rate/a"] == 0.0 and routed["reasoning_rate/b"] == 1.0
    assert routed["reasoning_rate_complex"] == 1.0 and routed["reasoning_rate_simple"] == 0.0
    assert cot["reasoning_rate/a"] == 1.0 and cot["reasoning_rate/b"] == 1.0
    assert all(row["queries_per_second"] > 0 for row in results.values())
    # the corpus was encoded once, in one call of all 4 candidates with their images; queries carried theirs
    candidate_calls = [c for c in encoder.calls if c["kind"] == "candidate"]
    assert len(candidate_calls) == 1 and candidate_calls[0]["texts"] == corpus
    assert candidate_calls[0]["images"] == corpus_images and candidate_calls[0]["batch"] == 2
    assert all(c["images"] == query_images for c in encoder.calls if c["kind"] == "query")


def test_scores_of_the_reasoned_embedding_and_the_gold_row():
    corpus, corpus_images, candidates, queries, query_images, query_vectors, relevant, tasks, pools = mixed_case()
    reasoned = {K(queries[0]): [0.0, 1.0, 0.0, 0.0]}  # with its CoT, q0 ranks its relevant c1 first
    encoder = FakeEncoder(query_vectors, candidates, reasoned=reasoned, routed={K(queries[0])})
    data = RetrievalSet(
        queries,
        corpus,
        relevant,
        is_complex=[True, False, False],
        gold_reasoning=["the red one", "", ""],
        query_images=query_images,
        corpus_images=corpus_images,
        tasks=tasks,
        local_pools=pools,
    )
    results = evaluate_retrieval_set(encoder, data, modes=("direct", "routed"), ks=(1,))
    assert results["direct"]["hit@1_complex"] == 0.0 and results["routed"]["hit@1_complex"] == 1.0
    assert results["gold"]["hit@1_complex"] == 1.0 and results["gold"]["reasoning_rate/a"] == 0.5
    gold_call = next(c for c in encoder.calls if c["kind"] == "gold")
    assert gold_call["reasoning"] == ["the red one", "", ""] and gold_call["images"] == query_images
    assert set(results) == {"direct", "routed", "gold"}
    assert not any(key.startswith("local/") for key in results["direct"])  # default: the global pool only


def test_text_only_evaluation_calls_the_encoder_without_images():
    encoder = FakeEncoder({K("q0"): [1.0, 0.0], K("q1"): [0.0, 1.0]}, {K("x"): [0.9, 0.1], K("y"): [0.2, 0.8]})
    results = evaluate_retrieval(encoder, ["q0", "q1"], ["x", "y"], [{0}, {0}], modes=("direct",), ks=(1,))
    assert results["direct"]["recall@1"] == 0.5 and results["direct"]["hit@1"] == 0.5
    assert all(c["images"] is None for c in encoder.calls)
    assert not any("/" in key for key in results["direct"])


def test_candidates_with_equal_content_are_encoded_once():
    vectors = {K("t"): [1.0, 0.0], K("", RED): [0.0, 1.0], K("t", RED): [0.5, 0.5]}
    encoder = FakeEncoder({}, vectors)
    encoder.model.eval()
    corpus, images = ["t", "", "t", "", "t"], [None, RED, None, RED.copy(), RED]
    embeddings = encode_corpus(encoder, corpus, images, batch_size=7)
    (call,) = encoder.calls
    assert call["texts"] == ["t", "", "t"] and call["images"] == [None, RED, RED] and call["batch"] == 7
    assert embeddings.tolist() == [vectors[K(t, i)] for t, i in zip(corpus, images)]


def test_hit_rate_is_mbeir_recall_and_pool_masks_are_never_retrieved():
    scores = torch.tensor([[0.9, 0.8, 0.1, -torch.inf], [-torch.inf, -torch.inf, 0.3, 0.4]])
    m = retrieval_metrics(scores, [{1, 2}, {0}], ks=(1, 2, 4))
    assert m["hit@1"] == 0.0 and m["hit@2"] == 0.5 and m["recall@2"] == pytest.approx(0.25)
    # query 1's only relevant item is masked: it is never a hit, even at K = corpus size
    assert m["hit@4"] == 0.5 and m["recall@4"] == 0.5 and m["mrr@4"] == pytest.approx(1 / 4)


def test_from_dataset_with_image_columns():
    rows = Dataset.from_list(
        [
            {"query": "q0", "positive": "", "positive_image": RED, "query_image": None},
            {"query": "", "positive": "a dog", "positive_image": None, "query_image": BLUE},
            {"query": "q2", "positive": "", "positive_image": RED, "query_image": BLUE},
            {"query": "q3", "positive": "", "positive_image": BLUE, "query_image": None},
        ]
    )
    data = RetrievalSet.from_dataset(rows)
    assert data.corpus == ["", "a dog", ""] and data.relevant == [{0}, {1}, {0}, {2}]
    assert [image_key(i) for i in data.corpus_images] == [image_key(RED), None, image_key(BLUE)]
    assert data.query_images[0] is None and image_key(data.query_images[1]) == image_key(BLUE)
    with pytest.raises(ValueError, match=r"test rows \[3\] have a 'positive' that is not in the corpus"):
        RetrievalSet.from_dataset(rows, corpus=["", "a dog"], corpus_images=[RED, None], name="test")
    with pytest.raises(ValueError, match="corpus_images needs corpus"):
        RetrievalSet.from_dataset(rows, corpus_images=[RED, None])


def test_table_columns_fit_long_keys():
    from trl_mars.embed.evaluation import format_table

    key = "local/hit@10/fashion200k_task3"
    header, row = format_table({"direct": {key: 0.5, "hit@1": 0.25}}, [key, "hit@1"]).splitlines()
    assert header == f"{'mode':<8}{key:>32}{'hit@1':>24}" and row == f"{'direct':<8}{0.5:>32.4f}{0.25:>24.4f}"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"pools": ("local",), "tasks": None}, r"pools='local' needs a task per query"),
        ({"pools": ("union",)}, r"pools must be a non-empty subset"),
        ({"tasks": ["a", "b"]}, r"tasks has 2 entries for 3 queries"),
        ({"corpus_images": [None]}, r"corpus_images has 1 entries for 4 candidates"),
        ({"local_pools": {"a": [1, 3], "b": [0]}}, r"query 1: relevant items \[2\] are not in the local pool of 'b'"),
        ({"local_pools": {"a": [1, 3]}}, r"query 1: task 'b' has no local pool"),
        ({"local_pools": {"a": [1, 9], "b": [0, 2]}}, r"local pool 'a' has indices \[9\] outside the corpus of 4"),
        ({"relevant": [{1}, {0, 7}, {3}]}, r"query 1: relevant \[0, 7\] must be non-empty indices"),
    ],
)
def test_inconsistent_inputs_fail_before_any_encoding(kwargs, message):
    corpus, corpus_images, candidates, queries, query_images, query_vectors, relevant, tasks, pools = mixed_case()
    encoder = FakeEncoder(query_vectors, candidates)
    args = dict(
        relevant=relevant,
        query_images=query_images,
        corpus_images=corpus_images,
        tasks=tasks,
        local_pools=pools,
        pools=("global", "local"),
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        evaluate_retrieval(encoder, queries, corpus, args.pop("relevant"), **args)
    assert encoder.calls == []


def test_chunked_ranking_equals_the_full_ranking_and_respects_pools():
    from trl_mars.embed.evaluation import pool_rows, rank

    generator = torch.Generator().manual_seed(0)
    queries, corpus = torch.randn(7, 4, generator=generator), torch.randn(9, 4, generator=generator)
    full = (queries @ corpus.T).topk(3, dim=1).indices.tolist()
    assert rank(queries, corpus, 3, chunk=2) == full == rank(queries, corpus, 3)
    rows = pool_rows(9, {"a": [0, 1, 2, 3], "b": [8]})
    tasks = ["a", "b"] * 3 + ["a"]
    ranked = rank(queries, corpus, 3, tasks, rows, chunk=3)
    assert all(r == [8] for r, t in zip(ranked, tasks) if t == "b")  # a one-item pool: one item ranked
    for q, (r, t) in enumerate(zip(ranked, tasks)):
        if t == "a":
            assert r == sorted(range(4), key=lambda j: -float(queries[q] @ corpus[j]))[:3]
