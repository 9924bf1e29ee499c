"""``MultiAgentTreeTrainer.save_model`` / ``push_to_hub`` (HfApi mocked, no network) and per-agent LoRA."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_mars.data.code_tasks import code_task_splits
from trl_mars.trainers.mars2_agents import unwrap
from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the helpers sit here
from mars2_helpers import force_advantages, tiny_mars2_config  # noqa: E402

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}


def train_one_step(output_dir: Path, agents: list[dict], **overrides) -> MultiAgentTreeTrainer:
    """A 1-step run of tiny agents on the embedded task, with non-zero advantages so that the weights move;
    ``trainer.initial_weights[agent]`` holds each policy's state dict right before its first update."""
    train, _ = code_task_splits(4, 0, seed=0)
    args = tiny_mars2_config(output_dir, agents, max_nodes=2 * len(agents), **overrides)
    trainer = MultiAgentTreeTrainer(args=args, train_dataset=train)
    force_advantages(trainer, lambda i: 1.0 if i % 2 else -1.0)
    prepare, trainer.initial_weights = trainer._ensure_policy_optimizers, {}

    def snapshot_then_prepare():
        if not trainer.initial_weights:
            trainer.initial_weights = {p.name: state(p.model) for p in trainer.policies}
        prepare()

    trainer._ensure_policy_optimizers = snapshot_then_prepare
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, tiny_qwen2_path, tiny_llama_path):
    """Two agents (qwen2 full fine-tuning, llama LoRA) trained one step, then pushed with a recording HfApi."""
    out = tmp_path_factory.mktemp("hub") / "run"
    agents = [{"name": "coder", "model": tiny_qwen2_path}, {"name": "fixer", "model": tiny_llama_path, "lora": LORA}]
    trainer = train_one_step(out, agents, hub_model_id="me/mars2-demo")
    calls: list[tuple[str, tuple, dict]] = []
    with pytest.MonkeyPatch.context() as mp:
        for method in ("create_repo", "upload_folder"):
            mp.setattr(huggingface_hub.HfApi, method, lambda self, *a, _m=method, **kw: calls.append((_m, a, kw)))
        repos = trainer.push_to_hub()
    yield trainer, out, calls, repos
    trainer.sandbox.close()


def test_push_creates_one_repo_per_agent(pushed):
    trainer, out, calls, repos = pushed
    assert repos == ["me/mars2-demo-coder", "me/mars2-demo-fixer"]
    assert [name for name, _, _ in calls] == ["create_repo", "upload_folder"] * 2
    created = [(a[0] if a else kw["repo_id"]) for name, a, kw in calls if name == "create_repo"]
    assert created == repos
    uploads = [kw for name, _, kw in calls if name == "upload_folder"]
    assert [u["repo_id"] for u in uploads] == repos
    assert [Path(u["folder_path"]) for u in uploads] == [out / "agents" / "coder", out / "agents" / "fixer"]


def test_full_agent_folder_loads(pushed):
    trainer, out, _, _ = pushed
    folder = out / "agents" / "coder"
    model = AutoModelForCausalLM.from_pretrained(folder)
    trained = state(trainer.policies[0].model)
    loaded = model.state_dict()
    assert trained.keys() <= loaded.keys() | {"lm_head.weight"}
    for key, value in trained.items():
        torch.testing.assert_close(loaded[key], value, msg=key)
    assert any(not torch.equal(v, trainer.initial_weights["coder"][k]) for k, v in trained.items()), "no update"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template and tokenizer.chat_template == trainer.policies[0].tokenizer.chat_template


@pytest.mark.parametrize(("agent", "base"), [("coder", "qwen2"), ("fixer", "llama")])
def test_model_card(pushed, agent, base):
    trainer, out, _, _ = pushed
    text = (out / "agents" / agent / "README.md").read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    spec = next(s for s in trainer.specs if s.name == agent)
    assert front["base_model"] == spec.model and base in spec.model
    assert {"trl-mars", "mars2"} <= set(front["tags"])
    assert "arXiv:2604.14564" in text and "https://arxiv.org/abs/2604.14564" in text
    config = json.loads(text.split("## Training configuration")[1].split("```json")[1].split("```")[0])
    assert config["max_nodes"] == 4 and config["trees_per_step"] == 1 and config["max_completion_length"] == 16
    assert f"Agent `{agent}`" in text


def test_lora_agent_trains_only_the_adapter_and_saves_it(pushed):
    from peft import AutoPeftModelForCausalLM, PeftModel

    trainer, out, _, _ = pushed
    policy = trainer.policies[1]
    assert policy.is_peft
    before, after = trainer.initial_weights["fixer"], state(policy.model)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all("lora_" in k for k in changed), sorted(changed)
    folder = out / "agents" / "fixer"
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and set(config["target_modules"]) == {"q_proj", "v_proj"}
    assert not list(folder.glob("model*.safetensors"))  # the adapter only, not the base weights
    loaded = AutoPeftModelForCausalLM.from_pretrained(folder)
    assert isinstance(loaded, PeftModel)
    adapter = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    trained = {k: v for k, v in after.items() if "lora_" in k}
    assert adapter.keys() == trained.keys()
    for key in trained:
        torch.testing.assert_close(adapter[key], trained[key], msg=key)


def test_lora_first_agent(tmp_path, tiny_qwen2_path):
    """Agent 0 takes GRPOTrainer's own ``peft_config`` path (the others take ``_load_policy``)."""
    from peft import PeftModel

    trainer = train_one_step(tmp_path / "run", [{"name": "solo", "model": tiny_qwen2_path, "lora": LORA}])
    before, after = trainer.initial_weights["solo"], state(trainer.policies[0].model)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all("lora_" in k for k in changed), sorted(changed)
    trainer.save_model()
    trainer.sandbox.close()
    folder = tmp_path / "run" / "agents" / "solo"
    assert (folder / "adapter_config.json").exists() and (folder / "README.md").exists()
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_qwen2_path), folder)
    adapter = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert adapter.keys() == {k for k in after if "lora_" in k}
    for key, value in adapter.items():
        torch.testing.assert_close(value, after[key], msg=key)
