"""FSDP helpers: each architecture wrapped at its own decoder layers; full weights and optimizer state restored into
FSDP2 shards (FSDP2 runs on CPU here: a one-process gloo group, which accelerate itself does not offer on CPU)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from accelerate import PartialState
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from transformers import AutoModelForCausalLM

from trl_mars.testing.distributed import fsdp2_shard
from trl_mars.trainers.mars2_agents import Policy, load_policy_weights
from trl_mars.trainers.mars2_config import AgentSpec
from trl_mars.utils.fsdp import is_sharded, load_full_state_dict, load_optimizer, save_optimizer, wrap_own_layers


def wrapped_layer_types(plugin, model) -> set[str]:
    """Class names of the modules accelerate's FSDP2 preparation would shard on their own."""
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    return {type(m).__name__ for m in model.modules() if policy(m)}


@pytest.fixture
def models(tiny_qwen2_path, tiny_llama_path):
    return [AutoModelForCausalLM.from_pretrained(p) for p in (tiny_qwen2_path, tiny_llama_path)]


def test_second_architecture_is_wrapped_at_its_own_layers(models):
    qwen, llama = models
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin))
    plugin.set_auto_wrap_policy(qwen)  # what accelerate's prepare does to the shared plugin for the first model
    with pytest.raises(ValueError, match="Could not find the transformer layer class Qwen2DecoderLayer"):
        fsdp2_prepare_auto_wrap_policy(plugin, llama)  # the failure seen on a GPU before this helper

    for model, layer in ((llama, "LlamaDecoderLayer"), (qwen, "Qwen2DecoderLayer"), (llama, "LlamaDecoderLayer")):
        wrap_own_layers(accelerator, model)
        plugin.set_auto_wrap_policy(model)
        assert wrapped_layer_types(plugin, model) == {layer}


def test_configured_classes_kept_where_the_model_has_them(models, monkeypatch):
    qwen, llama = models
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "Qwen2DecoderLayer,LlamaMLP")
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin))
    wrap_own_layers(accelerator, llama)
    assert wrapped_layer_types(plugin, llama) == {"LlamaMLP"}
    wrap_own_layers(accelerator, qwen)
    assert wrapped_layer_types(plugin, qwen) == {"Qwen2DecoderLayer"}


def test_no_fsdp_or_size_based_policy_left_alone(models):
    qwen, _ = models
    wrap_own_layers(SimpleNamespace(state=SimpleNamespace()), qwen)  # no FSDP plugin: nothing to do
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="size_based_wrap")
    policy = plugin.auto_wrap_policy
    wrap_own_layers(SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin)), qwen)
    assert plugin.auto_wrap_policy is policy and plugin.transformer_cls_names_to_wrap is None


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor().detach() if hasattr(tensor, "full_tensor") else tensor.detach()


def test_full_weights_load_into_fsdp2_shards(gloo_group, tiny_qwen2_path):
    trained = AutoModelForCausalLM.from_pretrained(tiny_qwen2_path)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trained.parameters():  # tied embeddings stay tied
            p.add_(torch.randn(p.shape, generator=gen))
    trained = {k: v.clone() for k, v in trained.state_dict().items()}
    model = fsdp2_shard(AutoModelForCausalLM.from_pretrained(tiny_qwen2_path))
    assert is_sharded(model)
    with pytest.raises(RuntimeError, match="mixed torch.Tensor and DTensor"):
        model.load_state_dict(trained, strict=False)  # what resuming under FSDP2 did before (seen on a GPU)
    missing, unexpected = load_full_state_dict(model, trained)
    assert (list(unexpected), [k for k in missing if k != "lm_head.weight"]) == ([], [])
    for name, value in model.state_dict().items():
        torch.testing.assert_close(full(value), trained[name], rtol=0, atol=0, msg=name)


def test_lora_adapter_loads_into_fsdp2_shards(gloo_group, tiny_qwen2_path, tmp_path):
    """What resuming a LoRA agent under FSDP2 does (``load_policy_weights``): peft fills the sharded adapter."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    def lora_model():
        return get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_qwen2_path), LoraConfig(r=4))

    trained = lora_model()
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if "lora_B" in name:  # zero at init: make the adapter non-trivial
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    trained.save_pretrained(tmp_path)
    model = fsdp2_shard(lora_model())
    assert is_sharded(model)
    load_policy_weights(Policy("a", ["a"], AgentSpec(name="a", model=tiny_qwen2_path), model, None), tmp_path)
    expected, loaded = get_peft_model_state_dict(trained), get_peft_model_state_dict(model)
    assert expected.keys() == loaded.keys() and any("lora_B" in k for k in expected)
    for name, value in expected.items():
        torch.testing.assert_close(full(loaded[name]), value, rtol=0, atol=0, msg=name)


def adamw_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, n: int) -> None:
    for i in range(n):
        ids = torch.arange(3 + i, 11 + i)[None]
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("fsdp", [True, False], ids=["fsdp2", "plain"])
def test_optimizer_state_survives_save_and_load(gloo_group, tiny_qwen2_path, tmp_path, fsdp):
    PartialState()  # accelerate's FSDP checkpoint functions log through it
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="FULL_STATE_DICT") if fsdp else None
    accelerator = SimpleNamespace(
        state=SimpleNamespace(fsdp_plugin=plugin), process_index=0, wait_for_everyone=dist.barrier
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_path)
    model = fsdp2_shard(model) if fsdp else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    adamw_steps(model, optimizer, 2)
    (tmp_path / "agent").mkdir()
    save_optimizer(accelerator, optimizer, model, tmp_path / "agent", is_main=True)
    restored = torch.optim.AdamW(model.parameters(), lr=1e-3)
    load_optimizer(accelerator, restored, model, tmp_path / "agent")
    for p in model.parameters():
        saved, loaded = optimizer.state[p], restored.state[p]
        assert float(full(loaded["step"])) == float(full(saved["step"])) == 2.0
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(full(loaded[key]), full(saved[key]), rtol=0, atol=0)
