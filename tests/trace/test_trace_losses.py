"""TRACE loss pieces against hand-computed values."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trl_mars.losses.trace import (
    IGNORE_INDEX,
    chunk_slices,
    embed_chunks,
    gathered_info_nce,
    generative_ce,
    info_nce,
    pool_pre_token,
    pre_token_positions,
    replay_chunks,
    scale_gradient,
    target_labels,
)

E = 9  # the <|emb|> id in these tests


def test_pre_token_position_is_the_state_before_the_last_emb():
    ids = torch.tensor([[0, 5, 6, E], [0, 0, 7, E], [E, 5, E, 0]])
    assert pre_token_positions(ids, E).tolist() == [2, 2, 1]


def test_pre_token_position_rejects_rows_without_a_pre_token():
    with pytest.raises(ValueError, match=r"rows \[1\] contain no <\|emb\|>"):
        pre_token_positions(torch.tensor([[1, E], [1, 2]]), E)
    with pytest.raises(ValueError, match="first token"):
        pre_token_positions(torch.tensor([[E, 1]]), E)


def test_pool_pre_token_takes_and_normalises_the_pre_token_state():
    ids = torch.tensor([[0, 5, E], [5, E, 0]])
    hidden = torch.zeros(2, 3, 2)
    hidden[0, 1] = torch.tensor([3.0, 4.0])  # pre-token of row 0
    hidden[0, 2] = torch.tensor([100.0, 0.0])  # the <|emb|> state itself must not be used
    hidden[1, 0] = torch.tensor([0.0, -2.0])
    assert torch.allclose(pool_pre_token(hidden, ids, E), torch.tensor([[0.6, 0.8], [0.0, -1.0]]))


def test_target_labels_mask_prompt_and_padding():
    ids = torch.tensor([[0, 0, 1, 2, 3, E], [1, 2, 3, 4, 5, E]])
    labels = target_labels(ids, torch.tensor([2, 1]))
    m = IGNORE_INDEX
    assert labels.tolist() == [[m, m, m, m, 3, E], [m, m, m, m, m, E]]


def test_generative_ce_scores_only_target_tokens():
    # vocab 2, lm_head = identity: logits at position t are hidden[t]
    hidden = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)], [5.0, 5.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 0, 1]])
    loss_sum, count = generative_ce(hidden, labels, lambda h: h)
    # label 0 predicted from hidden[0] (uniform): log 2; label 1 from hidden[1] (P=3/4): -log 0.75
    assert count.item() == 2
    assert loss_sum.item() == pytest.approx(math.log(2.0) - math.log(0.75))
    # a fully masked row contributes nothing
    loss_sum, count = generative_ce(hidden, torch.full_like(labels, IGNORE_INDEX), lambda h: h)
    assert count.item() == 0 and loss_sum.item() == 0.0


def test_info_nce_in_batch():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # cosine ignores the norm
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = math.log(1 + math.exp(-1.0))  # both rows: logits [1, 0] with tau = 1
    assert info_nce(q, c, temperature=1.0).item() == pytest.approx(expected)
    # tau = 0.5 doubles the logits
    assert info_nce(q, c, temperature=0.5).item() == pytest.approx(math.log(1 + math.exp(-2.0)))


def test_info_nce_with_hard_negatives():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    n = torch.tensor([[1.0, 0.0]])
    # row 0 logits [1, 0, 1]: -log(e / (2e + 1)); row 1 logits [0, 1, 0]: -log(e / (e + 2))
    e = math.e
    expected = (-math.log(e / (2 * e + 1)) - math.log(e / (e + 2))) / 2
    assert info_nce(q, c, 1.0, negatives=n).item() == pytest.approx(expected)
    # negatives given per query as (B, N, H) are flattened into the same shared pool
    assert info_nce(q, c, 1.0, negatives=n.unsqueeze(0)).item() == pytest.approx(expected)


def test_info_nce_rejects_mismatched_batches():
    with pytest.raises(ValueError, match="3 queries but 2"):
        info_nce(torch.ones(3, 2), torch.ones(2, 2), 0.05)


def test_scale_gradient_keeps_value_and_scales_gradient():
    x = torch.tensor(2.0, requires_grad=True)
    y = scale_gradient(x * x, 3.0)
    y.backward()
    assert y.item() == pytest.approx(4.0) and x.grad.item() == pytest.approx(12.0)


def test_gathered_info_nce_single_process_is_info_nce():
    torch.manual_seed(0)
    q, c, n = torch.randn(4, 3), torch.randn(4, 3), torch.randn(2, 3)
    assert gathered_info_nce(q, c, 0.05, n).item() == pytest.approx(info_nce(q, c, 0.05, n).item())


def test_chunk_slices():
    assert chunk_slices(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert chunk_slices(3, None) == [slice(0, 3)]


def test_grad_cache_gives_the_unchunked_gradient():
    """Chunked no-grad embedding + replay == direct backward, dropout included (RNG state replayed)."""
    torch.manual_seed(0)
    x_q, x_c = torch.randn(5, 4), torch.randn(5, 4)
    weight = torch.randn(4, 3, requires_grad=True)
    lam = 0.7

    def embed(x: torch.Tensor, rows: slice, with_aux: bool):
        h = F.dropout(x[rows] @ weight, p=0.3, training=True)
        aux = (h**2).sum() if with_aux else h.new_zeros(())
        return F.normalize(h, dim=-1), aux

    torch.manual_seed(1)
    eq, aux_q = embed(x_q, slice(0, 5), True)
    ec, _ = embed(x_c, slice(0, 5), False)
    (info_nce(eq, ec, 0.1) + lam * aux_q).backward()
    direct = weight.grad.clone()
    weight.grad = None

    torch.manual_seed(1)
    q_fn = lambda rows: embed(x_q, rows, True)  # noqa: E731
    c_fn = lambda rows: embed(x_c, rows, False)  # noqa: E731
    # the un-chunked pass above drew the query mask then the candidate mask; chunk size 5 keeps that order
    eq0, aux_total, q_states = embed_chunks(q_fn, 5, 5)
    ec0, _, c_states = embed_chunks(c_fn, 5, 5)
    assert aux_total == pytest.approx(aux_q.item(), rel=1e-5)
    reps = [eq0.requires_grad_(), ec0.requires_grad_()]
    info_nce(*reps, 0.1).backward()
    replay_chunks(q_fn, 5, q_states, reps[0].grad, lam)
    replay_chunks(c_fn, 5, c_states, reps[1].grad, 0.0)
    assert torch.allclose(weight.grad, direct, atol=1e-5)


def test_grad_cache_chunked_equals_unchunked_without_dropout():
    torch.manual_seed(0)
    x_q, x_c = torch.randn(5, 4), torch.randn(5, 4)
    weight = torch.randn(4, 3, requires_grad=True)

    def fn(x):
        return lambda rows: (F.normalize(x[rows] @ weight, dim=-1), (x[rows] @ weight).sum())

    def grads(chunk):
        weight.grad = None
        eq, aux, q_states = embed_chunks(fn(x_q), 5, chunk)
        ec, _, c_states = embed_chunks(fn(x_c), 5, chunk)
        eq.requires_grad_()
        ec.requires_grad_()
        info_nce(eq, ec, 0.05).backward()
        replay_chunks(fn(x_q), chunk, q_states, eq.grad, 0.5, grad_scale=2.0)
        replay_chunks(fn(x_c), chunk, c_states, ec.grad, 0.0, grad_scale=2.0)
        return weight.grad.clone()

    assert torch.allclose(grads(2), grads(None), atol=1e-5)


@pytest.mark.distributed
def test_gather_across_two_processes_matches_one_process(tmp_path):
    """torchrun --nproc_per_node 2 (gloo): same loss as one process; local gradient / world = full-batch gradient."""
    script = Path(__file__).with_name("dist_gather_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRACE_OUT": str(tmp_path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for report in reports:
        assert report["world_size"] == 2
        assert report["loss"] == pytest.approx(report["single_process_loss"], rel=1e-5)
        assert report["max_grad_error"] < 1e-5
    assert reports[0]["loss"] == pytest.approx(reports[1]["loss"])
