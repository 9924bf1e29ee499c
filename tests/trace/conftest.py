"""Fixtures of the TRACE tests: a MovieLens retrieval task and a tiny Qwen2 with a movie-vocabulary tokenizer."""

from __future__ import annotations

import pytest


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
