"""Concurrent agents (lockstep steps call independent backends at once) and asynchronous search (each tree advances
on its own, ``max_inflight`` requests per tree, pending expansions counted as virtual losses)."""

from __future__ import annotations

import doctest
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from trl_mars.rewards.code_extraction import extract_code
from trl_mars.search import ScriptedBackend, SearchConfig, SearchProblem, SearchTree, TreeSearch
from trl_mars.search.async_search import with_pending
from trl_mars.search.prompts import first_prompt, refinement_prompt
from trl_mars.search.selection import select_expansion
from trl_mars.search.tree import ROOT

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the helpers sit here
from concurrency_fakes import RIGHT, WRONG, CallLog, InstantVerifier, SleepyBackend  # noqa: E402

PROBLEMS = [SearchProblem(f"p{i}", f"Problem {i}: write f.", public_tests=["assert f() == 1"]) for i in range(8)]


def trees_of(search: TreeSearch, problems=PROBLEMS) -> list[dict]:
    return [t.to_dict() for t in search.run(problems)]


def timed(search: TreeSearch, problems=PROBLEMS) -> tuple[list[dict], float]:
    start = time.perf_counter()
    trees = trees_of(search, problems)
    return trees, time.perf_counter() - start


# ------------------------------------------------------------------ 1. concurrent agents in a lockstep step
def two_agents(log: CallLog, concurrent: bool, delay: float = 0.25) -> dict:
    return {name: SleepyBackend(name, log, delay, concurrent=concurrent) for name in ("a", "b")}


def test_independent_backends_generate_at_once_step_time_is_the_max_not_the_sum():
    config = SearchConfig(max_nodes=2)
    log_seq, log_con = CallLog(), CallLog()
    sequential, t_seq = timed(TreeSearch(two_agents(log_seq, False), InstantVerifier(), config, seed=1))
    concurrent, t_con = timed(TreeSearch(two_agents(log_con, True), InstantVerifier(), config, seed=1))
    # both agents were asked in both steps (else there would be nothing to overlap)
    assert sorted(w for w, *_ in log_con.calls) == ["a", "a", "b", "b"]
    assert concurrent == sequential  # same selections, nodes, order of additions and posteriors
    assert log_seq.max_active == 1 and t_seq >= 4 * 0.25
    assert log_con.max_active == 2 and log_con.overlapped("a", "b")
    assert t_con < 3 * 0.25  # two steps of max(0.25, 0.25), not of 0.25 + 0.25


def test_backends_that_do_not_declare_concurrency_keep_todays_order():
    log = CallLog()
    agents = {
        "a": SleepyBackend("a", log, 0.05, concurrent=False),
        "b": ScriptedBackend(lambda m: RIGHT),  # no delay, no concurrency either
        "c": SleepyBackend("c", log, 0.05, concurrent=False),
    }
    search = TreeSearch(agents, InstantVerifier(), SearchConfig(max_nodes=3), seed=0)
    boundaries = [0]
    trees = search.run(PROBLEMS, on_step=lambda trees: boundaries.append(len(log.calls)))
    assert log.max_active == 1
    assert all(e <= s2 for (_, _, e, _), (_, s2, _, _) in zip(log.calls, log.calls[1:]))  # one after the other
    called = [[w for w, *_ in log.calls[i:j]] for i, j in zip(boundaries, boundaries[1:])]
    # today's order: each step calls the backends in the order in which its trees (in tree order) chose them
    chosen = [[n.agent for t in trees for n in t.solutions if n.step == k] for k in range(3)]
    assert called == [[a for a in dict.fromkeys(agents) if a != "b"] for agents in chosen]
    assert {tuple(c) for c in called} >= {("a", "c"), ("c", "a")}  # both orders occur: the check can fail


def test_processes_in_lockstep_never_overlap_even_with_concurrent_backends():
    log = CallLog()
    search = TreeSearch(two_agents(log, True, 0.05), InstantVerifier(), SearchConfig(max_nodes=2), sync=lambda n: n)
    search.run(PROBLEMS[:4])
    assert log.max_active == 1  # collectives: every process calls the models in the same order, one at a time
    assert [w for w, *_ in log.calls] == ["a", "b", "a", "b"]  # and each model every step (idle prompt if needed)


# ------------------------------------------------------------------ 2. asynchronous search
def jittered(seed: int, scale: float = 0.02):
    rng = np.random.default_rng(seed)
    return lambda prompt, n: float(rng.uniform(0, scale))


def async_search(agents, seed=3, **config) -> TreeSearch:
    return TreeSearch(agents, InstantVerifier(), SearchConfig(mode="async", **{"max_nodes": 4, **config}), seed=seed)


def test_async_with_one_request_per_tree_is_reproducible_whatever_the_timing():
    runs = []
    for jitter in (0, 1):
        log = CallLog()
        agents = {n: SleepyBackend(n, log, jittered(jitter + 10 * i)) for i, n in enumerate("ab")}
        runs.append(trees_of(async_search(agents)))
        assert log.max_active > 1  # trees did run at once (so results arrived in different orders)
    assert runs[0] == runs[1]
    other = trees_of(async_search({n: SleepyBackend(n, CallLog()) for n in "ab"}, seed=4))
    assert other != runs[0]  # the seed does decide the trees


def test_async_max_inflight_1_is_the_sequential_ab_mcts_of_each_tree():
    """Each tree equals a plain sequential AB-MCTS loop (select, generate, score, add) run with its own generator,
    seeded from the search's: the async scheduler changes when a tree's nodes are made, not which."""
    config = SearchConfig(mode="async", max_nodes=5, tplus=True)
    agents = {n: SleepyBackend(n, CallLog(), jittered(i)) for i, n in enumerate("ab")}
    got = trees_of(TreeSearch(agents, InstantVerifier(), config, seed=7))

    seeds = np.random.default_rng(7).integers(0, 2**63, size=len(PROBLEMS))
    reference = {n: SleepyBackend(n, CallLog()) for n in "ab"}
    for problem, seed, tree_dict in zip(PROBLEMS, seeds, got, strict=True):
        rng, tree = np.random.default_rng(int(seed)), SearchTree(tree_dict["tree_id"], problem.problem_id)
        for step in range(config.max_nodes):
            parent, agent = select_expansion(tree, ["a", "b"], rng, config.order, config.depth_schedule)
            prompt = (
                first_prompt(problem.question, config.prompt)
                if parent == ROOT
                else refinement_prompt(problem.question, tree.nodes[parent], config.prompt)
            )
            gen = reference[agent].generate([prompt])[0]
            ok = float("# right" in gen.text)
            code = extract_code(gen.text)
            tree.add(parent, agent, step, prompt=prompt, prompt_ids=gen.prompt_ids, completion=gen.text,
                     completion_ids=gen.completion_ids, logprobs=gen.logprobs, code=code, score=ok,
                     pass_fraction=ok, feedback={"summary": "ok" if ok else "Failed."})  # fmt: skip
        assert tree.to_dict() == tree_dict
    assert any(n["parent_id"] not in (None, ROOT) for t in got for n in t["nodes"])  # refinements happened


def test_async_trees_advance_without_waiting_for_the_slowest_tree():
    """Tree p0 is slow on its 1st and 3rd expansion, p1 on its 2nd and 4th: lockstep waits for a slow call every
    step (4 x 0.3 s); async lets each tree run its own 2 slow + 2 fast calls (about 0.66 s)."""

    def delay(prompt, n):
        first = int(prompt[-1]["content"].split(":")[0][-1])  # the problem's index
        return 0.3 if (n + first) % 2 == 0 else 0.03

    problems = PROBLEMS[:2]
    lockstep, t_lock = timed(TreeSearch({"a": SleepyBackend("a", CallLog(), delay)}, InstantVerifier(),
                                        SearchConfig(max_nodes=4), seed=0), problems)  # fmt: skip
    log = CallLog()
    asynchronous, t_async = timed(async_search({"a": SleepyBackend("a", log, delay)}, seed=0), problems)
    assert all(len(t["nodes"]) == 5 for t in lockstep + asynchronous)
    assert t_lock >= 4 * 0.3 and t_async < 3 * 0.3
    assert all(prompts == 1 for *_, prompts in log.calls)  # one request per call: the server batches them


def test_async_max_inflight_keeps_budget_and_in_flight_limit_and_counts_each_node_once():
    log = CallLog()
    inflight: dict[str, int] = {}
    peak: dict[str, int] = {}

    class Tracking(SleepyBackend):
        def generate(self, prompts, on_text=None):
            key = prompts[0][-1]["content"].split(":")[0].rsplit(" ", 1)[-1]
            with self.lock:
                inflight[key] = inflight.get(key, 0) + 1
                peak[key] = max(peak.get(key, 0), inflight[key])
            try:
                return super().generate(prompts, on_text)
            finally:
                with self.lock:
                    inflight[key] -= 1

    agents = {n: Tracking(n, log, jittered(i, 0.05)) for i, n in enumerate("ab")}
    trees = async_search(agents, max_nodes=5, max_inflight=3).run(PROBLEMS[:4])
    assert [len(t) for t in trees] == [5] * 4  # the budget counts nodes in flight: never one too many
    assert max(peak.values()) == 3 and all(v == 0 for v in inflight.values())
    for tree in trees:  # statistics = those of the same nodes added one by one: no virtual loss left behind
        replay = SearchTree(tree.tree_id, tree.problem_id)
        for node in tree.solutions:
            replay.add(node.parent_id, node.agent, node.step, score=node.score)
        assert {k: s.to_dict() for k, s in replay.stats.items()} == {k: s.to_dict() for k, s in tree.stats.items()}
        assert replay.agent_scores == tree.agent_scores and replay.gen_count_by_depth == tree.gen_count_by_depth
        assert sorted(n.step for n in tree.solutions) == list(range(5))  # its own launch order


def test_pending_expansion_is_a_virtual_loss_on_every_arm_its_score_will_update():
    tree = SearchTree("t", "p")
    tree.add(ROOT, "a", 0, score=1.0)  # node 1
    tree.add(1, "b", 1, score=1.0)  # node 2, a refinement of 1
    before = tree.to_dict()
    view = with_pending(tree, [(2, "a")])  # a refinement of node 2 in flight
    assert tree.to_dict() == before  # the tree itself is untouched
    assert (view.stats[2].gen.a, view.stats[2].gen.b) == (0.5, 1.5)  # GEN at the parent: +0
    assert (view.stats[2].gen_by_agent["a"].a, view.stats[2].gen_by_agent["a"].b) == (0.5, 1.5)
    arm = lambda p: (p.a, p.b, p.n)  # noqa: E731
    # CONT above the parent: node 1's saw nothing before (node 2 was GEN there), the root's saw node 2's 1
    assert arm(view.stats[1].cont) == (0.5, 1.5, 1)
    assert arm(view.stats[ROOT].cont) == (1.5, 1.5, 2)
    assert arm(view.stats[2].as_child) == (1.5, 1.5, 2)  # its own 1, then the pending 0
    assert arm(view.stats[1].as_child) == (2.5, 1.5, 3)  # its own 1, node 2's 1, the pending 0
    assert view.agent_scores == {"a": [1.0, 0.0], "b": [1.0]}
    assert view.gen_count_by_depth == {0: 1, 1: 1, 2: 1}


def test_a_pending_expansion_steers_the_next_selection_elsewhere():
    """Root with one good first answer (node 1): without anything pending the walk refines node 1 most of the
    time; with a refinement of node 1 in flight (virtual loss there) it does so measurably less often."""
    tree = SearchTree("t", "p")
    tree.add(ROOT, "a", 0, score=1.0)
    view = with_pending(tree, [(1, "a")])
    draws = 4000
    plain = sum(select_expansion(tree, ["a"], np.random.default_rng(s))[0] == 1 for s in range(draws)) / draws
    pending = sum(select_expansion(view, ["a"], np.random.default_rng(s))[0] == 1 for s in range(draws)) / draws
    assert pending < plain - 0.1


def test_async_needs_backends_that_accept_concurrent_requests_and_no_lockstep_processes():
    calls = []
    scripted = ScriptedBackend(lambda m: calls.append(m) or RIGHT)
    with pytest.raises(ValueError, match=r"mode='async'.*agent 'b'.*ScriptedBackend.*concurrent_requests"):
        async_search({"a": SleepyBackend("a", CallLog()), "b": scripted}).run(PROBLEMS)
    assert not calls  # refused before any generation
    search = TreeSearch({"a": SleepyBackend("a", CallLog())}, InstantVerifier(), SearchConfig(mode="async"), sync=max)
    with pytest.raises(ValueError, match="mode='async'.*lockstep"):
        search.run(PROBLEMS)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mode": "eager"}, "mode must be 'lockstep' or 'async'"),
        ({"max_inflight": 0}, "max_inflight must be >= 1"),
        ({"max_inflight": 2}, "max_inflight=2 needs mode='async'"),
    ],
)
def test_search_config_rejects_bad_modes(fields, message):
    with pytest.raises(ValueError, match=message):
        SearchConfig(**fields)


def test_a_failing_request_ends_the_async_search_with_its_error():
    agents = {"a": SleepyBackend("a", CallLog(), 0.01, fail=True)}
    with pytest.raises(RuntimeError, match="a: server error"):
        async_search(agents).run(PROBLEMS[:2])


def test_module_doctests():
    from trl_mars.search import async_search

    result = doctest.testmod(async_search)
    assert result.attempted > 0 and result.failed == 0


def test_async_stop_on_pass_ends_a_tree_at_its_first_passing_node():
    agents = {"a": SleepyBackend("a", CallLog(), 0.01, respond=lambda m: RIGHT if "previous" in m[-1]["content"]
                                 else WRONG)}  # fmt: skip
    trees = async_search(agents, max_nodes=6, stop_on_pass=True).run(PROBLEMS[:3])
    for tree in trees:  # wrong first answers until the first refinement, which passes: the tree stops there
        assert tree.solutions[-1].score == 1.0 and tree.solutions[-1].is_refinement
        assert not any(n.is_refinement or n.score for n in tree.solutions[:-1])
    assert any(len(t) < 6 for t in trees)  # stopped before the budget
