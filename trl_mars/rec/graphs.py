"""The two ReRec graphs: item-attribute (query alignment) and user-item (preference alignment).

Items are keyed by their catalogue title; model output is looked up through ``TitleIndex`` with the same
rule as ``trl_mars.rewards.rerec.same_title`` (normalised name, year optional but never contradicting).
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from trl_mars.data.movielens import MovieLens, normalize_title, split_year

DEFAULT_IGNORED_TAGS = ("in netflix queue",)


def read_table(path: str | os.PathLike, required: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV (``.csv``) or TSV (``.tsv``/``.tab``) file with a header holding the ``required`` columns;
    raises a ``ValueError`` naming the file, and the row, for a missing column or an empty value."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    delimiter = "\t" if path.suffix in (".tsv", ".tab") else ","
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing} in the header (got {reader.fieldnames})")
        rows = list(reader)
    for line, row in enumerate(rows, start=2):
        empty = [c for c in required if not (row.get(c) or "").strip()]
        if empty:
            raise ValueError(f"{path}, line {line}: empty value in column(s) {empty}")
    if not rows:
        raise ValueError(f"{path} has a header but no rows")
    return rows


def graph_coverage(titles: Iterable[str], lookup) -> tuple[int, int, list[str]]:
    """``(found, total, some missing titles)``: how many of ``titles`` ``lookup`` (a graph's) knows."""
    titles = list(dict.fromkeys(titles))
    missing = [t for t in titles if lookup(t) is None]
    return len(titles) - len(missing), len(titles), missing[:3]


class TitleIndex:
    """Finds the catalogue position of a free-text title (case, article and year-suffix robust)."""

    def __init__(self, titles: Sequence[str]):
        self.titles = list(titles)
        self._by_name: dict[str, list[tuple[int | None, int]]] = defaultdict(list)
        for i, title in enumerate(self.titles):
            self._by_name[normalize_title(title)].append((split_year(title)[1], i))

    def __len__(self) -> int:
        return len(self.titles)

    def find(self, title: str) -> int | None:
        """Position of ``title``: same normalised name and, if ``title`` has a year, the same year."""
        year = split_year(title)[1]
        for item_year, i in self._by_name.get(normalize_title(title), ()):
            if year is None or item_year is None or item_year == year:
                return i
        return None


@dataclass
class ItemAttributeGraph:
    """Bipartite item-attribute graph, stored as each item's attribute set (``"genre:Comedy"``, ``"tag:pixar"``)."""

    titles: list[str]
    attributes: list[frozenset[str]]

    def __post_init__(self):
        if not self.titles:
            raise ValueError("item_graph is empty: it needs at least one item with attributes")
        if len(self.titles) != len(self.attributes):
            raise ValueError(f"item_graph has {len(self.titles)} titles but {len(self.attributes)} attribute sets")
        self.index = TitleIndex(self.titles)

    @classmethod
    def from_edges(cls, edges: Iterable[tuple[str, str]]) -> ItemAttributeGraph:
        """Build from (item title, attribute) edges, e.g. those of a RecBench+ knowledge graph."""
        by_item: dict[str, set[str]] = defaultdict(set)
        for title, attribute in edges:
            by_item[title].add(attribute)
        return cls(list(by_item), [frozenset(a) for a in by_item.values()])

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> ItemAttributeGraph:
        """From a CSV/TSV of (item title, attribute) edges with header ``item,attribute`` (``"genre:Comedy"``)."""
        rows = read_table(path, ("item", "attribute"))
        return cls.from_edges((row["item"].strip(), row["attribute"].strip()) for row in rows)

    @classmethod
    def from_movielens(
        cls, movielens: MovieLens, min_tag_items: int = 2, ignored_tags: Sequence[str] = DEFAULT_IGNORED_TAGS
    ) -> ItemAttributeGraph:
        """Genres, decade and tags (used on >= ``min_tag_items`` movies, minus ``ignored_tags``) of every movie."""
        tag_items: dict[str, int] = defaultdict(int)
        for movie in movielens.movies.values():
            for tag in movie.tags:
                tag_items[tag] += 1
        keep = {t for t, n in tag_items.items() if n >= min_tag_items and t not in set(ignored_tags)}
        edges = []
        for movie in movielens.movies.values():
            edges += [(movie.title, f"genre:{g}") for g in movie.genres]
            edges += [(movie.title, f"tag:{t}") for t in movie.tags if t in keep]
            if movie.year is not None:
                edges.append((movie.title, f"decade:{movie.year // 10 * 10}s"))
        return cls.from_edges(edges)

    def __len__(self) -> int:
        return len(self.titles)

    def subset(self, titles: Iterable[str]) -> ItemAttributeGraph:
        """The sub-graph of the given catalogue titles (e.g. the most-rated movies, for small task sets)."""
        keep = set(titles)
        pairs = [(t, a) for t, a in zip(self.titles, self.attributes) if t in keep]
        return ItemAttributeGraph([t for t, _ in pairs], [a for _, a in pairs])

    def lookup(self, title: str) -> frozenset[str] | None:
        """Attribute set of ``title``, or None if the title is not in the graph."""
        i = self.index.find(title)
        return None if i is None else self.attributes[i]

    def items_with(self, attributes: Iterable[str]) -> list[int]:
        """Positions of the items that carry every attribute in ``attributes``."""
        wanted = frozenset(attributes)
        return [i for i, attrs in enumerate(self.attributes) if wanted <= attrs]


@dataclass
class UserItemGraph:
    """Bipartite user-item interaction graph: ``edges`` are (user position, item position) pairs."""

    titles: list[str]
    num_users: int
    edges: list[tuple[int, int]]

    def __post_init__(self):
        if not self.edges:
            raise ValueError("user_item_graph has no interactions (edges is empty)")
        if not self.titles or self.num_users < 1:
            raise ValueError("user_item_graph needs at least one user and one item")

    @classmethod
    def from_file(cls, path: str | os.PathLike, min_rating: float = 3.5) -> UserItemGraph:
        """From a CSV/TSV of interactions with header ``user,item`` and an optional ``rating`` column (rows rated
        below ``min_rating`` are dropped); items are item titles, as in the dataset's ground truth."""
        rows = read_table(path, ("user", "item"))
        liked = []
        for line, row in enumerate(rows, start=2):
            if row.get("rating") not in (None, ""):
                try:
                    rating = float(row["rating"])
                except ValueError:
                    raise ValueError(f"{path}, line {line}: rating {row['rating']!r} is not a number") from None
                if rating < min_rating:
                    continue
            liked.append((row["user"].strip(), row["item"].strip()))
        if not liked:
            raise ValueError(f"{path}: no interaction rated >= min_rating={min_rating}")
        users = {u: i for i, u in enumerate(sorted({u for u, _ in liked}))}
        items = {t: i for i, t in enumerate(sorted({t for _, t in liked}))}
        return cls(list(items), len(users), sorted({(users[u], items[t]) for u, t in liked}))

    @classmethod
    def from_movielens(cls, movielens: MovieLens, min_rating: float = 3.5) -> UserItemGraph:
        """Users and the movies they rated >= ``min_rating`` (movies without such a rating are left out)."""
        liked = [(u, m) for u, m, rating, _ in movielens.ratings if rating >= min_rating and m in movielens.movies]
        if not liked:
            raise ValueError(f"no MovieLens ratings >= min_rating={min_rating}: the user-item graph would be empty")
        users = {u: i for i, u in enumerate(sorted({u for u, _ in liked}))}
        items = {m: i for i, m in enumerate(sorted({m for _, m in liked}))}
        titles = [movielens.movies[m].title for m in items]
        return cls(titles, len(users), sorted({(users[u], items[m]) for u, m in liked}))

    @property
    def num_items(self) -> int:
        return len(self.titles)

    def normalized_adjacency(self) -> torch.Tensor:
        """Sparse D^{-1/2} A D^{-1/2} of the (users + items) square adjacency matrix (users first)."""
        users = torch.tensor([u for u, _ in self.edges])
        items = torch.tensor([i for _, i in self.edges]) + self.num_users
        rows, cols = torch.cat([users, items]), torch.cat([items, users])
        n = self.num_users + self.num_items
        degree = torch.bincount(rows, minlength=n).float()
        inv_sqrt = degree.clamp_min(1.0).rsqrt()
        values = inv_sqrt[rows] * inv_sqrt[cols]
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n), check_invariants=False).coalesce()
