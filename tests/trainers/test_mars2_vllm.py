"""``use_vllm``: each agent generates on its own ``trl vllm-serve`` (TRL's ``VLLMClient``) and its updated weights are
pushed there before it generates again. The servers are replaced by an in-process fake of ``VLLMClient`` (no vLLM
or GPU here, ``tests/trainers/vllm_fakes.py``) that records what the trainer sends."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_mars.data.code_tasks import code_task_splits
from trl_mars.search.weight_sync import buckets
from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the helpers sit here
from mars2_helpers import force_advantages, tiny_mars2_config  # noqa: E402
from vllm_fakes import ANSWER, FakeServers  # noqa: E402

BUCKET_MB = 1 / 16  # 64 KiB: a tiny model's push takes several requests


@pytest.fixture
def run(tmp_path, tiny_qwen2_path, tiny_llama_path, monkeypatch):
    urls = {"qwen": "http://127.0.0.1:8000", "llama": "http://127.0.0.1:8001"}
    paths = {"qwen": tiny_qwen2_path, "llama": tiny_llama_path}
    servers = FakeServers({urls[a]: AutoTokenizer.from_pretrained(paths[a]) for a in urls})
    monkeypatch.setattr("trl.generation.vllm_client.VLLMClient", servers)
    agents = [
        {"name": "qwen", "model": tiny_qwen2_path, "vllm_server_base_url": urls["qwen"], "lora": {"r": 4}},
        {"name": "llama", "model": tiny_llama_path, "vllm_server_base_url": urls["llama"]},
    ]
    args = tiny_mars2_config(
        tmp_path, agents, use_vllm=True, max_steps=2, beta=0.0, vllm_weight_sync_bucket_mb=BUCKET_MB
    )
    train, _ = code_task_splits(2, 0, seed=0)
    trainer = MultiAgentTreeTrainer(args=args, train_dataset=train)
    force_advantages(trainer, lambda i: 1.0 if i % 2 else -1.0)  # a fake server's answers all score the same
    original_q = trainer.accelerator.unwrap_model(trainer.policies[0].model).base_model.model.model.layers[0]
    original_q = original_q.self_attn.q_proj.base_layer.weight.detach().clone()
    trainer.train()
    trainer.run_search(trainer.problems([train[0]]))  # generating again pushes the last update first
    yield trainer, servers, urls, original_q, paths
    trainer.sandbox.close()


def test_generation_goes_to_each_agents_server(run):
    trainer, servers, urls, _, _ = run
    assert set(servers.clients) == set(urls.values())
    assert [servers.clients[urls[a]].group_port for a in ("qwen", "llama")] == [51216, 51217]
    nodes = [n for t in trainer.last_trees for n in t.solutions]
    assert nodes and all(n.completion == ANSWER for n in nodes)  # what the servers answered
    for client in servers.clients.values():
        assert client.conversations and all(c[-1]["role"] == "user" for c in client.conversations)


def test_full_weights_pushed_before_each_generation_after_an_update(run):
    trainer, servers, urls, _, paths = run
    llama = trainer.policies[1]
    pushes = servers.clients[urls["llama"]].pushes
    assert llama.updates >= 1 and len(pushes) >= 2  # the base weights (start), then after updates
    live = dict(trainer.accelerator.unwrap_model(llama.model).named_parameters())
    assert set(pushes[-1]) == set(live)
    assert all(torch.equal(pushes[-1][n], p.detach()) for n, p in live.items())  # the server has the latest
    assert any(not torch.equal(pushes[0][n], pushes[-1][n]) for n in live)  # and they did change


def test_lora_weights_pushed_merged_under_base_names(run):
    trainer, servers, urls, original_q, paths = run
    qwen = trainer.policies[0]
    pushed = servers.clients[urls["qwen"]].pushes[-1]
    base_names = {n for n, _ in AutoModelForCausalLM.from_pretrained(paths["qwen"]).named_parameters()}
    assert set(pushed) == base_names
    peft_model = trainer.accelerator.unwrap_model(qwen.model)
    q_proj = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert torch.equal(q_proj.base_layer.weight, original_q)  # never merged into: no round-off drift
    delta = q_proj.get_delta_weight("default")
    assert delta.abs().max() > 0, "the adapter did not train"
    torch.testing.assert_close(pushed["model.layers.0.self_attn.q_proj.weight"], original_q + delta)


def test_each_push_is_one_request_per_bucket(run):
    """A push is one ``weight_update()`` of ``update_named_params`` requests, one per bucket of at most
    ``vllm_weight_sync_bucket_mb`` MiB of consecutive tensors (each tensor announced once, in order), not one
    request per tensor."""
    trainer, servers, urls, _, _ = run
    for policy in trainer.policies:
        client = servers.clients[urls[policy.name]]
        names = list(client.pushes[-1])
        sizes = [client.pushes[-1][n].numel() * client.pushes[-1][n].element_size() for n in names]
        expected = buckets(sizes, int(BUCKET_MB * 2**20))
        assert 1 < len(expected) < len(names)
        assert client.updates == len(client.pushes) >= 2
        per_push = len(client.requests) // client.updates
        assert len(client.requests) == per_push * client.updates and per_push == len(expected)
        assert client.requests[-per_push:] == [[names[i] for i in group] for group in expected]
