"""FSDP helpers: several models of different architectures in one process, full-weight and optimizer checkpoints."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import torch
from accelerate.utils.dataclasses import get_module_class_from_name
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy


def wrap_own_layers(accelerator: Any, model: torch.nn.Module) -> None:
    """Point accelerate's FSDP auto-wrap policy at ``model``'s own decoder-layer classes; call before preparing it.

    accelerate keeps one FSDP plugin per process, and the first ``prepare`` binds its transformer-based wrap policy to
    that model's layer classes (``_no_split_modules``, e.g. ``Qwen2DecoderLayer``). Preparing a model of another
    architecture afterwards fails with "Could not find the transformer layer class ...": heterogeneous agents, and
    the SFT warm-up of several models in one process, re-point the policy before each model. Classes named in
    ``FSDP_TRANSFORMER_CLS_TO_WRAP`` (accelerate's setting) are kept where ``model`` has them.
    """
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is None:
        return
    policy = plugin.auto_wrap_policy
    policy = policy.func if isinstance(policy, functools.partial) else policy
    if policy is not transformer_auto_wrap_policy:
        return  # size-based or no auto-wrap: nothing is bound to an architecture
    configured = [name for name in os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if name]
    own = [name for name in configured if get_module_class_from_name(model, name) is not None]
    plugin.auto_wrap_policy = policy
    plugin.transformer_cls_names_to_wrap = own or list(getattr(model, "_no_split_modules", None) or [])


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model``'s parameters are FSDP2 shards (DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def load_full_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """``model.load_state_dict(state, strict=False)`` that also fills FSDP2-sharded parameters from full tensors
    (every rank passes the full ``state`` and keeps its own shard). Returns (missing, unexpected) keys."""
    if not is_sharded(model):
        return model.load_state_dict(state, strict=False)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    return set_model_state_dict(model, dict(state), options=StateDictOptions(full_state_dict=True, strict=False))


def save_optimizer(accelerator: Any, optimizer: Any, model: torch.nn.Module, folder: Path, is_main: bool) -> None:
    """Save ``optimizer``'s state into ``folder``: ``optimizer.pt``, or under FSDP accelerate's FSDP optimizer
    checkpoint, gathered as the plugin's ``state_dict_type`` says (a collective: call it on every rank)."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is not None:
        from accelerate.utils import save_fsdp_optimizer

        save_fsdp_optimizer(plugin, accelerator, optimizer, model, str(folder))
    elif is_main:
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")


def load_optimizer(accelerator: Any, optimizer: Any, model: torch.nn.Module, folder: Path) -> None:
    """Restore what ``save_optimizer`` wrote into ``folder`` (a collective under FSDP)."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is not None:
        from accelerate.utils import load_fsdp_optimizer

        load_fsdp_optimizer(plugin, accelerator, optimizer, model, str(folder))
    else:
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
