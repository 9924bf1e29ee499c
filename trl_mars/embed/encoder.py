"""``TraceEncoder``: normalised embeddings from a TRACE-trained causal LM, with routed query inference.

Query modes (candidates always use ``direct``):

- ``direct``: embed ``[prompt; <|emb|>]``, i.e. the last prompt state (no reasoning);
- ``cot``: always reason: greedy decoding with ``<|emb|>`` forbidden at the first step, until ``<|emb|>``;
- ``routed`` (TRACE): one forward on the prompt; if ``argmax_y P(y | prompt) = <|emb|>`` the query is embedded
  from that very forward, otherwise the CoT is decoded greedily until ``<|emb|>``.

A reasoned query is re-encoded as ``[prompt; CoT; <|emb|>]`` and pooled at the pre-``<|emb|>`` position, exactly as
in training.

With a vision-language model of a family in ``trl_mars.embed.vision.FAMILIES`` (Qwen2-VL, Qwen2.5-VL, LLaVA)
and its image processor, ``images`` (aligned with ``texts``: a PIL
image, a path or None each) put each image before its text, as in training (``trl_mars.embed.vision``); the vision
inputs go to every forward and to ``generate``. ``images=None`` (or all None) is the text path, unchanged.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from trl_mars.embed.collator import left_pad
from trl_mars.embed.prompts import (
    DEFAULT_CANDIDATE_INSTRUCTION,
    DEFAULT_QUERY_INSTRUCTION,
    EMB_TOKEN,
    emb_token_id,
    prompt_ids,
    prompt_parts,
)
from trl_mars.embed.vision import ImageBatch, ImageLike, VisionSpec, check_image_tokens, has_vision
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
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: bool = True,
    **vision_inputs: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-layer hidden states ``(B, T, H)`` and the next-token logits of the last position ``(B, V)``.

    With ``logits_to_keep`` (a bool saying the model supports it), only the last position's logits are computed.
    ``vision_inputs``: a VLM batch's vision kwargs (``pixel_values`` and its family's, see ``ImageBatch``).
    """
    kwargs = {"logits_to_keep": 1} if logits_to_keep else {}
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        output_hidden_states=True,
        use_cache=False,
        **kwargs,
        **vision_inputs,
    )
    return out.hidden_states[-1], out.logits[:, -1]


def load_trace_model(
    path: str | os.PathLike, **model_kwargs
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, object | None]:
    """Load a saved TRACE model: a full model, or a PEFT adapter whose base is resized to the saved tokenizer; a VLM
    loads with ``AutoModelForImageTextToText`` and its image processor (third item; None for a text-only model)."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    adapter_config = Path(path, "adapter_config.json")
    base_path = json.loads(adapter_config.read_text())["base_model_name_or_path"] if adapter_config.exists() else path
    config = AutoConfig.from_pretrained(base_path)
    auto = AutoModelForImageTextToText if has_vision(config) else AutoModelForCausalLM
    if adapter_config.exists():
        from peft import PeftModel

        base = auto.from_pretrained(base_path, **model_kwargs)
        base.resize_token_embeddings(len(tokenizer))
        model = PeftModel.from_pretrained(base, path)
    else:
        model = auto.from_pretrained(path, **model_kwargs)
    image_processor = None
    if has_vision(config):  # saved next to the weights by TraceEmbedTrainer, else the base model's
        saved = Path(path, "preprocessor_config.json").exists()
        image_processor = AutoImageProcessor.from_pretrained(path if saved else base_path)
    return model, tokenizer, image_processor


class TraceEncoder:
    """Encode texts (and images, with a VLM) with a TRACE model: ``encode(texts, images, kind=..., mode=...)``."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        settings: EncoderSettings | None = None,
        image_processor=None,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.settings = settings or EncoderSettings()
        self.emb_token_id = emb_token_id(tokenizer, self.settings.emb_token)
        self._logits_to_keep = accepts_logits_to_keep(model)
        self.parts = {
            "query": prompt_parts(tokenizer, self.settings.query_instruction),
            "candidate": prompt_parts(tokenizer, self.settings.candidate_instruction),
        }
        self.image_processor = image_processor
        self.vision = (
            VisionSpec.from_model(model.config, tokenizer, image_processor) if image_processor is not None else None
        )

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **model_kwargs) -> TraceEncoder:
        """Load weights, tokenizer (with ``<|emb|>``), image processor (VLMs) and ``trace_encoder.json`` saved by
        ``TraceEmbedTrainer``."""
        model, tokenizer, image_processor = load_trace_model(path, **model_kwargs)
        return cls(model.eval(), tokenizer, EncoderSettings.load(path), image_processor)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(
        self,
        texts: list[str],
        images: list[ImageLike] | None = None,
        kind: str = "query",
        mode: Mode = "routed",
        batch_size: int = 32,
    ) -> torch.Tensor:
        """L2-normalised embeddings ``(len(texts), H)``; ``images`` aligned with ``texts`` (PIL, path or None)."""
        return self.encode_with_details(texts, images, kind, mode, batch_size).embeddings

    def _images(self, texts: list[str], images: list[ImageLike] | None) -> list[ImageLike]:
        if images is None:
            return [None] * len(texts)
        if len(images) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(images)} images (use None for a text-only item)")
        if self.vision is None and any(img is not None for img in images):
            raise ValueError("images were given but this encoder has no image processor (not a vision model)")
        return list(images)

    @torch.no_grad()
    def encode_with_details(
        self,
        texts: list[str],
        images: list[ImageLike] | None = None,
        kind: str = "query",
        mode: Mode = "routed",
        batch_size: int = 32,
    ) -> Encoded:
        """Embeddings plus, per item, whether it reasoned and the reasoning text."""
        if kind not in self.parts:
            raise ValueError(f"kind must be 'query' or 'candidate', got {kind!r}")
        if mode not in ("direct", "cot", "routed"):
            raise ValueError(f"mode must be 'direct', 'cot' or 'routed', got {mode!r}")
        images = self._images(texts, images)
        mode = "direct" if kind == "candidate" else mode
        out = Encoded(torch.empty(0))
        chunks = []
        for start in range(0, len(texts), batch_size):
            rows = slice(start, start + batch_size)
            batch = self._encode_batch(texts[rows], images[rows], kind, mode)
            chunks.append(batch.embeddings)
            out.reasoned += batch.reasoned
            out.reasoning += batch.reasoning
        out.embeddings = torch.cat(chunks) if chunks else self._empty()
        return out

    def _empty(self) -> torch.Tensor:
        return torch.empty(0, self.model.config.get_text_config().hidden_size)

    @torch.no_grad()
    def encode_with_reasoning(
        self,
        texts: list[str],
        reasoning: list[str],
        images: list[ImageLike] | None = None,
        batch_size: int = 32,
    ) -> Encoded:
        """Query embeddings with the given reasoning teacher-forced: ``[prompt; reasoning; <|emb|>]`` pooled at the
        pre-``<|emb|>`` position (reasoning cut to ``max_reasoning_tokens``); an empty reasoning embeds directly."""
        if len(texts) != len(reasoning):
            raise ValueError(f"{len(texts)} texts but {len(reasoning)} reasoning strings")
        images = self._images(texts, images)
        budget = self.settings.max_length - 1 - self.settings.max_reasoning_tokens
        chunks = []
        for start in range(0, len(texts), batch_size):
            rows = slice(start, start + batch_size)
            prompts, batch_images = self._prompts(texts[rows], images[rows], "query", budget)
            full = []
            for prompt, cot in zip(prompts, reasoning[rows]):
                cot_ids = self.tokenizer(cot, add_special_tokens=False)["input_ids"] if cot else []
                full.append([*prompt, *cot_ids[: self.settings.max_reasoning_tokens], self.emb_token_id])
            chunks.append(self._pool(full, batch_images))
        embeddings = torch.cat(chunks) if chunks else self._empty()
        return Encoded(embeddings, [bool(cot) for cot in reasoning], list(reasoning))

    def _prompts(
        self, texts: list[str], images: list[ImageLike], kind: str, budget: int
    ) -> tuple[list[list[int]], ImageBatch]:
        """Prompt ids per item (image placeholder first) and the items' processed images."""
        if self.vision is None:
            no_images = ImageBatch({}, [0] * len(texts), [0] * len(texts))
            return [prompt_ids(self.tokenizer, self.parts[kind], t, budget) for t in texts], no_images
        batch = self.vision.process(images, f"{kind} image")
        prompts = []
        for i, text in enumerate(texts):
            ids = prompt_ids(
                self.tokenizer, self.parts[kind], text, budget, self.vision.placeholder(batch.num_tokens[i])
            )
            check_image_tokens(ids, self.vision.image_token_id, batch.num_tokens[i], f"{kind} {i}")
            prompts.append(ids)
        return prompts, batch

    def _vision_inputs(self, batch: ImageBatch, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return batch.model_inputs(ids, self.vision.image_token_id) if self.vision is not None else {}

    def _pool(self, rows: list[list[int]], images: ImageBatch) -> torch.Tensor:
        """Pre-``<|emb|>`` embeddings of full rows ``[prompt; ...; <|emb|>]``."""
        ids, mask = (t.to(self.device) for t in left_pad(rows, self.tokenizer.pad_token_id))
        vision = self._vision_inputs(images, ids)
        hidden, _ = last_hidden_and_logits(self.model, ids, mask, self._logits_to_keep, **vision)
        return pool_pre_token(hidden, ids, self.emb_token_id).cpu()

    def _encode_batch(self, texts: list[str], images: list[ImageLike], kind: str, mode: Mode) -> Encoded:
        budget = self.settings.max_length - 1 - (0 if mode == "direct" else self.settings.max_reasoning_tokens)
        prompts, batch_images = self._prompts(texts, images, kind, budget)
        ids, mask = (t.to(self.device) for t in left_pad(prompts, self.tokenizer.pad_token_id))
        reason = torch.ones(len(texts), dtype=torch.bool, device=self.device)
        embeddings = torch.empty(0)
        if mode != "cot":
            vision = self._vision_inputs(batch_images, ids)
            hidden, logits = last_hidden_and_logits(self.model, ids, mask, self._logits_to_keep, **vision)
            embeddings = torch.nn.functional.normalize(hidden[:, -1].float(), dim=-1)
            reason = (logits.argmax(-1) != self.emb_token_id) if mode == "routed" else ~reason
        reasoning = [""] * len(texts)
        if reason.any():
            rows = reason.nonzero().flatten().tolist()
            sub_images = self.vision.process([images[r] for r in rows]) if self.vision is not None else None
            sub_ids, sub_mask = (
                t.to(self.device) for t in left_pad([prompts[r] for r in rows], self.tokenizer.pad_token_id)
            )
            vision = self._vision_inputs(sub_images, sub_ids) if sub_images is not None else {}
            cot_ids = self._generate_reasoning(sub_ids, sub_mask, vision)
            full = [[*prompts[r], *c, self.emb_token_id] for r, c in zip(rows, cot_ids)]
            reasoned_emb = self._pool(full, sub_images if sub_images is not None else batch_images).to(self.device)
            index = torch.tensor(rows, device=self.device)
            embeddings = reasoned_emb if mode == "cot" else embeddings.index_copy(0, index, reasoned_emb)
            for r, c in zip(rows, cot_ids):
                reasoning[r] = self.tokenizer.decode(c)
        return Encoded(embeddings.cpu(), reason.tolist(), reasoning)

    def _generate_reasoning(
        self, ids: torch.Tensor, mask: torch.Tensor, vision: dict[str, torch.Tensor]
    ) -> list[list[int]]:
        """Greedy CoT until ``<|emb|>`` (excluded from the result), never ``<|emb|>`` as the first token."""
        generated = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=self.settings.max_reasoning_tokens,
            do_sample=False,
            eos_token_id=self.emb_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            begin_suppress_tokens=[self.emb_token_id],
            **vision,
        )[:, ids.shape[1] :].tolist()
        return [seq[: seq.index(self.emb_token_id)] if self.emb_token_id in seq else seq for seq in generated]
