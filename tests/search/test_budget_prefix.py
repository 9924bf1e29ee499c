"""benchmarks/smollm2_humaneval.py reads budget b off the first b nodes of a larger tree: the b-node search's tree."""

from __future__ import annotations

import importlib.util
import zlib
from concurrent.futures import Future
from pathlib import Path

import pytest

from trl_mars.search import SearchConfig, SearchProblem, TreeSearch
from trl_mars.search.backends import Generation
from trl_mars.search.metrics import tree_metrics
from trl_mars.search.verify import Verdict

spec = importlib.util.spec_from_file_location(
    "smollm2_humaneval", Path(__file__).parents[2] / "benchmarks" / "smollm2_humaneval.py"
)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


class Backend:
    """Code derived from the prompt (so refinements differ from first answers), deterministically."""

    def generate(self, prompts, on_text=None) -> list[Generation]:
        return [Generation([0], [1], f"```python\nx = {zlib.crc32(repr(p).encode())}\n```") for p in prompts]


class Verifier:
    """Passes about a third of the programs, deterministically; private = public here."""

    def submit(self, code: str, tests, entry_point=None, setup: str = "") -> Future:
        future = Future()
        ok = float(zlib.crc32(code.encode()) % 3 == 0)
        future.set_result(Verdict(ok, ok, {"summary": "s", "detailed": "d", "failures": []}))
        return future


@pytest.mark.parametrize("method", list(bench.METHODS))
def test_budget_prefix_is_the_smaller_search(method):
    problems = [SearchProblem(f"p{i}", f"problem {i}", "assert x") for i in range(4)]
    options = bench.METHODS[method][1]
    big = TreeSearch({"m": Backend()}, Verifier(), SearchConfig(max_nodes=8, **options), seed=3)
    trees, seconds = bench.grow(big, problems, [1, 4, 8])
    assert sorted(seconds) == [1, 4, 8] and seconds[1] <= seconds[4] <= seconds[8]
    assert [len(t) for t in trees] == [8] * 4
    big.grade(problems, trees)
    for budget in (1, 4):
        small = TreeSearch({"m": Backend()}, Verifier(), SearchConfig(max_nodes=budget, **options), seed=3)
        expected = small.run(problems)
        small.grade(problems, expected)
        for tree, want in zip(trees, expected):
            prefix, want_dict = bench.prefix_tree(tree, budget).to_dict(), want.to_dict()
            if method == "gen":  # same nodes, drawn in more batches (search steps) than the one-call search
                for node in (*prefix["nodes"], *want_dict["nodes"]):
                    node.pop("step")
            assert prefix == want_dict
            assert tree_metrics(bench.prefix_tree(tree, budget)) == tree_metrics(want)
    if method != "gen":  # the search refined something (GEN-only never does)
        assert any(n.is_refinement for t in trees for n in t.solutions)


def test_regrade_scores_gen_trees_again_exactly(tmp_path):
    """``--regrade``: a GEN-only tree of an earlier run, scored again, is the tree a rerun grows (same samples,
    today's scores); a verdict that changed (here: every program passes now) changes its metrics."""
    problems = [SearchProblem(f"p{i}", f"problem {i}", "assert x") for i in range(3)]
    config = SearchConfig(max_nodes=4, **bench.METHODS["gen"][1])
    run = tmp_path / "run"
    run.mkdir()
    trees, seconds = bench.grow(TreeSearch({"m": Backend()}, Verifier(), config, seed=1), problems, [1, 4])
    rows = [
        {"task_id": t.problem_id, "method": "gen", "budget": b, "seconds": seconds[b]} for t in trees for b in (1, 4)
    ]
    rows.append({"task_id": "p0", "method": "abmcts", "budget": 4, "seconds": 9.0})
    (run / "results.jsonl").write_text("".join(bench.json.dumps(r) + "\n" for r in rows))
    (run / "trees.jsonl").write_text("".join(bench.json.dumps({"method": "gen", **t.to_dict()}) + "\n" for t in trees))

    class PassAll(Verifier):
        def submit(self, code, tests, entry_point=None, setup=""):
            future = Future()
            future.set_result(Verdict(1.0, 1.0, {"summary": "s", "detailed": "d", "failures": []}))
            return future

    same, changed, nodes = bench.regrade(run, problems, TreeSearch({"m": object()}, Verifier(), config), [1, 4])
    assert (changed, nodes) == (0, 12)  # the same extraction as when the trees were grown
    rerun = TreeSearch({"m": Backend()}, Verifier(), config, seed=1)
    expected, _ = bench.grow(rerun, problems, [1, 4])
    rerun.grade(problems, expected)
    gen = [r for r in same if r["method"] == "gen"]
    want = [tree_metrics(bench.prefix_tree(t, b)) for t in expected for b in (1, 4)]
    assert [{k: r[k] for k in want[0]} for r in gen] == want
    assert [r["seconds"] for r in gen] == [seconds[1], seconds[4]] * 3  # the first run's search seconds
    assert len(gen) == len(same)  # the GEN-only rows only
    passing, _, _ = bench.regrade(run, problems, TreeSearch({"m": object()}, PassAll(), config), [1, 4])
    assert all(r["pass@1"] == r["pass@n"] == 1.0 for r in passing if r["method"] == "gen")
