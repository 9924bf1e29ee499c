"""``TraceEncoder``: normalised embeddings from a TRACE-trained causal LM, with routed query inference.

Query modes (candidates always use ``direct``):

- ``direct``: embed ``[prompt; <|emb|>]``, i.e. the last prompt state (no reasoning);
- ``cot``: always reason: greedy decoding with ``<|emb|>`` forbidden at the first step, until ``<|emb|>``;
- ``routed`` (TRACE): one forward on the prompt; if ``argmax_y P(y | prompt) = <|emb|>`` the query is embedded
  from that very forward, otherwise the CoT is decoded greedily until ``<|emb|>``.

A reasoned query is re-encoded as ``[prompt; CoT; <|emb|>]`` and pooled at the pre-``<|emb|>`` position, exactly as
in training.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from trl_mars.embed.collator import left_pad
from trl_mars.embed.prompts import (
    DEFAULT_CANDIDATE_INSTRUCTION,
    DEFAULT_QUERY_INSTRUCTION,
    EMB_TOKEN,
    emb_token_id,
    prompt_ids,
    prompt_parts,
)
from trl_mars.losses.trace import pool_pre_token

ENCODER_CONFIG_NAME = "trace_encoder.json"
Mode = Literal["direct", "cot", "routed"]


@dataclass
class EncoderSettings:
    """What a saved TRACE model needs besides weights and tokenizer (written as ``trace_encoder.json``)."""

    emb_token: str = EMB_TOKEN
    query_instruction: str = DEFAULT_QUERY_INSTRUCTION
    candidate_instruction: str = DEFAULT_CANDIDATE_INSTRUCTION
    max_length: int = 512
    max_reasoning_tokens: int = 128

    def save(self, directory: str | os.PathLike) -> None:
        Path(directory, ENCODER_CONFIG_NAME).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> EncoderSettings:
        path = Path(directory, ENCODER_CONFIG_NAME)
        return cls(**json.loads(path.read_text())) if path.exists() else cls()


@dataclass
class Encoded:
    """Embeddings ``(N, H)`` (L2-normalised, float32, CPU), which rows reasoned, and their CoT text."""

    embeddings: torch.Tensor
    reasoned: list[bool] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)

    @property
    def reasoning_rate(self) -> float:
        return sum(self.reasoned) / max(len(self.reasoned), 1)


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the (unwrapped, PEFT-free) model's forward takes ``logits_to_keep``."""
    model = getattr(model, "module", model)
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def last_hidden_and_logits(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-layer hidden states ``(B, T, H)`` and the next-token logits of the last position ``(B, V)``.

    With ``logits_to_keep`` (a bool saying the model supports it), only the last position's logits are computed.
    """
    kwargs = {"logits_to_keep": 1} if logits_to_keep else {}
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False, **kwargs
    )
    return out.hidden_states[-1], out.logits[:, -1]


def load_trace_model(path: str | os.PathLike, **model_kwargs) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a saved TRACE model: a full model, or a PEFT adapter whose base is resized to the saved tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    adapter_config = Path(path, "adapter_config.json")
    if adapter_config.exists():
        from peft import PeftModel

        base_path = json.loads(adapter_config.read_text())["base_model_name_or_path"]
        base = AutoModelForCausalLM.from_pretrained(base_path, **model_kwargs)
        base.resize_token_embeddings(len(tokenizer))
        model = PeftModel.from_pretrained(base, path)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **model_kwargs)
    return model, tokenizer


class TraceEncoder:
    """Encode texts with a TRACE model: ``encode(texts, kind="query"|"candidate", mode=...)``."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: EncoderSettings | None = None
    ):
        self.model, self.tokenizer = model, tokenizer
        self.settings = settings or EncoderSettings()
        self.emb_token_id = emb_token_id(tokenizer, self.settings.emb_token)
        self._logits_to_keep = accepts_logits_to_keep(model)
        self.parts = {
            "query": prompt_parts(tokenizer, self.settings.query_instruction),
            "candidate": prompt_parts(tokenizer, self.settings.candidate_instruction),
        }

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **model_kwargs) -> TraceEncoder:
        """Load weights, tokenizer (with ``<|emb|>``) and ``trace_encoder.json`` saved by ``TraceEmbedTrainer``."""
        model, tokenizer = load_trace_model(path, **model_kwargs)
        return cls(model.eval(), tokenizer, EncoderSettings.load(path))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(
        self, texts: list[str], kind: str = "query", mode: Mode = "routed", batch_size: int = 32
    ) -> torch.Tensor:
        """L2-normalised embeddings ``(len(texts), H)``."""
        return self.encode_with_details(texts, kind, mode, batch_size).embeddings

    @torch.no_grad()
    def encode_with_details(
        self, texts: list[str], kind: str = "query", mode: Mode = "routed", batch_size: int = 32
    ) -> Encoded:
        """Embeddings plus, per text, whether it reasoned and the reasoning text."""
        if kind not in self.parts:
            raise ValueError(f"kind must be 'query' or 'candidate', got {kind!r}")
        if mode not in ("direct", "cot", "routed"):
            raise ValueError(f"mode must be 'direct', 'cot' or 'routed', got {mode!r}")
        mode = "direct" if kind == "candidate" else mode
        out = Encoded(torch.empty(0))
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self._encode_batch(texts[start : start + batch_size], kind, mode)
            chunks.append(batch.embeddings)
            out.reasoned += batch.reasoned
            out.reasoning += batch.reasoning
        out.embeddings = (
            torch.cat(chunks) if chunks else torch.empty(0, self.model.config.get_text_config().hidden_size)
        )
        return out

    @torch.no_grad()
    def encode_with_reasoning(self, texts: list[str], reasoning: list[str], batch_size: int = 32) -> Encoded:
        """Query embeddings with the given reasoning teacher-forced: ``[prompt; reasoning; <|emb|>]`` pooled at the
        pre-``<|emb|>`` position (reasoning cut to ``max_reasoning_tokens``); an empty reasoning embeds directly."""
        if len(texts) != len(reasoning):
            raise ValueError(f"{len(texts)} texts but {len(reasoning)} reasoning strings")
        budget = self.settings.max_length - 1 - self.settings.max_reasoning_tokens
        rows = []
        for text, cot in zip(texts, reasoning):
            cot_ids = self.tokenizer(cot, add_special_tokens=False)["input_ids"] if cot else []
            prompt = prompt_ids(self.tokenizer, self.parts["query"], text, budget)
            rows.append([*prompt, *cot_ids[: self.settings.max_reasoning_tokens], self.emb_token_id])
        chunks = []
        for start in range(0, len(rows), batch_size):
            ids, mask = (
                t.to(self.device) for t in left_pad(rows[start : start + batch_size], self.tokenizer.pad_token_id)
            )
            hidden, _ = last_hidden_and_logits(self.model, ids, mask, self._logits_to_keep)
            chunks.append(pool_pre_token(hidden, ids, self.emb_token_id).cpu())
        hidden_size = self.model.config.get_text_config().hidden_size
        embeddings = torch.cat(chunks) if chunks else torch.empty(0, hidden_size)
        return Encoded(embeddings, [bool(cot) for cot in reasoning], list(reasoning))

    def _encode_batch(self, texts: list[str], kind: str, mode: Mode) -> Encoded:
        budget = self.settings.max_length - 1 - (0 if mode == "direct" else self.settings.max_reasoning_tokens)
        prompts = [prompt_ids(self.tokenizer, self.parts[kind], t, budget) for t in texts]
        ids, mask = (t.to(self.device) for t in left_pad(prompts, self.tokenizer.pad_token_id))
        reason = torch.ones(len(texts), dtype=torch.bool, device=self.device)
        embeddings = torch.empty(0)
        if mode != "cot":
            hidden, logits = last_hidden_and_logits(self.model, ids, mask, self._logits_to_keep)
            embeddings = torch.nn.functional.normalize(hidden[:, -1].float(), dim=-1)
            reason = (logits.argmax(-1) != self.emb_token_id) if mode == "routed" else ~reason
        reasoning = [""] * len(texts)
        if reason.any():
            rows = reason.nonzero().flatten()
            cot_ids = self._generate_reasoning(ids[rows], mask[rows])
            full = [[*prompts[r], *c, self.emb_token_id] for r, c in zip(rows.tolist(), cot_ids)]
            f_ids, f_mask = (t.to(self.device) for t in left_pad(full, self.tokenizer.pad_token_id))
            hidden, _ = last_hidden_and_logits(self.model, f_ids, f_mask, self._logits_to_keep)
            reasoned_emb = pool_pre_token(hidden, f_ids, self.emb_token_id)
            embeddings = reasoned_emb if mode == "cot" else embeddings.index_copy(0, rows, reasoned_emb)
            for r, c in zip(rows.tolist(), cot_ids):
                reasoning[r] = self.tokenizer.decode(c)
        return Encoded(embeddings.cpu(), reason.tolist(), reasoning)

    def _generate_reasoning(self, ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """Greedy CoT until ``<|emb|>`` (excluded from the result), never ``<|emb|>`` as the first token."""
        generated = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=self.settings.max_reasoning_tokens,
            do_sample=False,
            eos_token_id=self.emb_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            begin_suppress_tokens=[self.emb_token_id],
        )[:, ids.shape[1] :].tolist()
        return [seq[: seq.index(self.emb_token_id)] if self.emb_token_id in seq else seq for seq in generated]
