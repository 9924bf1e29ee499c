"""Fixtures of the TRACE tests: a MovieLens retrieval task, a tiny Qwen2 with a movie-vocabulary tokenizer, a tiny
Qwen2-VL, a tiny LLaVA and rows with images (two-colour 56x56 PIL images, from trace_image_rows.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


def _register_image_rows() -> None:
    """Make ``import trace_image_rows`` work (the tests use ``--import-mode=importlib``: no sys.path entry)."""
    import importlib.util

    if "trace_image_rows" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "trace_image_rows", Path(__file__).with_name("trace_image_rows.py")
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["trace_image_rows"] = module
        spec.loader.exec_module(module)


_register_image_rows()


@pytest.fixture(scope="session")
def trace_task(shared_data):
    from trl_mars.embed.movielens_task import build_movielens_retrieval_task

    return build_movielens_retrieval_task(path=shared_data / "movielens", num_movies=120, seed=0)


@pytest.fixture(scope="session")
def trace_model_path(tiny_cache) -> str:
    from trl_mars.embed.tiny import tiny_movielens_model_path

    return tiny_movielens_model_path(cache_dir=tiny_cache)


@pytest.fixture
def trace_args(tmp_path):
    from trl_mars.embed.tiny import TINY_TRACE_ARGS
    from trl_mars.trainers.trace_config import TraceConfig

    def make(**overrides):
        kwargs = dict(TINY_TRACE_ARGS, output_dir=str(tmp_path / "out"), per_device_train_batch_size=8)
        kwargs.update(max_steps=3, learning_rate=3e-3, logging_steps=1)
        kwargs.update(overrides)
        return TraceConfig(**kwargs)

    return make


@pytest.fixture(scope="session")
def trace_vlm_path(tiny_cache) -> str:
    """A tiny Qwen2-VL (images become 4x4 patches = 4 image tokens) with a tokenizer trained on the rows' words."""
    from trace_image_rows import tiny_trace_vlm_path

    return tiny_trace_vlm_path(tiny_cache)


@pytest.fixture(scope="session")
def trace_llava_path(tiny_cache) -> str:
    """A tiny LLaVA (CLIP vision tower, 56x56 images = 2x2 patches = 4 image tokens) with the rows' tokenizer."""
    from trace_image_rows import tiny_trace_vlm_path

    return tiny_trace_vlm_path(tiny_cache, "llava")


@pytest.fixture(scope="session")
def image_rows() -> list[dict]:
    from trace_image_rows import image_rows

    return image_rows()
