"""Offline tiny models whose tokenizers are trained on a task's text (tests and the tiny recipes): a Qwen2 for the
MovieLens retrieval task, a Qwen2-VL for the synthetic shapes task."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from trl_mars.data.locations import cache_dir as default_cache_dir
from trl_mars.embed.movielens_task import RetrievalTask, build_movielens_retrieval_task
from trl_mars.embed.prompts import DEFAULT_CANDIDATE_INSTRUCTION, DEFAULT_QUERY_INSTRUCTION
from trl_mars.testing import build_tiny_tokenizer, save_tiny_model, tiny_vlm_path

if TYPE_CHECKING:
    from trl_mars.embed.shapes_task import ShapesTask

TINY_MOVIELENS_MODEL_ID = "trl-mars/tiny-qwen2-movielens"
TINY_SHAPES_VLM_ID = "trl-mars/tiny-qwen2-vl-shapes"
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


CHAT_WORDS = "<|im_start|>system\nQuery.<|im_end|>\n<|im_start|>user\nItem.<|im_end|>\n<|im_start|>assistant\n"


def movielens_texts(task: RetrievalTask) -> list[str]:
    """Every text the task can show the model: corpus, queries, CoT targets and the default instructions."""
    queries = [q.text for q in task.train + task.eval] + [q.target for q in task.train + task.eval if q.target]
    return [*task.corpus, *queries, DEFAULT_QUERY_INSTRUCTION, DEFAULT_CANDIDATE_INSTRUCTION, *[CHAT_WORDS] * 50]


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


def shapes_texts(task: ShapesTask) -> list[str]:
    """Every text of the shapes task: captions, queries, CoT targets, the default instructions and chat words."""
    scenes = task.train_scenes + task.eval_scenes
    queries = [t for q in task.train + task.eval for t in (q.text, q.target) if t]
    instructions = [DEFAULT_QUERY_INSTRUCTION, DEFAULT_CANDIDATE_INSTRUCTION]
    return [*(s.caption for s in scenes), *queries, *instructions, *[CHAT_WORDS] * 50]


def tiny_shapes_vlm_path(cache_dir: str | os.PathLike | None = None, vocab_size: int = 512, **overrides) -> str:
    """Path of a tiny Qwen2-VL whose tokenizer is trained on the default shapes task's text (56x56 images: 4 image
    tokens each), built once and cached; ``overrides`` go to ``tiny_vlm_path`` (e.g. ``hidden_size``)."""
    from trl_mars.embed.shapes_task import build_shapes_retrieval_task

    corpus = shapes_texts(build_shapes_retrieval_task())
    return tiny_vlm_path("qwen2_vl", cache_dir=cache_dir, tokenizer_corpus=corpus, vocab_size=vocab_size, **overrides)
