"""An offline tiny model whose tokenizer is trained on the MovieLens retrieval task (tests and the tiny recipe)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from trl_mars.data.locations import cache_dir as default_cache_dir
from trl_mars.embed.movielens_task import RetrievalTask, build_movielens_retrieval_task
from trl_mars.embed.prompts import DEFAULT_CANDIDATE_INSTRUCTION, DEFAULT_QUERY_INSTRUCTION
from trl_mars.testing import build_tiny_tokenizer, save_tiny_model

TINY_MOVIELENS_MODEL_ID = "trl-mars/tiny-qwen2-movielens"
TINY_TRACE_ARGS = dict(
    max_length=128,
    max_target_length=32,
    max_reasoning_tokens=32,
    query_instruction="Query.",
    candidate_instruction="Item.",
    gradient_checkpointing=False,
    bf16=False,
    report_to="none",
    save_strategy="no",
)
"""``TraceConfig`` settings for the tiny model (short instructions, short sequences, fp32, no checkpoints)."""


def movielens_texts(task: RetrievalTask) -> list[str]:
    """Every text the task can show the model: corpus, queries, CoT targets and the default instructions."""
    queries = [q.text for q in task.train + task.eval] + [q.target for q in task.train + task.eval if q.target]
    chat_words = "<|im_start|>system\nQuery.<|im_end|>\n<|im_start|>user\nItem.<|im_end|>\n<|im_start|>assistant\n"
    return [*task.corpus, *queries, DEFAULT_QUERY_INSTRUCTION, DEFAULT_CANDIDATE_INSTRUCTION, *[chat_words] * 50]


def tiny_movielens_model_path(cache_dir: str | os.PathLike | None = None, vocab_size: int = 1024, **overrides) -> str:
    """Path of a tiny Qwen2 with a tokenizer trained on the full MovieLens task text, built once and cached."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = hashlib.sha256(repr((vocab_size, sorted(overrides.items()))).encode()).hexdigest()[:12]
    target = root / f"tiny-qwen2-movielens-{key}"
    if not (target / "config.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        tokenizer = build_tiny_tokenizer(movielens_texts(build_movielens_retrieval_task()), vocab_size=vocab_size)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=".staging-"))
        save_tiny_model("qwen2", staging, tokenizer=tokenizer, **overrides)
        try:
            staging.rename(target)
        except OSError:  # another process built the same model first
            pass
    return str(target)
