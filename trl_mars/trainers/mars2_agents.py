"""The trainable units of MARS²: one ``Policy`` per distinct set of weights (one per agent when heterogeneous,
one shared by all agents when homogeneous), with its tokenizer, reference model, optimizer and node buffer."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from trl_mars.extras import require
from trl_mars.trainers.mars2_config import AgentSpec
from trl_mars.utils.fsdp import load_full_state_dict
from trl_mars.utils.recipes import resolve_model_path


@dataclass
class Policy:
    """Weights shared by ``agents``; ``buffer`` holds credited nodes waiting for this policy's next update."""

    name: str
    agents: list[str]
    spec: AgentSpec
    model: Any
    tokenizer: Any
    ref_model: Any = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    buffer: list[dict] = field(default_factory=list)
    updates: int = 0

    @property
    def trainable(self) -> bool:
        return self.spec.trainable

    @property
    def is_peft(self) -> bool:
        return hasattr(self.model, "peft_config") or hasattr(getattr(self.model, "module", None), "peft_config")


def load_tokenizer(spec: AgentSpec, index: int) -> Any:
    """The agent's tokenizer, checked for a chat template; fails naming ``agents[index]``."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(spec.model))
    if not tokenizer.chat_template:
        raise ValueError(f"agents[{index}] ({spec.name}): tokenizer of {spec.model!r} has no chat template")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def lora_config(spec: AgentSpec) -> Any:
    """``peft.LoraConfig`` from the agent's ``lora`` kwargs (causal-LM task), or None for full fine-tuning."""
    if spec.lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(**{"task_type": "CAUSAL_LM", **spec.lora})


def model_init_kwargs(spec: AgentSpec, base: dict | None) -> dict:
    kwargs = dict(base or {})
    if spec.load_in_4bit:
        from transformers import BitsAndBytesConfig

        require("bitsandbytes", "qlora", f"agent {spec.name!r}: load_in_4bit (QLoRA)")

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    return kwargs


def unwrap(model: Any) -> Any:
    return getattr(model, "module", model)


def save_policy(policy: Policy, folder: Path, state_dict: dict | None, is_main: bool) -> None:
    """``save_pretrained`` of weights (or adapter) and tokenizer into ``folder``."""
    model = unwrap(policy.model)
    model.save_pretrained(folder, state_dict=state_dict, is_main_process=is_main)
    if is_main:
        policy.tokenizer.save_pretrained(folder)
        (folder / "agents.json").write_text(json.dumps({"agents": policy.agents, "base_model": policy.spec.model}))


def load_policy_weights(policy: Policy, folder: Path) -> None:
    """Load weights saved by ``save_policy`` into the live model (full weights or a PEFT adapter)."""
    from safetensors.torch import load_file

    model = unwrap(policy.model)
    if policy.is_peft:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"))
        return
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no model*.safetensors in {folder}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f))
    missing, unexpected = load_full_state_dict(model, state)
    tied = getattr(model.config, "tie_word_embeddings", False)
    untied_missing = [k for k in missing if not (tied and k.endswith("lm_head.weight"))]
    if unexpected or untied_missing:
        raise RuntimeError(
            f"{folder}: weights do not match the model (missing {untied_missing}, unexpected {unexpected})"
        )
