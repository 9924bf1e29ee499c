"""vLLM colocate mode: an agent's vLLM engine lives in the training process, on the training GPU.

``VLLMColocateBackend`` generates on an engine that implements ``ColocatedEngine`` (``VLLMEngine`` wraps
``vllm.LLM``; the tests pass a small fake over a transformers model). With sleep mode the engine frees its GPU memory
while the agents train, as TRL's GRPOTrainer does in colocate mode: it sleeps at level 2 (weights and KV cache
discarded) after it is built and after each search, and ``wake_up`` before a search maps the weights back, reloads
them from the training model (they were discarded) and then the KV cache. Without sleep mode the engine stays up
and ``wake_up`` reloads the weights only when the agent was updated since the last load.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import torch

from trl_mars.search.backends import Generation, Messages, OnText, SamplingConfig, chat_prompt_ids
from trl_mars.search.weight_sync import load_into_engine


class ColocatedEngine(Protocol):
    """What ``VLLMColocateBackend`` needs from an engine (``vllm.LLM``'s colocate surface)."""

    def generate(
        self, prompt_ids: Sequence[list[int]], sampling: SamplingConfig
    ) -> list[tuple[list[int], list[float]]]:
        """One ``(completion_ids, sampled-token log-probs)`` per prompt (log-probs after temperature/top-k/top-p)."""
        ...

    def sleep(self, level: int) -> None: ...

    def wake_up(self, tags: list[str]) -> None: ...

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None: ...

    def reset_prefix_cache(self) -> None: ...


class VLLMEngine:
    """``vllm.LLM`` in this process (``distributed_executor_backend="external_launcher"``, tensor parallel size 1),
    as TRL's colocate mode builds it: ``logprobs_mode="processed_logprobs"`` so the returned log-probs are those of
    the distribution sampled from; weights are loaded through the driver worker's model, as TRL does."""

    def __init__(
        self,
        model: str,
        *,
        gpu_memory_utilization: float,
        enable_sleep_mode: bool,
        max_model_len: int | None,
        model_impl: str,
        dtype: str,
        seed: int,
        rank: int,
        local_rank: int,
        world_size: int,
    ) -> None:
        from trl.trainer.utils import ensure_master_addr_port

        from trl_mars.extras import require

        require("vllm", "vllm", "vllm_mode='colocate'")
        from vllm import LLM

        os.environ.update(RANK=str(rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size))
        ensure_master_addr_port()
        self.llm = LLM(
            model=model,
            tensor_parallel_size=1,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enable_sleep_mode=enable_sleep_mode,
            model_impl=model_impl,
            dtype=dtype,
            distributed_executor_backend="external_launcher",
            seed=seed,
            max_num_batched_tokens=4096,
            logprobs_mode="processed_logprobs",
        )

    def generate(
        self, prompt_ids: Sequence[list[int]], sampling: SamplingConfig
    ) -> list[tuple[list[int], list[float]]]:
        from trl.generation.vllm_generation import extract_logprobs
        from vllm import SamplingParams

        s = sampling
        params = SamplingParams(
            n=1,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            min_p=s.min_p or 0.0,
            repetition_penalty=s.repetition_penalty,
            max_tokens=s.max_new_tokens,
            min_tokens=s.min_new_tokens,
            logprobs=0,  # the sampled token's own log-prob
            **(s.generation_kwargs or {}),
        )
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        logprobs, _ = extract_logprobs(outputs)
        ids = [list(o.outputs[0].token_ids) for o in outputs]
        return [(c, [float(t[0]) for t in lp]) for c, lp in zip(ids, logprobs, strict=True)]

    def sleep(self, level: int) -> None:
        self.llm.sleep(level=level)

    def wake_up(self, tags: list[str]) -> None:
        self.llm.wake_up(tags=tags)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(weights)

    def reset_prefix_cache(self) -> None:
        self.llm.reset_prefix_cache()


class VLLMColocateBackend:
    """Generation on a colocated engine, chat prompts encoded with the agent's tokenizer and chat template.

    ``sleep_mode``: the engine sleeps (level 2) from construction and after every ``sleep()``; ``wake_up(model,
    stale)`` must precede generation. ``generate`` refuses to run on a sleeping engine."""

    def __init__(
        self,
        engine: ColocatedEngine,
        tokenizer: Any,
        sampling: SamplingConfig | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        sleep_mode: bool = False,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.sampling = sampling or SamplingConfig()
        self.chat_template_kwargs = chat_template_kwargs or {}
        self.sleep_mode = sleep_mode
        self.asleep = False
        self.sleep()

    def sleep(self) -> None:
        """With sleep mode: free the engine's weights and KV cache (level 2) for training."""
        if self.sleep_mode and not self.asleep:
            self.engine.sleep(level=2)
            self.asleep = True

    def wake_up(self, model: torch.nn.Module, stale: bool, device: torch.device | None = None) -> bool:
        """Make the engine ready to generate with ``model``'s weights: a sleeping engine maps its weights back,
        reloads them all (level 2 discarded them), then its KV cache; an awake one reloads them when ``stale``.
        Returns whether weights were loaded. Under FSDP2 every process calls it at the same point (the gathers
        are collectives)."""
        if self.asleep:
            self.engine.wake_up(tags=["weights"])
            load_into_engine(self.engine, model, device)
            self.engine.wake_up(tags=["kv_cache"])
            self.asleep = False
            return True
        if stale:
            load_into_engine(self.engine, model, device)
        return stale

    def encode(self, prompt: Messages) -> list[int]:
        return chat_prompt_ids(self.tokenizer, prompt, self.chat_template_kwargs)

    def generate(self, prompts: Sequence[Messages], on_text: OnText | None = None) -> list[Generation]:
        if not prompts:
            return []
        if self.asleep:
            raise RuntimeError("the colocated vLLM engine is asleep: call wake_up(model, stale) before generating")
        prompt_ids = [self.encode(p) for p in prompts]
        results = []
        for i, (ids, (completion_ids, logprobs)) in enumerate(
            zip(prompt_ids, self.engine.generate(prompt_ids, self.sampling), strict=True)
        ):
            text = self.tokenizer.decode(completion_ids, skip_special_tokens=True)
            results.append(Generation(ids, list(completion_ids), text, list(logprobs)))
            if on_text is not None:
                on_text(i, text)
        return results
