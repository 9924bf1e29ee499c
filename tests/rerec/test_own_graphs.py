"""Graph rewards on a user's dataset: graphs from CSV files, the recipe flags, and the error when nothing matches."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from trl_mars.rec import ItemAttributeGraph, UserItemGraph
from trl_mars.rec.reward_funcs import rerec_reward_funcs
from trl_mars.trainers.rerec_trainer import ReasoningRecTrainer

sys.path.insert(0, str(Path(__file__).parent))
from rerec_scripted import TITLES, scripted_config, synthetic_dataset  # noqa: E402

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "rerec.py"


def write_graph_files(folder: Path) -> tuple[Path, Path]:
    attributes = folder / "items.csv"
    attributes.write_text(
        "item,attribute\n" + "".join(f"{t},genre:{['Comedy', 'Drama'][i % 2]}\n" for i, t in enumerate(TITLES))
    )
    interactions = folder / "interactions.tsv"
    rows = [f"u{u}\t{t}\t{5 if (u + i) % 2 else 1}\n" for u in range(6) for i, t in enumerate(TITLES)]
    interactions.write_text("user\titem\trating\n" + "".join(rows))
    return attributes, interactions


def test_graphs_from_files(tmp_path):
    attributes, interactions = write_graph_files(tmp_path)
    graph = ItemAttributeGraph.from_file(attributes)
    assert graph.lookup("film alpha") == frozenset({"genre:Comedy"}) and len(graph) == len(TITLES)
    users = UserItemGraph.from_file(interactions, min_rating=3.5)
    assert (users.num_users, users.num_items, len(users.edges)) == (6, len(TITLES), 24)  # ratings of 1 dropped
    bad = tmp_path / "bad.csv"
    bad.write_text("item,attr\nx,y\n")
    with pytest.raises(ValueError, match=r"bad.csv: missing column\(s\) \['attribute'\]"):
        ItemAttributeGraph.from_file(bad)
    bad.write_text("user,item,rating\nu1,Film Alpha (1990),good\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 2: rating 'good' is not a number"):
        UserItemGraph.from_file(bad)
    bad.write_text("item,attribute\nFilm Alpha (1990),\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 2: empty value in column\(s\) \['attribute'\]"):
        ItemAttributeGraph.from_file(bad)


def test_weighted_graph_rewards_that_match_no_item_fail_before_loading(tmp_path):
    other = ItemAttributeGraph.from_edges([("Toy Story (1995)", "genre:Animation"), ("Heat (1995)", "genre:Crime")])
    args = scripted_config(str(tmp_path / "out"), per_device_train_batch_size=8)
    missing_model = str(tmp_path / "no-model")
    with pytest.raises(ValueError, match=r"qas_weight=0.01 but item_graph knows none of the 7 ground-truth titles"):
        ReasoningRecTrainer(missing_model, args=args, train_dataset=synthetic_dataset(), item_graph=other)


def test_recipe_builds_the_graphs_from_the_users_files(tmp_path):
    spec = importlib.util.spec_from_file_location("rerec_recipe", RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    sys.modules["rerec_recipe"] = recipe  # dataclasses look their module up
    spec.loader.exec_module(recipe)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for split, rows in (("train", synthetic_dataset(6)), ("test", synthetic_dataset(2))):
        (data_dir / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    attributes, interactions = write_graph_files(tmp_path)
    args = recipe.ReRecScriptArguments(
        dataset_name=str(data_dir),
        item_attributes_path=str(attributes),
        interactions_path=str(interactions),
        lightgcn_epochs=2,
        lightgcn_dim=8,
    )
    graph, embeddings, train, test = recipe.build_data(args, seed=0)
    assert (len(train), len(test)) == (6, 2)
    truths = [t for row in train for t in row["ground_truth"]]
    assert all(graph.lookup(t) is not None and embeddings.lookup(t) is not None for t in truths)
    fmt, ndcg, qas, pas = rerec_reward_funcs(1, graph, embeddings)
    right = [f"\\boxed{{{t}}}" for t in truths]
    assert qas(completions=right, ground_truth=train["ground_truth"]) == [1.0] * 6  # QAS of the right item is 1
    assert pas(completions=right, ground_truth=train["ground_truth"]) == pytest.approx([1.0] * 6)
    with pytest.raises(ValueError, match="set dataset_name"):
        recipe.build_data(recipe.ReRecScriptArguments(item_attributes_path=str(attributes)), seed=0)
