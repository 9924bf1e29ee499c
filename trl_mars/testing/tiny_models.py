"""Offline tiny models: a locally trained byte-level BPE tokenizer and tiny Qwen2/Llama causal LMs.

Everything is built from configs on the spot (no hub access) and saved with ``save_pretrained`` so that
every code path loads it by path, exactly as it would load ``Qwen/Qwen3-8B``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from trl_mars.data.locations import cache_dir as default_cache_dir

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = resources.files("trl_mars.testing").joinpath("chat_template.jinja").read_text()
TINY_ARCHS = ("qwen2", "llama")
HEADS = {"causal-lm": AutoModelForCausalLM, "reward": AutoModelForSequenceClassification}
"""``head`` of a tiny model: a causal LM, or a one-label sequence classifier (a reward model, as TRL trains)."""


def default_corpus() -> list[str]:
    """Text the tokenizer is trained on: the embedded code tasks (prompts + solutions) and some prose."""
    from trl_mars.data.code_tasks import generate_tasks

    texts = []
    for task in generate_tasks(num_tasks=150, seed=1234):
        texts += [task.question, task.canonical_solution, "\n".join(task.tests)]
    texts += [
        "You are a helpful assistant. Think step by step, then answer.",
        "Here are the results of running your code. Fix the code so that all tests pass.",
        "The quick brown fox jumps over the lazy dog. 0123456789",
    ]
    return texts


def build_tiny_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (ChatML specials, left padding) on ``corpus``; deterministic."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus if corpus is not None else default_corpus()), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def tiny_config(arch: str, tokenizer: PreTrainedTokenizerFast, **overrides) -> PretrainedConfig:
    """A small decoder config for ``arch`` in {"qwen2", "llama"}: GQA (4 query / 2 KV heads), tied embeddings."""
    if arch not in TINY_ARCHS:
        raise ValueError(f"arch must be one of {TINY_ARCHS}, got {arch!r}")
    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    kwargs.update(overrides)
    return (Qwen2Config if arch == "qwen2" else LlamaConfig)(**kwargs)


def save_tiny_model(
    arch: str,
    path: str | os.PathLike,
    tokenizer: PreTrainedTokenizerFast | None = None,
    seed: int = 0,
    head: str = "causal-lm",
    **overrides,
) -> Path:
    """Build a randomly initialised tiny ``arch`` model (``head``: see ``HEADS``) and save it with its tokenizer at
    ``path``."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {sorted(HEADS)}, got {head!r}")
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    torch.manual_seed(seed)
    if head == "reward":
        overrides = {"num_labels": 1, **overrides}
    model = HEADS[head].from_config(tiny_config(arch, tokenizer, **overrides))
    if getattr(model, "generation_config", None) is not None:  # a sequence classifier does not generate
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.bos_token_id = None
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_model_path(
    arch: str = "qwen2", cache_dir: str | os.PathLike | None = None, head: str = "causal-lm", **overrides
) -> str:
    """Path of a cached tiny model (built on first use), keyed by architecture, head and config overrides.

    The cache is ``cache_dir``, else the package's cache (``$TRL_MARS_CACHE``, default ``~/.cache/trl_mars``,
    see ``trl_mars.data.locations``); writes are atomic renames, so concurrent processes never see a half-written
    model.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    named = (arch, sorted(overrides.items())) if head == "causal-lm" else (arch, head, sorted(overrides.items()))
    key = hashlib.sha256(repr(named).encode()).hexdigest()[:12]
    target = root / f"tiny-{arch}{'' if head == 'causal-lm' else '-' + head}-{key}"
    if not (target / "config.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=".staging-"))
        save_tiny_model(arch, staging, head=head, **overrides)
        try:
            staging.rename(target)
        except OSError:  # another process won the race; its copy is identical
            pass
    return str(target)
