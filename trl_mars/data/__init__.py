"""Datasets shipped or built by the package: the embedded code tasks, MovieLens (found or downloaded)."""

from trl_mars.data.code_tasks import DIFFICULTIES, CodeTask, code_task_splits, generate_tasks
from trl_mars.data.movielens import Movie, MovieLens, load_movielens, normalize_title, split_year
from trl_mars.data.movielens_download import download_movielens, find_movielens

__all__ = [
    "DIFFICULTIES",
    "CodeTask",
    "Movie",
    "MovieLens",
    "code_task_splits",
    "download_movielens",
    "find_movielens",
    "generate_tasks",
    "load_movielens",
    "normalize_title",
    "split_year",
]
