"""Generation backends: one batched call turns many chat prompts into completions with sampling log-probs.

``TransformersBackend`` wraps any causal LM (PEFT models included) and records the log-probability of every
sampled token under the *sampling* distribution (after temperature / top-k / top-p), in O(batch x vocab)
memory. It samples from what ``SamplingConfig`` says and nothing else: the model's own ``generation_config`` is
ignored. ``VLLMServerBackend`` generates on a running ``trl vllm-serve`` (one server per agent) and pushes
weights to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from trl_mars.search.weight_sync import DEFAULT_BUCKET_BYTES, push_to_server

Messages = list[dict[str, str]]


@dataclass
class Generation:
    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    logprobs: list[float] = field(default_factory=list)


OnText = Callable[[int, str], None]
"""Called as ``on_text(i, text)`` as soon as completion ``i`` of a batch is final (e.g. to start scoring it)."""


class GenerationBackend(Protocol):
    """``concurrent_requests``: whether ``generate`` may be called from several threads at once, each call served
    independently (a server per agent, a device per agent). The search then calls such backends concurrently
    within a step and may run asynchronously (``SearchConfig.mode='async'``). A backend without the attribute
    counts as False: calls keep their order, as collectives and backends sharing a device need."""

    concurrent_requests: bool

    def generate(self, prompts: Sequence[Messages], on_text: OnText | None = None) -> list[Generation]: ...


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_new_tokens: int = 0  # EOS is suppressed until this many tokens (equal-length benchmarks)
    repetition_penalty: float = 1.0  # CTRL / HF / vLLM: logits of prompt and generated tokens / p (x p if < 0)
    min_p: float | None = None  # drop tokens with probability < min_p x the top token's (after temperature)
    generation_kwargs: dict[str, Any] | None = None  # extra keywords for `generate` / the vLLM server

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(
                f"invalid sampling: temperature={self.temperature}, top_p={self.top_p}, top_k={self.top_k}"
            )
        if self.repetition_penalty <= 0 or not (self.min_p is None or 0 <= self.min_p <= 1):
            raise ValueError(f"invalid sampling: repetition_penalty={self.repetition_penalty}, min_p={self.min_p}")


def warp_scores(s: SamplingConfig, scores: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
    """The sampling scores of (rows, vocab) float logits: repetition penalty on the ``seen`` tokens (logit / p if
    positive, x p if negative), then / temperature, top-k, top-p (the smallest prefix of the sorted distribution
    reaching ``top_p``) and min-p (tokens below ``min_p`` x the top probability) masked to -inf.

    >>> warp_scores(SamplingConfig(temperature=0.5, top_k=2), torch.tensor([[1.0, 3.0, 2.0]]))
    tensor([[-inf, 6., 4.]])
    """
    if s.repetition_penalty != 1.0 and seen is not None:
        penalised = torch.where(scores < 0, scores * s.repetition_penalty, scores / s.repetition_penalty)
        scores = torch.where(seen, penalised, scores)
    if s.temperature > 0 and s.temperature != 1.0:
        scores = scores / s.temperature
    if s.top_k > 0:
        kth = torch.topk(scores, min(s.top_k, scores.shape[-1]), dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        cum = sorted_scores.softmax(-1).cumsum(-1)
        drop = cum - sorted_scores.softmax(-1) >= s.top_p  # keep the smallest prefix reaching top_p
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    if s.min_p:
        probs = scores.softmax(-1)
        scores = scores.masked_fill(probs < s.min_p * probs.max(-1, keepdim=True).values, float("-inf"))
    return scores


class _SampleAndRecord(LogitsProcessor):
    """Applies the repetition penalty, temperature, top-k, top-p and min-p itself (so it is the last processor) and
    records log-probs. The penalty counts the prompt's own tokens (not its padding) and the generated ones.

    At step t it sees the token chosen at step t-1 in ``input_ids`` and gathers its log-prob from the
    distribution it kept; only one (batch, vocab) distribution is ever held. Rows that just emitted EOS are
    handed to ``on_finished(row, completion_ids)`` while the rest of the batch keeps generating.
    """

    def __init__(
        self,
        sampling: SamplingConfig,
        prompt_mask: torch.Tensor,
        eos_id: int,
        on_finished: Callable[[int, list[int]], None],
    ) -> None:
        self.sampling = sampling
        self.prompt_mask = prompt_mask
        self.prompt_len = prompt_mask.shape[1]
        self.eos_id = eos_id
        self.on_finished = on_finished
        self.finished: set[int] = set()
        self.previous: torch.Tensor | None = None
        self.logprobs: list[torch.Tensor] = []

    def report_finished(self, input_ids: torch.Tensor) -> None:
        for row in (input_ids[:, -1] == self.eos_id).nonzero().flatten().tolist():
            if row not in self.finished:
                self.finished.add(row)
                self.on_finished(row, input_ids[row, self.prompt_len :].tolist())

    def gather_previous(self, chosen: torch.Tensor) -> None:
        if self.previous is not None:
            self.logprobs.append(self.previous.gather(-1, chosen[:, None]).squeeze(-1))
            self.previous = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] > self.prompt_len:
            self.gather_previous(input_ids[:, -1])
            self.report_finished(input_ids)
        seen = None
        if self.sampling.repetition_penalty != 1.0:
            real = torch.ones_like(input_ids, dtype=torch.float)
            real[:, : self.prompt_len] = self.prompt_mask.float()
            seen = torch.zeros_like(scores, dtype=torch.float).scatter_add_(1, input_ids, real) > 0
        scores = warp_scores(self.sampling, scores.float(), seen)
        self.previous = F.log_softmax(scores, dim=-1)
        return scores


@contextmanager
def sampling_config_only(model: Any) -> Iterator[None]:
    """Hide the model's own ``generation_config`` (a checkpoint's ``repetition_penalty``, ``no_repeat_ngram_size``,
    ``suppress_tokens``, ...) from ``generate``, so that sampling, and the log-probs recorded, follow the
    ``SamplingConfig`` alone: ``transformers`` fills every field a call leaves unset from that config, even when an
    explicit ``generation_config`` is passed. Every module holding one (PEFT wrappers, base models) gets an empty
    ``GenerationConfig`` for the duration, then its own back."""
    holders = [m for m in model.modules() if isinstance(vars(m).get("generation_config"), GenerationConfig)]
    saved = [m.generation_config for m in holders]
    try:
        for m in holders:
            m.generation_config = GenerationConfig()
        yield
    finally:
        for m, config in zip(holders, saved):
            m.generation_config = config


def chat_prompt_ids(tokenizer, prompt: Messages, chat_template_kwargs: dict) -> list[int]:
    """The token ids of ``prompt`` through the chat template, with the generation prompt appended."""
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True, **chat_template_kwargs)
    return tokenizer(text, add_special_tokens=False).input_ids


class TransformersBackend:
    """Batched generation over chat prompts with the model's chat template (left padding).

    ``batching="lockstep"``: one ``model.generate`` per ``max_batch_size`` prompts (all of them by default); a
    finished row rides in the batch until its longest row ends. ``batching="refill"``: ``refill.RefillDecoder`` with
    ``max_batch_size`` slots (all prompts by default): a finished row leaves the batch at once and a pending prompt
    takes its slot; same sampling, and with greedy decoding the same answers. ``generation_kwargs`` and
    ``synced_gpus`` need lockstep (they are ``generate``'s own); None picks ``DEFAULT_BATCHING`` unless they are set,
    and falls back to lockstep for a model whose KV cache cannot be refilled (sliding-window or recurrent layers).

    ``synced_gpus=True``: the model is sharded across processes (FSDP): each ``generate`` keeps running forwards
    until every process's batch is done, as all must take part in each forward (``transformers``' own flag; None
    lets ``generate`` decide, which misses models sharded by accelerate's FSDP2)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        sampling: SamplingConfig | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        max_batch_size: int | None = None,
        synced_gpus: bool | None = None,
        batching: str | None = None,
    ) -> None:
        self.auto_batching = batching is None
        if batching is None:  # generation_kwargs and synced_gpus are generate's own
            kwargs = sampling is not None and sampling.generation_kwargs
            batching = "lockstep" if synced_gpus or kwargs else DEFAULT_BATCHING
        check_batching(batching, sampling, synced_gpus)
        if tokenizer.chat_template is None:
            raise ValueError("tokenizer has no chat_template; set one (see trl_mars.testing.CHAT_TEMPLATE)")
        if synced_gpus and max_batch_size:
            raise ValueError("max_batch_size: splitting batches makes the number of generate calls differ between "
                             "processes, which synced_gpus (sharded models) cannot allow")  # fmt: skip
        self.model = model
        self.tokenizer = tokenizer
        self.sampling = sampling or SamplingConfig()
        self.chat_template_kwargs = chat_template_kwargs or {}
        self.max_batch_size = max_batch_size
        self.synced_gpus = synced_gpus
        self.batching = batching

    concurrent_requests = False  # one model in this process: calls keep their order (and FSDP's collectives)

    def encode(self, prompt: Messages) -> list[int]:
        return chat_prompt_ids(self.tokenizer, prompt, self.chat_template_kwargs)

    def generate(self, prompts: Sequence[Messages], on_text: OnText | None = None) -> list[Generation]:
        if not prompts:
            return []
        size = self.max_batch_size or len(prompts)
        out: list[Generation] = []
        if self.batching == "refill":
            from trl_mars.search.refill import RefillUnsupported

            try:
                return self._generate_refill([self.encode(p) for p in prompts], size, on_text)
            except RefillUnsupported:
                if not self.auto_batching:
                    raise
                self.batching = "lockstep"  # batching=None: this model's cache cannot be refilled; generate instead
        with sampling_config_only(self.model):
            for i in range(0, len(prompts), size):
                out += self._generate_batch([self.encode(p) for p in prompts[i : i + size]], i, on_text)
        return out

    def _truncate(self, ids: list[int]) -> list[int]:
        """Completion ids up to and including the first EOS."""
        eos = self.tokenizer.eos_token_id
        return ids[: ids.index(eos) + 1] if eos in ids else ids

    @torch.no_grad()
    def _generate_batch(self, prompt_ids: list[list[int]], offset: int, on_text: OnText | None) -> list[Generation]:
        tok = self.tokenizer

        def finished(row: int, ids: list[int]) -> None:
            if on_text is not None:
                on_text(offset + row, tok.decode(self._truncate(ids), skip_special_tokens=True))

        batch = tok.pad({"input_ids": prompt_ids}, padding=True, return_tensors="pt", padding_side="left")
        device = next(self.model.parameters()).device
        input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        recorder = _SampleAndRecord(self.sampling, attention_mask, tok.eos_token_id, finished)
        greedy = self.sampling.temperature == 0
        min_length = {"min_new_tokens": self.sampling.min_new_tokens} if self.sampling.min_new_tokens else {}
        sequences = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=self.sampling.max_new_tokens,
            do_sample=not greedy,
            temperature=1.0,
            top_p=1.0,
            top_k=None,
            logits_processor=LogitsProcessorList([recorder]),
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            synced_gpus=self.synced_gpus,
            **min_length,
            **(self.sampling.generation_kwargs or {}),
        )
        completions = sequences[:, input_ids.shape[1] :]
        if completions.shape[1]:
            recorder.gather_previous(completions[:, -1])
        logprobs = torch.stack(recorder.logprobs, 1) if recorder.logprobs else completions.float()
        results = []
        for row, ids in enumerate(completions.tolist()):
            ids = self._truncate(ids)
            text = tok.decode(ids, skip_special_tokens=True)
            if on_text is not None and row not in recorder.finished:  # ran out of tokens, or EOS on the last step
                on_text(offset + row, text)
            results.append(Generation(prompt_ids[row], ids, text, logprobs[row, : len(ids)].tolist()))
        return results

    def _generate_refill(self, prompt_ids: list[list[int]], slots: int, on_text: OnText | None) -> list[Generation]:
        from trl_mars.search.refill import RefillDecoder  # refill imports this module's sampling

        tok = self.tokenizer
        results: list[Generation | None] = [None] * len(prompt_ids)

        def done(i: int, ids: list[int], logprobs: list[float]) -> None:
            ids = self._truncate(ids)
            results[i] = Generation(
                prompt_ids[i], ids, tok.decode(ids, skip_special_tokens=True), logprobs[: len(ids)]
            )
            if on_text is not None:
                on_text(i, results[i].text)

        RefillDecoder(self.model, self.sampling, tok.eos_token_id, slots).run(prompt_ids, done)
        return results


BATCHING = ("lockstep", "refill")
DEFAULT_BATCHING = "refill"  # faster in benchmarks/rollout_refill.py (BENCHMARKS.md); "lockstep" stays selectable


def check_batching(batching: str, sampling: SamplingConfig | None, synced_gpus: bool | None) -> None:
    """``ValueError`` for a ``batching`` the backend cannot honour."""
    if batching not in BATCHING:
        raise ValueError(f"batching must be one of {BATCHING}, got {batching!r}")
    if batching == "refill" and synced_gpus:
        raise ValueError("batching='refill' cannot run sharded models (synced_gpus): use 'lockstep'")
    if batching == "refill" and sampling is not None and sampling.generation_kwargs:
        raise ValueError(f"batching='refill' does not pass generation_kwargs {sorted(sampling.generation_kwargs)} "
                         "to generate: use 'lockstep'")  # fmt: skip


class ScriptedBackend:
    """A backend that answers with ``respond(messages) -> str`` (tests, demos, and the planted benchmark)."""

    concurrent_requests = False

    def __init__(self, respond: Callable[[Messages], str]) -> None:
        self.respond = respond
        self.calls: list[int] = []

    def generate(self, prompts: Sequence[Messages], on_text: OnText | None = None) -> list[Generation]:
        self.calls.append(len(prompts))
        out = []
        for i, prompt in enumerate(prompts):
            out.append(Generation([], [], self.respond(prompt)))
            if on_text is not None:
                on_text(i, out[-1].text)
        return out


class VLLMServerBackend:
    """Generation on a running ``trl vllm-serve`` server through TRL's ``VLLMClient`` (one server per agent).

    Returns prompt and completion token ids with each sampled token's log-prob, so the nodes it writes can be
    trained on; ``push_weights`` sends updated weights to the server (``MultiAgentTreeTrainer`` does so after each
    update of the agent). The client side needs the ``vllm`` extra. Each server serves many requests at once
    (continuous batching), so calls may come from several threads (``concurrent_requests``).
    """

    concurrent_requests = True

    def __init__(
        self,
        client: Any,
        tokenizer: Any,
        sampling: SamplingConfig | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.client = client
        self.tokenizer = tokenizer
        self.sampling = sampling or SamplingConfig()
        self.chat_template_kwargs = chat_template_kwargs or {}

    @classmethod
    def connect(
        cls, base_url: str, tokenizer: Any, group_port: int = 51216, timeout: float = 0.0, **kwargs: Any
    ) -> VLLMServerBackend:
        """Connect to the server at ``base_url`` (waiting up to ``timeout`` seconds for it to come up)."""
        from trl.generation.vllm_client import VLLMClient

        return cls(
            VLLMClient(base_url=base_url, group_port=group_port, connection_timeout=timeout), tokenizer, **kwargs
        )

    def generate(self, prompts: Sequence[Messages], on_text: OnText | None = None) -> list[Generation]:
        if not prompts:
            return []
        s = self.sampling
        extra = {**({"min_tokens": s.min_new_tokens} if s.min_new_tokens else {}), **(s.generation_kwargs or {})}
        out = self.client.chat(
            list(prompts),
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            max_tokens=s.max_new_tokens,
            repetition_penalty=s.repetition_penalty,
            min_p=s.min_p or 0.0,
            logprobs=0,  # the sampled token's own log-prob
            generation_kwargs=extra or None,
            chat_template_kwargs=self.chat_template_kwargs or None,
        )
        results = []
        rows = zip(out["prompt_ids"], out["completion_ids"], out["logprobs"], strict=True)
        for i, (prompt_ids, completion_ids, logprobs) in enumerate(rows):
            text = self.tokenizer.decode(completion_ids, skip_special_tokens=True)
            results.append(Generation(list(prompt_ids), list(completion_ids), text, [float(t[0]) for t in logprobs]))
            if on_text is not None:
                on_text(i, text)
        return results

    def push_weights(
        self, model: Any, stream: bool = True, bucket_bytes: int = DEFAULT_BUCKET_BYTES, device: Any = None
    ) -> int:
        """Send every weight of ``model`` to the server under the base model's names, in buckets of
        ``bucket_bytes`` (one ``update_named_params`` request each), then drop the server's prefix cache; a LoRA
        layer is sent as W + ΔW computed aside, FSDP2 shards are gathered one parameter at a time as they are sent
        (``trl_mars.search.weight_sync``). Every process calls it; only ``stream=True`` (one process) talks to the
        server, the others take part in the gathers. Returns the number of requests."""
        return push_to_server(self.client, model, bucket_bytes, stream, device)
