"""Graphs, LightGCN, MovieLens task builder, curriculum and reward functions of ReRec."""

import pytest
import torch
from datasets import Dataset

from trl_mars.data.movielens import load_movielens, short_title
from trl_mars.rec import (
    ItemAttributeGraph,
    OnlineCurriculum,
    UserItemGraph,
    build_rerec_dataset,
    check_rerec_dataset,
    templated_reasoning,
    train_lightgcn,
)
from trl_mars.rec.evaluation import score_completions
from trl_mars.rec.reward_funcs import rerec_reward_funcs
from trl_mars.rec.tasks import most_rated_titles, with_short_titles
from trl_mars.rewards.rerec import extract_boxed, same_title


@pytest.fixture(scope="module")
def movielens(shared_data):
    return load_movielens(shared_data / "movielens")


@pytest.fixture(scope="module")
def graph(movielens):
    return ItemAttributeGraph.from_movielens(movielens)


def test_item_attribute_graph_from_movielens(graph):
    toy = graph.lookup("toy story")  # year-less, lower-case lookup
    assert {"genre:Animation", "genre:Children", "decade:1990s", "tag:pixar"} <= toy
    assert graph.lookup("Toy Story (2001)") is None  # a contradicting year is another movie
    assert graph.lookup("Matrix, The (1999)") == graph.lookup("the matrix")
    assert "tag:in netflix queue" not in set().union(*graph.attributes)
    assert graph.index.find("No Such Movie") is None
    with pytest.raises(ValueError, match="item_graph is empty"):
        ItemAttributeGraph.from_edges([])


def test_user_item_graph_and_lightgcn_learn_communities():
    # users 0-2 like items 0-2, users 3-5 like items 3-5
    edges = [(u, i) for u in range(3) for i in range(3)] + [(u, i) for u in range(3, 6) for i in range(3, 6)]
    graph = UserItemGraph([f"Movie {i} (2000)" for i in range(6)], 6, edges)
    adjacency = graph.normalized_adjacency().to_dense()
    assert adjacency[0, 6] == pytest.approx(1 / 3)  # 1/sqrt(deg(u0)=3 * deg(i0)=3)
    embeddings, losses = train_lightgcn(graph, dim=8, num_layers=2, epochs=60, batch_size=18, lr=0.05, seed=0)
    assert losses[-1] < losses[0]
    cos = torch.nn.functional.cosine_similarity
    same = cos(embeddings.lookup("movie 0"), embeddings.lookup("Movie 1 (2000)"), dim=0)
    other = cos(embeddings.lookup("movie 0"), embeddings.lookup("Movie 4 (2000)"), dim=0)
    assert same > other + 0.5
    with pytest.raises(ValueError, match="edges is empty"):
        UserItemGraph(["A"], 1, [])


def test_item_embeddings_round_trip(tmp_path):
    graph = UserItemGraph(["A (2000)", "B (2001)"], 1, [(0, 0), (0, 1)])
    embeddings, _ = train_lightgcn(graph, dim=4, epochs=1, seed=0)
    embeddings.save(tmp_path / "emb.pt")
    loaded = type(embeddings).load(tmp_path / "emb.pt")
    torch.testing.assert_close(loaded.lookup("b"), embeddings.lookup("B (2001)"))


def test_movielens_tasks_are_well_formed(movielens, graph):
    data = build_rerec_dataset(movielens, graph, num_queries=20, num_candidates=6, seed=3)
    assert len(data) == 20 and sorted(set(data["query_type"])) == ["attribute", "interest"]
    check_rerec_dataset(data)
    for row in data:
        assert len(row["candidates"]) == 6 and len(set(row["candidates"])) == 6
        assert row["ground_truth"][0] in row["candidates"]
        assert row["prompt"][-1]["role"] == "user" and "\\boxed" in row["prompt"][-1]["content"]
        if row["query_type"] == "attribute":
            wanted = set(row["query_attributes"])
            satisfying = [c for c in row["candidates"] if wanted <= graph.lookup(c)]
            assert satisfying == row["ground_truth"]  # exactly the positive satisfies the query
        reasoning = templated_reasoning(row, graph)
        assert len(reasoning.splitlines()) == 7 and extract_boxed(reasoning) == row["ground_truth"]
    again = build_rerec_dataset(movielens, graph, num_queries=20, num_candidates=6, seed=3)
    assert again["prompt"] == data["prompt"]


def test_most_rated_subset(movielens, graph):
    titles = most_rated_titles(movielens, 5)
    assert titles[0] == "Forrest Gump (1994)"
    assert len(graph.subset(titles)) == 5


def test_short_titles_keep_tasks_checkable(movielens, graph):
    assert short_title("Matrix, The (1999)") == "The Matrix" and short_title("Toy Story (1995)") == "Toy Story"
    clash = with_short_titles(ItemAttributeGraph(["Heat (1995)", "Heat (1986)", "Up (2009)"], [frozenset()] * 3))
    assert clash.titles == ["Heat (1995)", "Heat (1986)", "Up"]  # a shared name keeps its years
    short = with_short_titles(graph.subset(most_rated_titles(movielens, 12)))
    assert "The Matrix" in short.titles and short.lookup("Matrix, The (1999)") is not None
    data = build_rerec_dataset(movielens, short, num_queries=8, query_types=["attribute"], num_candidates=4)
    check_rerec_dataset(data)
    assert all("(19" not in c for row in data for c in row["candidates"])


def test_bad_datasets_fail_naming_the_field():
    with pytest.raises(ValueError, match="missing column.*ground_truth"):
        check_rerec_dataset(Dataset.from_dict({"prompt": ["q"]}))
    with pytest.raises(ValueError, match=r"train_dataset\[1\]\['candidates'\] does not contain"):
        check_rerec_dataset(
            Dataset.from_dict({"prompt": ["q", "q"], "ground_truth": [["A"], ["B"]], "candidates": [["A"], ["C"]]})
        )
    with pytest.raises(ValueError, match=r"\['ground_truth'\] is empty"):
        check_rerec_dataset(Dataset.from_dict({"prompt": ["q"], "ground_truth": [" ; "]}))


def test_reward_funcs_weighted_total(graph):
    funcs = rerec_reward_funcs(1, graph)
    assert [f.__name__ for f in funcs] == ["rerec_format", "rerec_ndcg@1", "rerec_qas"]
    completions = [
        [{"role": "assistant", "content": "Toy Story fits.\n\\boxed{Toy Story (1995)}"}],
        [{"role": "assistant", "content": "\\boxed{Heat (1995)}"}],
        [{"role": "assistant", "content": "no box"}],
        [{"role": "assistant", "content": "\\boxed{Not A Real Movie}"}],
    ]
    truth = [["Toy Story (1995)"]] * 4
    scores = [f(completions=completions, ground_truth=truth) for f in funcs]
    assert scores[0] == [0.5, 0.5, -0.5, 0.5]
    assert scores[1] == [1.0, 0.0, -0.5, 0.0]
    heat, toy = graph.lookup("Heat (1995)"), graph.lookup("Toy Story (1995)")
    assert scores[2] == [1.0, len(heat & toy) / len(toy), 0.0, 0.0]
    total = [0.1 * f + n + 0.01 * q for f, n, q in zip(*scores)]
    assert total[0] == pytest.approx(1.06) and total[2] == pytest.approx(-0.55)


def test_curriculum_drops_mastered_orders_and_falls_back():
    cur = OnlineCurriculum(5, tau=0.1, min_queries=2, shuffle_first=False)
    assert cur.order == [0, 1, 2, 3, 4]
    # query 0 always right (d=0), 1 half right (d=0.5), 2 never boxed (-0.5 counts as 0 -> d=1), 3 d=0.25
    cur.record([0, 0, 1, 1, 2, 3, 3, 3, 3], [1, 1, 1, 0, -0.5, 1, 1, 1, 0])
    cur.end_epoch()
    assert cur.mastered == {0} and cur.order == [4, 3, 1, 2]  # 4 was not reached this epoch: it comes first
    restored = OnlineCurriculum(5, tau=0.1, min_queries=2)
    restored.load_state_dict(cur.state_dict())
    assert restored.order == cur.order and restored.difficulty == cur.difficulty and restored.mastered == {0}
    cur.record([1, 2, 3, 4], [1, 1, 1, 0])
    cur.end_epoch()
    # only 4 remains unmastered (< min_queries=2): fall back to the full set, easy to hard
    assert cur.mastered == {0, 1, 2, 3} and cur.order == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="train_dataset has 5"):
        OnlineCurriculum(5).load_state_dict(OnlineCurriculum(4).state_dict())


def test_curriculum_epochs_visit_every_query_within_two_epochs():
    """10 queries, 4 per generation batch: an epoch is 8 queries; nothing is mastered (all answers wrong)."""
    from trl_mars.trainers.rerec_trainer import CurriculumSampler

    cur = OnlineCurriculum(10, tau=0.1, min_queries=4, shuffle_first=True, seed=0)
    sampler = CurriculumSampler(cur, mini_repeat_count=2, batch_size=4, repeat_count=1)
    visited = []
    for _ in range(4):
        epoch = list(sampler)[::2]  # one entry per query (each is repeated mini_repeat_count=2 times)
        assert len(epoch) == 8
        visited.append(set(epoch))
        cur.record(epoch, [0.0] * len(epoch))
        cur.end_epoch()
    for a, b in zip(visited, visited[1:]):
        assert a | b == set(range(10))  # every query within its epoch or the next


def test_score_completions():
    result = score_completions(
        ["\\boxed{Up}", "\\boxed{Heat; Up}", "nothing"], [["Up (2009)"], "Up (2009)", ["Up"]], k=2
    )
    assert result.accuracy == pytest.approx(1 / 3)
    assert result.format_rate == pytest.approx(2 / 3)
    assert result.ndcg == pytest.approx((1 + 1 / 1.5849625007211563) / 3)
    assert same_title("Up", "Up (2009)")
