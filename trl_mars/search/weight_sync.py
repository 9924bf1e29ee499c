"""Training weights to a vLLM engine, under the base model's names, one full tensor at a time.

``pushed_weights(model)`` lists what vLLM loads: every parameter of the base model, with a LoRA layer's weight as
W + ΔW of its active adapters (computed aside: the training model is never merged and unmerged, so its base weights
do not drift by round-off), ``modules_to_save`` copies in place of their originals, and the adapter factors left
out. Under FSDP2 a parameter is a DTensor shard; its full tensor is gathered (``DTensor.full_tensor()``, a collective:
every process must walk the same list) only when it is sent, so a push holds one gathered parameter at a time
beside the shards (plus vLLM's own packing buffers). Its name, dtype and shape are known without gathering (a DTensor's shape is the global one).

``push_to_server`` streams the list to a ``trl vllm-serve`` through TRL's ``VLLMClient``: one ``weight_update()``
(the server prepares and finalises the model once), in buckets of at most ``bucket_bytes`` of full tensors, each
one ``update_named_params(metadata, tensors)`` call (one ``/update_weights`` request announcing the bucket, then its
tensors broadcast in order). ``load_into_engine`` feeds the same tensors to an in-process (colocated) engine.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

DEFAULT_BUCKET_BYTES = 1 << 30
"""1 GiB per ``/update_weights`` request (vLLM's packed broadcast buffers are of that order)."""

_WRAPPER_PARTS = ("_checkpoint_wrapped_module.", "modules_to_save.default.", ".base_layer")


def _is_dtensor(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


@dataclass(frozen=True)
class PushedWeight:
    """One tensor vLLM loads: ``name`` (the base model's), the training ``param`` it comes from (a shard under
    FSDP2), and ``layer``, the LoRA layer whose base weight it is (then pushed as W + ΔW), or None."""

    name: str
    param: torch.Tensor
    layer: Any = None

    @property
    def dtype(self) -> torch.dtype:
        return self.param.dtype

    @property
    def shape(self) -> list[int]:
        return list(self.param.shape)  # a DTensor's shape is the full one

    @property
    def nbytes(self) -> int:
        return self.param.numel() * self.param.element_size()

    def metadata(self) -> tuple[str, str, list[int]]:
        """``(name, dtype, shape)`` as ``VLLMClient.update_named_params`` announces it (vLLM dtype names)."""
        return self.name, str(self.dtype).removeprefix("torch."), self.shape

    @torch.no_grad()
    def full(self, device: torch.device | None = None) -> torch.Tensor:
        """The full tensor (a collective under FSDP2; CPU-offloaded shards are moved to ``device`` first), with
        a LoRA layer's ΔW = B A · scaling of each active adapter added, in the base weight's dtype."""
        weight = self.param.detach()
        if self.layer is not None:
            for adapter in (a for a in self.layer.active_adapters if a in self.layer.lora_A):
                if self.layer.use_dora.get(adapter):
                    raise ValueError(f"{self.name}: DoRA adapters cannot be pushed to vLLM yet")
                weight = weight + self.layer.get_delta_weight(adapter).to(weight.dtype)
        if _is_dtensor(weight):
            if device is not None and weight.device != device:
                weight = weight.to(device)
            weight = weight.full_tensor()
        return weight


def pushed_weights(model: torch.nn.Module) -> list[PushedWeight]:
    """What vLLM loads from ``model`` (unwrapped from DDP; FSDP2 and PEFT models as they are), in parameter order.

    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 3))
    >>> [(w.name, w.shape) for w in pushed_weights(model)]
    [('0.weight', [3, 2]), ('0.bias', [3])]
    """
    modules = dict(model.named_modules())
    out = []
    for name, param in model.named_parameters():
        if "lora_" in name or "original_module" in name:
            continue  # adapter factors travel inside ΔW; modules_to_save replace their originals
        owner, _, leaf = name.rpartition(".")
        layer = None
        if owner.endswith(".base_layer") and leaf == "weight":
            layer = modules[owner.removesuffix(".base_layer")]
        clean = name.removeprefix("base_model.model.")
        for prefix in _WRAPPER_PARTS:
            clean = clean.replace(prefix, "")
        out.append(PushedWeight(clean, param, layer))
    return out


def buckets(sizes: Sequence[int], bucket_bytes: int) -> list[list[int]]:
    """Consecutive indices of ``sizes`` (bytes) grouped greedily into buckets of at most ``bucket_bytes``; a tensor
    larger than a bucket travels alone.

    >>> buckets([4, 4, 4, 10, 1], bucket_bytes=8)
    [[0, 1], [2], [3], [4]]
    >>> buckets([0, 8, 0], bucket_bytes=8)
    [[0, 1, 2]]
    """
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    out: list[list[int]] = []
    used = 0
    for i, size in enumerate(sizes):
        if not out or used + size > bucket_bytes:
            out.append([])
            used = 0
        out[-1].append(i)
        used += size
    return out


def iter_full(
    weights: Sequence[PushedWeight], device: torch.device | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, full tensor)`` for each weight, gathered lazily as it is consumed."""
    for w in weights:
        yield w.name, w.full(device)


def push_to_server(
    client: Any,
    model: torch.nn.Module,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    stream: bool = True,
    device: torch.device | None = None,
) -> int:
    """Send ``model``'s weights to the server of ``client`` (TRL's ``VLLMClient``) in buckets, then drop its prefix
    cache; returns the number of ``update_named_params`` requests made. ``stream=False`` (the processes that do not
    talk to the server) only takes part in the FSDP2 gathers, and does nothing for an unsharded model."""
    weights = pushed_weights(model)
    if not stream:
        if any(_is_dtensor(w.param) for w in weights):
            for _ in iter_full(weights, device):
                pass
        return 0
    groups = buckets([w.nbytes for w in weights], bucket_bytes)
    with client.weight_update():
        for group in groups:
            part = [weights[i] for i in group]
            client.update_named_params([w.metadata() for w in part], iter_full(part, device))
    client.reset_prefix_cache()
    return len(groups)


def load_into_engine(engine: Any, model: torch.nn.Module, device: torch.device | None = None) -> None:
    """Load ``model``'s weights into a colocated engine (``engine.load_weights(iterable of (name, tensor))``, vLLM's
    model ``load_weights``), streamed one full tensor at a time, then reset its prefix cache. Under FSDP2 every
    process calls it (the gathers are collectives), each for its own engine."""
    engine.load_weights(iter_full(pushed_weights(model), device))
    engine.reset_prefix_cache()
