"""RecBench+ records -> ReRec rows."""

import pytest

from trl_mars.rec import ItemAttributeGraph
from trl_mars.rec.recbench import recbench_dataset
from trl_mars.rewards.rerec import same_title

TITLES = [f"Film {i} ({1980 + i})" for i in range(30)]
GRAPH = ItemAttributeGraph.from_edges([(t, f"genre:{'War' if i % 3 == 0 else 'Drama'}") for i, t in enumerate(TITLES)])
RECORDS = [
    {
        "situational_description_query": "Something tense about soldiers for a rainy evening.",
        "direct_description_query": "A war movie.",
        "movieSubset": ["film 3"],  # matched to "Film 3 (1983)" whatever the case and year
        "sharedRelationships": [["Genre", "War"]],
    },
    {"situational_description_query": "Two classics.", "movieSubset": "Film 6 (1986);Film 9 (1989)"},
]


def test_recbench_records_become_rerec_rows():
    data = recbench_dataset(RECORDS, GRAPH, num_candidates=5, seed=1)
    assert data.num_rows == 2
    first, second = data[0], data[1]
    assert first["ground_truth"] == ["film 3"] and first["query_attributes"] == ["genre:War"]
    assert len(first["candidates"]) == 5 and sum(same_title(c, "Film 3 (1983)") for c in first["candidates"]) == 1
    assert second["ground_truth"] == ["Film 6 (1986)", "Film 9 (1989)"] and len(set(second["candidates"])) == 5
    assert set(second["ground_truth"]) <= set(second["candidates"]) and second["query_attributes"] == []
    user = first["prompt"][-1]["content"]
    assert user.startswith(RECORDS[0]["situational_description_query"])
    assert all(f"- {c}" in user for c in first["candidates"]) and "\\boxed" in user
    assert first["prompt"][0]["role"] == "system"
    direct = recbench_dataset(RECORDS[:1], GRAPH, 5, query_field="direct_description_query", system_prompt=None)
    assert direct[0]["prompt"][0]["content"].startswith("A war movie.") and len(direct[0]["prompt"]) == 1
    assert recbench_dataset(RECORDS, GRAPH, 5, seed=1)[:] == data[:]  # reproducible from the seed
    assert recbench_dataset(RECORDS, GRAPH, 5, seed=2)["candidates"] != data["candidates"]


@pytest.mark.parametrize(
    "records,kwargs,match",
    [
        ([{"movieSubset": ["Film 1"]}], {}, "record 0 has no 'situational_description_query'"),
        ([RECORDS[0], {"situational_description_query": "q", "movieSubset": []}], {}, "record 1 has no 'movieSubset'"),
        (RECORDS, {"num_candidates": 2}, "record 1: num_candidates=2"),
        (RECORDS, {"num_candidates": 40}, "record 0: num_candidates=40"),
        (RECORDS, {"query_field": "query"}, "query_field must be one of"),
    ],
)
def test_bad_records_fail_naming_the_field(records, kwargs, match):
    with pytest.raises(ValueError, match=match):
        recbench_dataset(records, GRAPH, **{"num_candidates": 5, **kwargs})
