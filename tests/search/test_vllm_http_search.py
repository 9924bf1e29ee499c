"""``VLLMServerBackend`` over TRL's real ``VLLMClient`` and real HTTP, against loopback servers that speak the part of
vLLM's API the client uses (no vLLM here): the async search calls one client from many threads at once, and the
lockstep search calls two agents' servers at once; the nodes carry the servers' token ids and log-probs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from trl_mars.search import SearchConfig, SearchProblem, TreeSearch, VLLMServerBackend

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the helpers sit here
from concurrency_fakes import RIGHT, WRONG, CallLog, InstantVerifier, LoopbackVLLM, crc  # noqa: E402

PROBLEMS = [SearchProblem(f"p{i}", f"Problem {i}: write f.", public_tests=["assert f() == 1"]) for i in range(8)]


@pytest.fixture
def servers(tiny_qwen2_path, monkeypatch):
    monkeypatch.setattr("trl.generation.vllm_client.is_vllm_available", lambda *a, **k: True)  # the client side only
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2_path)
    log = CallLog()
    respond = lambda m: RIGHT if crc(m[-1]["content"]) % 3 == 0 else WRONG  # noqa: E731
    with LoopbackVLLM("a", tokenizer, respond, 0.1, log) as a, LoopbackVLLM("b", tokenizer, respond, 0.1, log) as b:
        backends = {name: VLLMServerBackend.connect(s.url, tokenizer, timeout=10) for name, s in (("a", a), ("b", b))}
        yield backends, (a, b), log, tokenizer


def test_async_search_over_real_http_clients_from_many_threads(servers):
    backends, (a, b), log, tokenizer = servers
    search = TreeSearch(backends, InstantVerifier(), SearchConfig(mode="async", max_nodes=4, max_inflight=2), seed=0)
    trees = search.run(PROBLEMS[:4])
    assert [len(t) for t in trees] == [4] * 4 and len(a.requests) + len(b.requests) == 16
    assert all(len(r["messages"]) == 1 for r in a.requests + b.requests)  # one conversation per request
    assert log.max_active >= 4  # 4 trees x up to 2 requests at once, through one client per server
    for node in (n for t in trees for n in t.solutions):
        expected = tokenizer.apply_chat_template(node.prompt, add_generation_prompt=True, tokenize=False)
        assert node.prompt_ids == tokenizer(expected, add_special_tokens=False).input_ids
        assert node.completion in (RIGHT, WRONG) and node.logprobs == [-0.5] * len(node.completion_ids)
        assert node.score == float(node.completion == RIGHT)


def test_lockstep_search_calls_both_servers_at_once_over_http(servers):
    backends, (a, b), log, _ = servers
    trees = TreeSearch(backends, InstantVerifier(), SearchConfig(max_nodes=3), seed=0).run(PROBLEMS)
    assert [len(t) for t in trees] == [3] * len(PROBLEMS)
    assert log.overlapped("a", "b")
