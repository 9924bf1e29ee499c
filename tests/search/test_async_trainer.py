"""``MultiAgentTreeTrainer`` with a `trl vllm-serve` per agent (in-process fakes of TRL's ``VLLMClient`` whose calls
sleep): lockstep rounds call both servers at once; ``search_mode: async`` grows each tree on its own with
``max_inflight`` single-prompt requests per tree; the config refuses what it cannot do, naming the field."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from trl_mars.data.code_tasks import code_task_splits
from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the helpers sit here
sys.path.insert(0, str(Path(__file__).parents[1] / "trainers"))
from concurrency_fakes import RIGHT, CallLog, FakeVLLMServers  # noqa: E402
from mars2_helpers import tiny_mars2_config  # noqa: E402

URLS = {"qwen": "http://127.0.0.1:8000", "llama": "http://127.0.0.1:8001"}


@pytest.fixture
def agents(tiny_qwen2_path, tiny_llama_path):
    paths = {"qwen": tiny_qwen2_path, "llama": tiny_llama_path}
    return [{"name": a, "model": paths[a], "vllm_server_base_url": URLS[a]} for a in URLS], paths


def train(tmp_path, monkeypatch, agents, **overrides) -> tuple[MultiAgentTreeTrainer, CallLog]:
    specs, paths = agents
    log = CallLog()
    tokenizers = {URLS[a]: AutoTokenizer.from_pretrained(paths[a]) for a in URLS}
    monkeypatch.setattr(
        "trl.generation.vllm_client.VLLMClient", FakeVLLMServers(tokenizers, lambda m: RIGHT, 0.2, log)
    )
    args = tiny_mars2_config(tmp_path, specs, use_vllm=True, beta=0.0, max_nodes=4, trees_per_step=2, **overrides)
    train_set, _ = code_task_splits(2, 0, seed=0)
    trainer = MultiAgentTreeTrainer(args=args, train_dataset=train_set)
    try:
        trainer.train()
    finally:
        trainer.sandbox.close()
    return trainer, log


def test_async_rollout_grows_each_tree_with_single_requests_in_flight(tmp_path, monkeypatch, agents):
    trainer, log = train(tmp_path, monkeypatch, agents, search_mode="async", max_inflight=2)
    assert trainer.search.config.mode == "async" and trainer.search.config.max_inflight == 2
    trees = trainer.last_trees
    assert len(trees) == 2 and all(len(t) == 4 for t in trees)  # the budget, exactly
    assert all(prompts == 1 for *_, prompts in log.calls) and len(log.calls) == 8  # a request per node
    assert log.max_active >= 3  # 2 trees x up to 2 in flight each (lockstep would send at most 2 batches)
    assert sorted(n.step for t in trees for n in t.solutions) == [0, 0, 1, 1, 2, 2, 3, 3]  # each tree's own order
    assert all(n.completion_ids and len(n.logprobs) == len(n.completion_ids) for t in trees for n in t.solutions)


def test_lockstep_rollout_calls_both_agents_servers_at_once(tmp_path, monkeypatch, agents):
    trainer, log = train(tmp_path, monkeypatch, agents)
    assert trainer.search.config.mode == "lockstep"
    steps_with_both = {
        s
        for s in range(4)
        if {n.agent for t in trainer.last_trees for n in t.solutions if n.step == s} == {"qwen", "llama"}
    }  # noqa: E501
    assert steps_with_both  # some step asked both agents (else there is nothing to overlap)
    assert log.overlapped(URLS["qwen"], URLS["llama"]) and log.max_active == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"search_mode": "async"}, r"search_mode='async' needs use_vllm"),
        ({"max_inflight": 2}, r"max_inflight=2 needs search_mode='async'"),
        ({"search_mode": "eager"}, r"MultiAgentTreeConfig\.search_mode has an invalid value"),
        ({"max_inflight": 0, "search_mode": "async", "use_vllm": True}, r"MultiAgentTreeConfig\.max_inflight"),
    ],
)
def test_config_rejects_search_modes_it_cannot_run(tmp_path, agents, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_mars2_config(tmp_path, agents[0], **overrides)
