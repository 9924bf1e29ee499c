"""MovieLens loader shared by the recommendation, self-play and embedding methods.

Reads the standard MovieLens CSV layout (``movies.csv``, ``tags.csv``, ``ratings.csv``; e.g. the
ml-latest-small release) into plain Python structures. Titles keep MovieLens' ``"Title (Year)"`` form;
``normalize_title`` is the one matching rule every method uses.
"""

from __future__ import annotations

import csv
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cache

from trl_mars.data.movielens_download import find_movielens

_YEAR_RE = re.compile(r"\s*\((\d{4})(?:[-–]\d{0,4})?\)\s*$")
_ARTICLE_RE = re.compile(r"^(.*), (the|a|an|les|la|le|il|el|das|der|die)$", re.IGNORECASE)
NO_GENRE = "(no genres listed)"


@dataclass(frozen=True)
class Movie:
    movie_id: int
    title: str
    year: int | None
    genres: tuple[str, ...]
    tags: tuple[str, ...] = ()


@dataclass
class MovieLens:
    """Movies by id, and ratings as (user_id, movie_id, rating, timestamp)."""

    movies: dict[int, Movie]
    ratings: list[tuple[int, int, float, int]] = field(default_factory=list)

    def by_title(self) -> dict[str, Movie]:
        """Movies keyed by ``normalize_title`` (first movie wins on a clash)."""
        out: dict[str, Movie] = {}
        for movie in self.movies.values():
            out.setdefault(normalize_title(movie.title), movie)
        return out

    def user_histories(self, min_rating: float = 0.0) -> dict[int, list[int]]:
        """Each user's rated movie ids in time order, keeping ratings >= ``min_rating``."""
        hist: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for user, movie, rating, ts in self.ratings:
            if rating >= min_rating:
                hist[user].append((ts, movie))
        return {u: [m for _, m in sorted(v)] for u, v in hist.items()}


def split_year(title: str) -> tuple[str, int | None]:
    """``"Toy Story (1995)"`` -> ``("Toy Story", 1995)``; titles without a year give ``None``."""
    match = _YEAR_RE.search(title)
    return (title[: match.start()].strip(), int(match.group(1))) if match else (title.strip(), None)


def short_title(title: str) -> str:
    """``"Matrix, The (1999)"`` -> ``"The Matrix"``: year suffix dropped, MovieLens' trailing article moved first."""
    name, _ = split_year(title)
    article = _ARTICLE_RE.match(name)
    return f"{article.group(2)} {article.group(1)}" if article else name


def normalize_title(title: str) -> str:
    """Canonical form for matching model output to catalogue titles: the case-folded ``short_title``
    (``"Matrix, The (1999)"`` and ``"the matrix"`` match), quotes and repeated spaces removed.
    """
    name = short_title(title.strip().strip("\"'`*"))
    return " ".join(name.casefold().replace('"', "").split())


@cache
def load_movielens(path: str | os.PathLike | None = None, with_ratings: bool = True) -> MovieLens:
    """Load a MovieLens folder (``path``, else ``find_movielens()``: ``$TRL_MARS_DATA/movielens`` or the copy
    downloaded by ``trl-mars data download movielens``); tags are attached to movies, lower-cased and
    de-duplicated by frequency."""
    root = find_movielens(path)
    movies_csv = root / "movies.csv"
    tag_counts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    if (root / "tags.csv").exists():
        with open(root / "tags.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                tag = " ".join(row["tag"].casefold().split())
                if tag:
                    tag_counts[int(row["movieId"])][tag] += 1
    movies = {}
    with open(movies_csv, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            movie_id = int(row["movieId"])
            _, year = split_year(row["title"])
            genres = tuple(g for g in row["genres"].split("|") if g and g != NO_GENRE)
            counts = tag_counts.get(movie_id, {})
            tags = tuple(sorted(counts, key=lambda t: (-counts[t], t)))
            movies[movie_id] = Movie(movie_id, row["title"], year, genres, tags)
    ratings = []
    if with_ratings and (root / "ratings.csv").exists():
        with open(root / "ratings.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                ratings.append((int(row["userId"]), int(row["movieId"]), float(row["rating"]), int(row["timestamp"])))
    return MovieLens(movies, ratings)
