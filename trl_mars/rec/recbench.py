"""RecBench+ query records as ReRec training rows.

A RecBench+ record holds the query text (``situational_description_query``, the one the ReRec experiments use,
or ``direct_description_query``), ``movieSubset`` (the ground-truth titles, e.g. "Forrest Gump (1994)") and
``sharedRelationships`` (pairs such as ``["Genre", "War"]``). ``recbench_dataset`` turns each record into a row
of the same form as our MovieLens tasks: ``prompt`` (query, candidate list, answer format), ``ground_truth``,
``candidates`` (the ground truth plus negatives drawn from the catalogue, shuffled; the paper uses 1 + 19),
``query`` and ``query_attributes`` (``"genre:War"``, for templated warm-up reasoning).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

from datasets import Dataset

from trl_mars.rec.graphs import ItemAttributeGraph
from trl_mars.rec.tasks import DEFAULT_SYSTEM_PROMPT, check_rerec_dataset, task_prompt
from trl_mars.rewards.rerec import parse_ground_truth

QUERY_FIELDS = ("situational_description_query", "direct_description_query")


def recbench_dataset(
    records: Iterable[Mapping[str, Any]],
    graph: ItemAttributeGraph,
    num_candidates: int = 20,
    query_field: str = "situational_description_query",
    show_attributes: bool = False,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    seed: int = 0,
) -> Dataset:
    """ReRec rows from RecBench+ ``records``; negatives are catalogue titles (``graph``) outside the ground truth."""
    if query_field not in QUERY_FIELDS:
        raise ValueError(f"query_field must be one of {QUERY_FIELDS}, got {query_field!r}")
    rng, rows = random.Random(seed), []
    for i, record in enumerate(records):
        for name in (query_field, "movieSubset"):
            if not record.get(name):
                raise ValueError(f"RecBench+ record {i} has no {name!r}")
        truth = parse_ground_truth(record["movieSubset"])
        known = {graph.index.find(t) for t in truth}
        pool = [j for j in range(len(graph)) if j not in known]
        need = num_candidates - len(truth)
        if need < 1 or len(pool) < need:
            raise ValueError(
                f"RecBench+ record {i}: num_candidates={num_candidates} needs more than its {len(truth)} "
                f"ground-truth titles and at most {len(pool)} catalogue negatives"
            )
        candidates = truth + [graph.titles[j] for j in rng.sample(pool, need)]
        rng.shuffle(candidates)
        query = record[query_field]
        rows.append(
            {
                "prompt": task_prompt(query, candidates, graph, show_attributes, system_prompt),
                "ground_truth": truth,
                "candidates": candidates,
                "query": query,
                "query_type": "recbench",
                "query_attributes": [
                    f"{kind.lower()}:{value}" for kind, value in record.get("sharedRelationships") or []
                ],
            }
        )
    dataset = Dataset.from_list(rows)
    check_rerec_dataset(dataset, "recbench_dataset")
    return dataset
