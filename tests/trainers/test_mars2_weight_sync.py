"""Weight pushes to vLLM (``trl_mars.search.weight_sync``): bucketed ``update_named_params`` requests, and FSDP2
shards gathered one parameter at a time as they are sent, on a one-process gloo group (FSDP2 runs on CPU that way;
accelerate does not offer it on CPU). The server is the in-process fake of TRL's ``VLLMClient``
(``vllm_fakes.py``); the trainer-level pushes (a plain and a LoRA agent) are in ``test_mars2_vllm.py``."""

from __future__ import annotations

import doctest
import inspect
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM
from trl.generation.vllm_client import VLLMClient

from trl_mars.search import weight_sync
from trl_mars.search.backends import SamplingConfig
from trl_mars.search.weight_sync import buckets, load_into_engine, push_to_server, pushed_weights
from trl_mars.testing.distributed import fsdp2_shard
from trl_mars.trainers.mars2_config import AgentSpec
from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the helpers sit here
from vllm_fakes import FakeEngine, FakeServers  # noqa: E402

BUCKET = 64 * 1024  # bytes: the tiny Qwen2 (26 tensors, ~490 KB in fp32) travels in several buckets


def test_module_doctests():
    assert doctest.testmod(weight_sync).failed == 0


def test_fake_client_has_the_real_clients_signatures():
    """The fake takes the arguments TRL 1.16's ``VLLMClient`` takes, for every call a push makes."""
    for name in ("update_named_params", "weight_update", "reset_prefix_cache", "init_communicator"):
        real = list(inspect.signature(getattr(VLLMClient, name)).parameters)
        fake = list(inspect.signature(getattr(FakeServers.Client, name)).parameters)
        assert fake == real, name
    assert not hasattr(FakeServers.Client, "update_named_param")  # one tensor per request would fail


def fake_client() -> FakeServers.Client:
    client = FakeServers.Client(tokenizer=None, group_port=51216)
    client.init_communicator(device="cpu")
    return client


def train_step(model: torch.nn.Module) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.arange(3, 11)[None]
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor().detach() if isinstance(tensor, DTensor) else tensor.detach()


def expected_buckets(model: torch.nn.Module) -> int:
    sizes = [p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" not in n]
    return len(buckets(sizes, BUCKET))


def test_fsdp2_weights_pushed_exactly_in_buckets_gathered_as_sent(gloo_group, tiny_qwen2_path, monkeypatch):
    model = fsdp2_shard(AutoModelForCausalLM.from_pretrained(tiny_qwen2_path))
    before = {n: full(p).clone() for n, p in model.named_parameters()}
    train_step(model)
    trained = {n: full(p) for n, p in model.named_parameters()}
    assert all(isinstance(p, DTensor) for p in model.parameters())
    assert any(not torch.equal(before[n], trained[n]) for n in trained)

    gathered = []
    real_full_tensor = DTensor.full_tensor
    monkeypatch.setattr(DTensor, "full_tensor", lambda self, **kw: gathered.append(1) or real_full_tensor(self, **kw))
    client = fake_client()
    arrivals = []
    client.on_tensor = lambda name: arrivals.append(len(gathered))  # gathers made when each tensor arrives
    requests = push_to_server(client, model, BUCKET)

    assert set(client.weights) == set(trained)
    for name, value in trained.items():
        assert torch.equal(client.weights[name], value), name
    assert arrivals == list(range(1, len(trained) + 1))  # each parameter gathered as it is sent, not before
    assert requests == len(client.requests) == expected_buckets(model)
    assert 1 < requests < len(trained)  # buckets, not one request per tensor
    assert [n for r in client.requests for n in r] == list(trained)  # every tensor announced once, in order
    assert client.updates == 1 and len(client.pushes) == 1  # one weight_update(), then the prefix cache reset


def test_fsdp2_lora_agent_pushed_merged_under_base_names(gloo_group, tiny_qwen2_path):
    from peft import LoraConfig, get_peft_model

    model = fsdp2_shard(get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_qwen2_path), LoraConfig(r=4)))
    train_step(model)  # lora_B leaves zero: the adapter is non-trivial
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    delta = full(layer.lora_B["default"].weight) @ full(layer.lora_A["default"].weight) * layer.scaling["default"]
    assert delta.abs().max() > 0
    client = fake_client()
    push_to_server(client, model, BUCKET)

    base_names = {n for n, _ in AutoModelForCausalLM.from_pretrained(tiny_qwen2_path).named_parameters()}
    assert set(client.weights) == base_names
    torch.testing.assert_close(
        client.weights["model.layers.0.self_attn.q_proj.weight"],
        full(layer.base_layer.weight) + delta,
        rtol=0,
        atol=1e-7,
    )
    mlp = full(model.base_model.model.model.layers[0].mlp.up_proj.weight)  # no adapter there: the trained weight
    assert torch.equal(client.weights["model.layers.0.mlp.up_proj.weight"], mlp)
    assert len(client.requests) == expected_buckets(model)


def test_other_processes_only_join_the_gathers(gloo_group, tiny_qwen2_path, monkeypatch):
    """``stream=False`` (a process that does not talk to the server) makes no request; it takes part in every
    gather of a sharded model (each is a collective), and in none of an unsharded one."""
    gathered = []
    real_full_tensor = DTensor.full_tensor
    monkeypatch.setattr(DTensor, "full_tensor", lambda self, **kw: gathered.append(1) or real_full_tensor(self, **kw))
    client = fake_client()
    plain = AutoModelForCausalLM.from_pretrained(tiny_qwen2_path)
    assert push_to_server(client, plain, BUCKET, stream=False) == 0 and not gathered
    sharded = fsdp2_shard(AutoModelForCausalLM.from_pretrained(tiny_qwen2_path))
    assert push_to_server(client, sharded, BUCKET, stream=False) == 0
    assert len(gathered) == len(pushed_weights(sharded)) == len(list(sharded.parameters()))
    assert client.requests == [] and client.updates == 0 and client.pushes == []


def test_dora_is_refused_naming_the_layer(tiny_qwen2_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_qwen2_path), LoraConfig(r=4, use_dora=True))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj\.weight: DoRA"):
        push_to_server(fake_client(), model, BUCKET)


def connect_under(plugin, monkeypatch, deepspeed: bool = False) -> dict:
    """``MultiAgentTreeTrainer._connect_vllm`` on a trainer whose accelerator runs ``plugin`` (FSDP cannot run
    through accelerate on CPU, so the trainer is a stand-in with what the method reads)."""
    url = "http://h:8000"
    servers = FakeServers({url: None})
    monkeypatch.setattr("trl.generation.vllm_client.VLLMClient", servers)
    trainer = SimpleNamespace(
        is_deepspeed_enabled=deepspeed,
        accelerator=SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin), is_main_process=True, device="cpu"),
        args=SimpleNamespace(vllm_mode="server", vllm_group_port=51216, vllm_server_timeout=1.0),
        policies=[SimpleNamespace(name="a", spec=AgentSpec("a", "m", vllm_server_base_url=url), tokenizer=None)],
        sampling_config=SamplingConfig,
        chat_template_kwargs=None,
    )
    return MultiAgentTreeTrainer._connect_vllm(trainer)


def test_fsdp2_agents_connect_to_their_servers(monkeypatch):
    """FSDP2 with use_vllm used to be refused ("pushing sharded (FSDP/DeepSpeed) weights ... not supported yet")."""
    backends = connect_under(SimpleNamespace(fsdp_version=2), monkeypatch)
    assert list(backends) == ["a"] and backends["a"].client.communicator
    with pytest.raises(ValueError, match="from FSDP2 shards only; set fsdp_version: 2"):
        connect_under(SimpleNamespace(fsdp_version=1), monkeypatch)
    with pytest.raises(ValueError, match="DeepSpeed-partitioned weights into vLLM is not supported"):
        connect_under(None, monkeypatch, deepspeed=True)


def test_fsdp2_weights_load_into_a_colocated_engine(gloo_group, tiny_qwen2_path):
    """Colocate mode streams the same gathered tensors into each process's own engine."""
    model = fsdp2_shard(AutoModelForCausalLM.from_pretrained(tiny_qwen2_path))
    train_step(model)
    engine = FakeEngine(model=tiny_qwen2_path, enable_sleep_mode=False)
    load_into_engine(engine, model)
    trained = {n: full(p) for n, p in model.named_parameters()}
    assert set(engine.loads[-1]) == set(trained)
    assert all(torch.equal(engine.loads[-1][n], v) for n, v in trained.items())
