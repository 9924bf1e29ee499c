"""Datasets shipped or built by the package: the embedded code tasks and MovieLens builders."""

from trl_mars.data.code_tasks import DIFFICULTIES, CodeTask, code_task_splits, generate_tasks
from trl_mars.data.movielens import Movie, MovieLens, load_movielens, normalize_title, split_year

__all__ = [
    "DIFFICULTIES",
    "CodeTask",
    "Movie",
    "MovieLens",
    "code_task_splits",
    "generate_tasks",
    "load_movielens",
    "normalize_title",
    "split_year",
]
