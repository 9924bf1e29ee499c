"""Retrieval evaluation on any query/positive dataset and the gold-reasoning row; the recipe on a user's dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from trl_mars.embed.evaluation import RetrievalSet, evaluate_retrieval_set
from trl_mars.embed.metrics import retrieval_metrics
from trl_mars.losses.trace import pool_pre_token
from trl_mars.trainers.trace_trainer import TraceEmbedTrainer

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "trace.py"


def test_retrieval_set_from_a_dataset():
    rows = Dataset.from_list(
        [
            {"query": "q0", "positive": "b", "query_target": ""},
            {"query": "q1", "positive": "a", "query_target": "Genres: Drama."},
            {"query": "q2", "positive": "b", "query_target": ""},
        ]
    )
    data = RetrievalSet.from_dataset(rows)
    assert data.corpus == ["b", "a"] and data.relevant == [{0}, {1}, {0}]
    assert data.is_complex == [False, True, False] and data.gold_reasoning == ["", "Genres: Drama.", ""]
    with_corpus = RetrievalSet.from_dataset(rows.remove_columns("query_target"), corpus=["x", "a", "b"])
    assert with_corpus.relevant == [{2}, {1}, {2}] and with_corpus.is_complex is None
    with pytest.raises(ValueError, match=r"test rows \[0, 2\] have a 'positive' that is not in the corpus"):
        RetrievalSet.from_dataset(rows, corpus=["a"], name="test")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['positive'\]"):
        RetrievalSet.from_dataset(rows.remove_columns("positive"))


def test_gold_row_embeds_the_training_query_and_reports_complex_queries(trace_model_path, trace_args, trace_task):
    rows = trace_task.train_rows(hard_negative=False)[:8]
    trainer = TraceEmbedTrainer(trace_model_path, args=trace_args(), train_dataset=Dataset.from_list(rows))
    encoder = trainer.encoder()
    encoder.model.eval()
    texts, targets = [r["query"] for r in rows], [r["query_target"] for r in rows]
    assert any(targets) and not all(targets)
    gold = encoder.encode_with_reasoning(texts, targets)
    batch = trainer.data_collator(rows)  # the training-time query embedding of [prompt; CoT; <|emb|>]
    with torch.no_grad():
        out = encoder.model(
            batch["query_input_ids"], attention_mask=batch["query_attention_mask"], output_hidden_states=True
        )
    expected = pool_pre_token(out.hidden_states[-1], batch["query_input_ids"], trainer.emb_token_id)
    torch.testing.assert_close(gold.embeddings, expected, atol=1e-5, rtol=1e-4)
    assert gold.reasoned == [bool(t) for t in targets]

    data = trace_task.eval_set()
    results = evaluate_retrieval_set(encoder, data, modes=("direct",), ks=(10,))
    assert list(results) == ["direct", "gold"]
    corpus = encoder.encode(data.corpus, kind="candidate")
    complex_rows = [i for i, c in enumerate(data.is_complex) if c]
    queries = encoder.encode_with_reasoning(
        [data.queries[i] for i in complex_rows], [data.gold_reasoning[i] for i in complex_rows]
    )
    want = retrieval_metrics(queries.embeddings @ corpus.T, [data.relevant[i] for i in complex_rows], (10,))
    assert results["gold"]["recall@10_complex"] == pytest.approx(want["recall@10"], abs=1e-6)
    assert results["gold"]["reasoning_rate_complex"] == 1.0 and results["gold"]["reasoning_rate_simple"] == 0.0


@pytest.mark.slow
def test_recipe_evaluates_a_users_dataset(trace_task, tmp_path, tiny_cache):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    train, test = trace_task.train_rows(hard_negative=False)[:32], trace_task.eval[:10]
    (data_dir / "train.jsonl").write_text("\n".join(json.dumps(r) for r in train))
    text = dict(zip(trace_task.corpus_ids, trace_task.corpus))
    rows = [{"query": q.text, "positive": text[q.source], "query_target": q.target} for q in test]
    (data_dir / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "corpus.txt").write_text("\n".join(trace_task.corpus[:60] + [r["positive"] for r in rows]))
    env = {**os.environ, "TRL_MARS_CACHE": str(tiny_cache), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    cmd = [sys.executable, str(RECIPE), "--output_dir", str(out), "--dataset_name", str(data_dir)]
    cmd += ["--corpus_path", str(tmp_path / "corpus.txt"), "--max_steps", "2", "--eval_ks", "1", "10"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"[trace eval] after training (10 held-out queries, corpus {60 + 10})" in result.stdout
    report = json.loads((out / "retrieval_eval.json").read_text())
    assert set(report["after"]) == {"direct", "cot", "routed", "gold"}
    assert 0.0 <= report["after"]["gold"]["recall@10"] <= 1.0
