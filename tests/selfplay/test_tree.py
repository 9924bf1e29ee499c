"""Domain tree: Thompson sampling, windows, pending/masked nodes, expansion vote, serialisation, dumps."""

import json

import numpy as np
import pytest

from trl_mars.selfplay.render import dump_tree, tree_to_json
from trl_mars.selfplay.tree import MASKED, PENDING, READY, DomainTree, aggregate_proposals, validate_label


def two_level_tree() -> DomainTree:
    tree = DomainTree(["Movies"], max_level=2, window=3, expansion_caps=[2])
    tree.resolve(1, ["doc:movies"])
    return tree


def test_update_moves_posteriors_and_truncates_window():
    tree = two_level_tree()
    child = tree.add_child(1, "Comedy")
    for g in (1, 0, 1, 1):
        tree.update([0, 1, child], g)
    assert (tree.nodes[child].alpha, tree.nodes[child].beta) == (4.0, 2.0)
    assert tree.nodes[child].window == [0, 1, 1]  # last W = 3 outcomes
    assert tree.window_params(child) == (3.0, 2.0)  # Beta(1 + s, 1 + n - s)
    assert (tree.nodes[0].alpha, tree.nodes[0].beta) == (1.0, 1.0)  # the root is never updated
    with pytest.raises(ValueError, match="0 or 1"):
        tree.update([1], 2)


def test_unk_expansion_then_descend_into_resolved_child():
    tree = two_level_tree()
    calls = []

    def expand(node_id):
        calls.append(node_id)
        tree.resolve(tree.add_child(node_id, "Comedy"), ["doc:comedy"])

    path = tree.sample_path(np.random.default_rng(0), expand)
    assert calls == [1]  # Movies had only unk: expanded once, then resampled there
    assert path == [0, 1, 2] and tree.nodes[2].name == "Comedy"


def test_pending_children_are_not_sampled_and_unk_fires_once_per_call():
    tree = two_level_tree()
    calls = []

    def expand(node_id):
        calls.append(node_id)
        tree.add_child(node_id, "Comedy")  # lookup not back yet: stays pending

    path = tree.sample_path(np.random.default_rng(0), expand, max_failures=3)
    assert calls == [1]
    assert tree.nodes[2].status == PENDING
    assert path == [0, 1]  # no leaf reachable: the deepest path is returned
    tree.resolve(2, [])
    assert tree.nodes[2].status == MASKED


def test_thompson_prefers_learnable_children():
    tree = two_level_tree()
    good, bad = tree.add_child(1, "Good"), tree.add_child(1, "Bad")
    for node, g in ((good, 1), (bad, 0)):
        tree.resolve(node, ["d"])
        for _ in range(3):
            tree.update([node], g)
    tree.nodes[1].unk_masked = True
    rng = np.random.default_rng(0)
    picks = [tree.draw_child(1, rng) for _ in range(200)]
    # Beta(4, 1) vs Beta(1, 4): P(good wins) = 1 - P(X < Y) ~= 0.98
    assert picks.count(good) > 180
    # unk draws from Beta(1, 1): it beats a saturated-bad child about half the time
    tree.nodes[1].unk_masked = False
    tree.nodes[good].status = MASKED
    picks = [tree.draw_child(1, rng) for _ in range(200)]
    assert 120 < picks.count(-1) < 200


def test_unk_masked_at_cap_times_multiplier():
    tree = DomainTree(["D"], max_level=2, expansion_caps=[2], cap_multiplier=2)
    for i in range(3):
        tree.add_child(1, f"c{i}")
    assert not tree.nodes[1].unk_masked
    tree.add_child(1, "c3")
    assert tree.nodes[1].unk_masked
    with pytest.raises(ValueError, match="leaf"):
        tree.add_child(2, "too deep")


def test_aggregate_proposals_vote():
    texts = (
        ["[Proposition Start]Heist films[Proposition End]"] * 2
        + ["[Proposition Start]  heist   FILMS [Proposition End]"]
        + ["[Proposition Start]Space opera[Proposition End]"]
        + ["[Proposition Start]bad.label[Proposition End]"] * 3
        + ["no more", "garbage output"]
        + ["[Proposition Start]Film noir[Proposition End]"] * 2
    )
    assert aggregate_proposals(texts, existing=[]) == ["heist films", "film noir"]
    assert aggregate_proposals(texts, existing=["Heist Films"], top_k=3) == ["film noir"]
    assert aggregate_proposals(texts, existing=[], top_k=1) == ["heist films"]
    assert not validate_label("unk topic") and not validate_label("x" * 101) and validate_label("Toy Story (1995)")


def test_serialisation_round_trip_and_dumps(tmp_path):
    tree = two_level_tree()
    child = tree.add_child(1, "Comedy")
    tree.resolve(child, ["a", "b"])
    tree.update([0, 1, child], 1)
    assert tree.next_document(child) == "a" and tree.next_document(child) == "b" and tree.next_document(child) == "a"
    state = json.loads(json.dumps(tree.to_dict()))
    assert DomainTree.from_dict(state).to_dict() == tree.to_dict()
    json_path, html_path = dump_tree(tree, tmp_path)
    dumped = json.loads(json_path.read_text())
    comedy = dumped["children"][0]["children"][0]
    assert comedy["name"] == "Comedy" and comedy["posterior_mean"] == pytest.approx(2 / 3) and comedy["window"] == [1]
    assert comedy["status"] == READY and dumped == tree_to_json(tree)
    page = html_path.read_text()
    assert "<svg" in page and "Comedy" in page and "0.67 (1/1) ready" in page
    assert page.count("<circle ") == len(tree.nodes) and 'id="node-data"' in page  # the shared tree viewer
    assert "posterior mean alpha / (alpha + beta) = 2 / 3 = 0.667" in page
