"""MovieLens -> ReRec tasks: a natural-language query, a candidate set (1 positive + N negatives), the answer.

Two query kinds, after RecBench+:

- ``attribute`` (condition-based): pick a movie p and ``num_attributes`` of its attributes S in the
  item-attribute graph; "a movie in the Comedy genre, tagged 'pixar', from the 1990s". Negatives are movies
  that do not carry all of S (about half share at least one attribute of S, the rest are random), so p is
  the only candidate that satisfies the query.
- ``interest`` (user-profile): a user's ``history_len`` latest liked movies (rating >= ``min_rating``) form the
  query; the next liked movie is the answer; negatives are movies the user never rated.

Rows: ``prompt`` (chat messages), ``ground_truth`` (list of titles), ``candidates``, ``query``, ``query_type``,
``query_attributes`` (queried attributes; for interest queries the history's two most frequent genres).
``check_rerec_dataset`` validates any dataset (ours, RecBench+, user-built) before training.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from datasets import Dataset

from trl_mars.data.movielens import MovieLens, normalize_title, short_title
from trl_mars.rec.graphs import ItemAttributeGraph
from trl_mars.rewards.rerec import parse_ground_truth, same_title

QUERY_TYPES = ("attribute", "interest")
ATTRIBUTE_KINDS = ("genre", "tag", "decade")
DEFAULT_SYSTEM_PROMPT = (
    "You are a movie recommendation assistant. Reason about the candidates, one paragraph per candidate, "
    "then give the final answer as \\boxed{<movie title>} (separate several titles with ';')."
)
INSTRUCTION = "Think about each candidate, then answer with \\boxed{<movie title>}."
_TEMPLATES = ("I'm looking for a movie {}.", "Recommend me a film {}.", "Which movie is {}?")


def describe_attribute(attribute: str) -> str:
    """``"genre:Comedy"`` -> ``"Comedy"``; ``"tag:pixar"`` -> ``"'pixar'"``; ``"decade:1990s"`` -> ``"1990s"``."""
    kind, _, value = attribute.partition(":")
    return f"'{value}'" if kind == "tag" else value


def _attribute_phrase(attribute: str) -> str:
    kind, _, value = attribute.partition(":")
    return {"genre": f"in the {value} genre", "tag": f"tagged '{value}'", "decade": f"from the {value}"}.get(
        kind, f"with {value}"
    )


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def candidate_line(
    title: str, attributes: frozenset[str] | None, show_attributes: bool, kinds: Sequence[str] = ATTRIBUTE_KINDS
) -> str:
    """One candidate as listed in the prompt, optionally with its attributes of ``kinds`` (at most two tags)."""
    if not show_attributes or not attributes:
        return f"- {title}"
    shown = sorted(a for a in attributes if a.partition(":")[0] in kinds and not a.startswith("tag:"))
    shown += sorted(a for a in attributes if a.startswith("tag:") and "tag" in kinds)[:2]
    return f"- {title} | {', '.join(describe_attribute(a) for a in shown)}"


def task_prompt(
    query: str,
    candidates: Sequence[str],
    graph: ItemAttributeGraph,
    show_attributes: bool = False,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    kinds: Sequence[str] = ATTRIBUTE_KINDS,
) -> list[dict[str, str]]:
    """Chat messages for one task: the query, the candidate list and the answer-format instruction."""
    lines = "\n".join(candidate_line(t, graph.lookup(t), show_attributes, kinds) for t in candidates)
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": f"{query}\nCandidates:\n{lines}\n{INSTRUCTION}"}]


def with_short_titles(graph: ItemAttributeGraph) -> ItemAttributeGraph:
    """The same graph with ``short_title`` names (fewer tokens for tiny models); a name shared by several items
    keeps its full titles. Title matching makes the year optional, so rewards and item embeddings keyed on full
    titles still find every item.
    """
    counts = Counter(normalize_title(t) for t in graph.titles)
    titles = [short_title(t) if counts[normalize_title(t)] == 1 else t for t in graph.titles]
    return ItemAttributeGraph(titles, list(graph.attributes))


def most_rated_titles(movielens: MovieLens, n: int) -> list[str]:
    """Titles of the ``n`` movies with the most ratings (ties broken by movie id)."""
    counts = Counter(movie for _, movie, _, _ in movielens.ratings if movie in movielens.movies)
    return [movielens.movies[m].title for m, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0]))[:n]]


def _sample_negatives(rng: random.Random, pool: Sequence[int], exclude: set[int], n: int) -> list[int]:
    chosen: list[int] = []
    for i in rng.sample(list(pool), min(len(pool), n + len(exclude))):
        if i not in exclude and len(chosen) < n:
            chosen.append(i)
            exclude.add(i)
    return chosen


def attribute_tasks(
    graph: ItemAttributeGraph,
    num_queries: int,
    num_candidates: int,
    num_attributes: int,
    attribute_kinds: Sequence[str],
    rng: random.Random,
) -> list[dict[str, Any]]:
    """Condition-based queries: one movie carries all queried attributes, the other candidates do not."""
    kinds = tuple(f"{k}:" for k in attribute_kinds)
    usable = [frozenset(a for a in attrs if a.startswith(kinds)) for attrs in graph.attributes]
    eligible = [i for i, attrs in enumerate(usable) if len(attrs) >= num_attributes]
    if not eligible:
        raise ValueError(f"no item has num_attributes={num_attributes} attributes of kinds {attribute_kinds}")
    by_attribute: dict[str, list[int]] = defaultdict(list)
    for i, attrs in enumerate(graph.attributes):
        for a in attrs:
            by_attribute[a].append(i)
    tasks = []
    while len(tasks) < num_queries:
        positive = rng.choice(eligible)
        wanted = rng.sample(sorted(usable[positive]), num_attributes)
        matching = set(graph.items_with(wanted))
        related = sorted({i for a in wanted for i in by_attribute[a]} - matching)
        hard = _sample_negatives(rng, related, set(matching), (num_candidates - 1) // 2)
        negatives = hard + _sample_negatives(
            rng, range(len(graph)), matching | set(hard), num_candidates - 1 - len(hard)
        )
        if len(negatives) < num_candidates - 1:
            continue
        query = rng.choice(_TEMPLATES).format(_join([_attribute_phrase(a) for a in wanted]))
        tasks.append(_task(graph, positive, negatives, query, "attribute", wanted, rng))
    return tasks


def interest_tasks(
    movielens: MovieLens,
    graph: ItemAttributeGraph,
    num_queries: int,
    num_candidates: int,
    history_len: int,
    min_rating: float,
    rng: random.Random,
) -> list[dict[str, Any]]:
    """User-profile queries: recent liked movies in the query, the next liked movie as the answer."""
    position = {m.movie_id: graph.index.find(m.title) for m in movielens.movies.values()}
    rated: dict[int, set[int]] = defaultdict(set)
    for user, movie, _, _ in movielens.ratings:
        rated[user].add(movie)
    histories = {
        u: [position[m] for m in h if position.get(m) is not None]
        for u, h in movielens.user_histories(min_rating).items()
    }
    users = sorted(u for u, h in histories.items() if len(h) > history_len)
    if not users:
        raise ValueError(f"no user has more than history_len={history_len} movies rated >= {min_rating}")
    tasks = []
    for _ in range(num_queries):
        user = rng.choice(users)
        end = rng.randrange(history_len, len(histories[user]))
        history, positive = histories[user][end - history_len : end], histories[user][end]
        seen = {position[m] for m in rated[user] if position.get(m) is not None}
        negatives = _sample_negatives(rng, range(len(graph)), seen | {positive}, num_candidates - 1)
        names = _join([graph.titles[i] for i in history])
        query = f"I recently enjoyed {names}. Which movie should I watch next?"
        genres = Counter(a for i in history for a in graph.attributes[i] if a.startswith("genre:"))
        favourite = sorted(genres, key=lambda g: (-genres[g], g))[:2]
        tasks.append(_task(graph, positive, negatives, query, "interest", favourite, rng))
    return tasks


def _task(graph, positive, negatives, query, query_type, attributes, rng) -> dict[str, Any]:
    candidates = [graph.titles[i] for i in [positive, *negatives]]
    rng.shuffle(candidates)
    return {
        "query": query,
        "query_type": query_type,
        "candidates": candidates,
        "ground_truth": [graph.titles[positive]],
        "query_attributes": list(attributes),
    }


def build_rerec_dataset(
    movielens: MovieLens,
    graph: ItemAttributeGraph | None = None,
    num_queries: int = 1000,
    query_types: Sequence[str] = QUERY_TYPES,
    num_candidates: int = 20,
    num_attributes: int = 2,
    attribute_kinds: Sequence[str] = ATTRIBUTE_KINDS,
    history_len: int = 5,
    min_rating: float = 4.0,
    show_attributes: bool = False,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    seed: int = 0,
) -> Dataset:
    """ReRec tasks built from MovieLens, the query kinds split evenly; deterministic for a given ``seed``."""
    unknown = set(query_types) - set(QUERY_TYPES)
    if not query_types or unknown:
        raise ValueError(f"query_types must be a non-empty subset of {QUERY_TYPES}, got {list(query_types)}")
    if set(attribute_kinds) - set(ATTRIBUTE_KINDS):
        raise ValueError(f"attribute_kinds must be a subset of {ATTRIBUTE_KINDS}, got {list(attribute_kinds)}")
    if num_candidates < 2:
        raise ValueError(f"num_candidates must be >= 2 (1 positive + negatives), got {num_candidates}")
    graph = graph if graph is not None else ItemAttributeGraph.from_movielens(movielens)
    rng = random.Random(seed)
    counts = [num_queries // len(query_types) + (i < num_queries % len(query_types)) for i in range(len(query_types))]
    tasks = []
    for kind, count in zip(query_types, counts):
        if kind == "attribute":
            tasks += attribute_tasks(graph, count, num_candidates, num_attributes, attribute_kinds, rng)
        else:
            tasks += interest_tasks(movielens, graph, count, num_candidates, history_len, min_rating, rng)
    rng.shuffle(tasks)
    for i, task in enumerate(tasks):
        task["query_id"] = f"ml-{seed}-{i}"
        task["prompt"] = task_prompt(
            task["query"], task["candidates"], graph, show_attributes, system_prompt, attribute_kinds
        )
    return Dataset.from_list(tasks)


def templated_reasoning(task: dict[str, Any], graph: ItemAttributeGraph) -> str:
    """A reference completion for SFT warm-up: one line per candidate saying how it fits, then the boxed answer.

    Lists which ``query_attributes`` (the queried attributes, or for interest queries the two most frequent
    genres of the liked movies) each candidate has or lacks.
    """
    wanted = list(task["query_attributes"])
    lines = []
    for title in task["candidates"]:
        attributes = graph.lookup(title) or frozenset()
        have = [describe_attribute(a) for a in wanted if a in attributes]
        missing = [describe_attribute(a) for a in wanted if a not in attributes]
        verdict = f"has {_join(have)}" if have else "shares nothing asked"
        lines.append(f"{title}: {verdict}" + (f", lacks {_join(missing)}." if have and missing else "."))
    return "\n".join(lines) + f"\n\\boxed{{{'; '.join(task['ground_truth'])}}}"


def check_rerec_dataset(dataset: Dataset, name: str = "train_dataset") -> None:
    """Raise a ValueError naming the column/row if ``dataset`` cannot be used for ReRec training."""
    missing = [c for c in ("prompt", "ground_truth") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{name} is missing column(s) {missing}; ReRec needs 'prompt' and 'ground_truth'")
    has_candidates = "candidates" in dataset.column_names
    columns = ["ground_truth", "candidates"] if has_candidates else ["ground_truth"]
    for i, row in enumerate(dataset.select_columns(columns)):
        truth = parse_ground_truth(row["ground_truth"])
        if not truth:
            raise ValueError(f"{name}[{i}]['ground_truth'] is empty")
        if has_candidates:
            absent = [t for t in truth if not any(same_title(t, c) for c in row["candidates"])]
            if absent:
                raise ValueError(f"{name}[{i}]['candidates'] does not contain the ground_truth title(s) {absent}")
