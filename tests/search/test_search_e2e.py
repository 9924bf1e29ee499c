"""End-to-end search: a planted refinement scenario, two tiny models on real problems, state round-trip."""

import gzip
import json
import re

import numpy as np
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_mars.data.code_tasks import generate_tasks
from trl_mars.eval.loaders import from_humaneval
from trl_mars.sandbox import Sandbox
from trl_mars.search import (
    SamplingConfig,
    SandboxVerifier,
    ScriptedBackend,
    SearchConfig,
    SearchProblem,
    SearchTree,
    TransformersBackend,
    TreeSearch,
    mean_metrics,
    tree_metrics,
)
from trl_mars.search.problems import from_code_problem

WRONG = "```python\ndef add_3(x):\n    return x + 4\n```"
RIGHT = "```python\ndef add_3(x):\n    return x + 3\n```"
PROBLEM = SearchProblem(
    "add_3", "Write `add_3(x)` that returns x plus 3.", ["assert add_3(1) == 4", "assert add_3(5) == 8"]
)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(concurrency=2, timeout_s=20.0) as sb:  # generous: verdicts must not depend on machine load
        yield sb


def fixer(messages) -> str:
    """Wrong at first; right only when the feedback shows the failing case's expected value."""
    text = messages[-1]["content"]
    return RIGHT if "Your previous code" in text and "expected" in text.lower() and "4" in text else WRONG


def nodes_to_solve(config: SearchConfig, sandbox, seed: int) -> int:
    search = TreeSearch({"a": ScriptedBackend(fixer)}, SandboxVerifier(sandbox), config, seed=seed)
    (tree,) = search.run([PROBLEM])
    solved = [n.node_id for n in tree.solutions if n.score == 1.0]
    return solved[0] if solved else config.max_nodes + 1


def test_planted_refinement_is_found_and_tplus_needs_fewer_nodes(sandbox):
    tplus = SearchConfig(max_nodes=8, tplus=True, stop_on_pass=True)
    gen_only = SearchConfig(max_nodes=8, max_depth=1, stop_on_pass=True)
    tplus_nodes = [nodes_to_solve(tplus, sandbox, s) for s in range(6)]
    gen_nodes = [nodes_to_solve(gen_only, sandbox, s) for s in range(6)]
    assert all(n <= 8 for n in tplus_nodes), tplus_nodes  # always found, through a refinement
    assert gen_nodes == [9] * 6  # never found without refinement
    assert np.mean(tplus_nodes) < np.mean(gen_nodes)
    search = TreeSearch({"a": ScriptedBackend(fixer)}, SandboxVerifier(sandbox), tplus, seed=0)
    (tree,) = search.run([PROBLEM])
    winner = next(n for n in tree.solutions if n.score == 1.0)
    assert winner.is_refinement and "Your previous code" in winner.prompt[-1]["content"]
    assert PROBLEM.question in winner.prompt[-1]["content"]  # the problem statement is kept in refinements
    parent = tree.nodes[winner.parent_id]
    assert parent.feedback["failures"] and parent.feedback["failures"][0]["expected"] is not None


def test_summary_feedback_hides_the_failing_case(sandbox):
    plain = SearchConfig(max_nodes=6, stop_on_pass=True)  # MARS² without T+: summary feedback only
    assert [nodes_to_solve(plain, sandbox, s) for s in range(3)] == [7, 7, 7]


def test_lockstep_batches_one_generation_call_per_step(sandbox):
    backend = ScriptedBackend(lambda m: WRONG)
    search = TreeSearch({"a": backend, "b": backend}, SandboxVerifier(sandbox), SearchConfig(max_nodes=3), seed=0)
    search.run([PROBLEM] * 5)
    assert backend.calls == [5, 5, 5]  # shared backend: one call per step across trees and agents


def test_search_state_roundtrips_and_continues_identically(sandbox):
    config = SearchConfig(max_nodes=6, tplus=True)
    agents = {"a": ScriptedBackend(lambda m: WRONG), "b": ScriptedBackend(fixer)}
    first = TreeSearch(agents, SandboxVerifier(sandbox), config, seed=3)
    trees = first.new_trees([PROBLEM, PROBLEM])
    for _ in range(3):
        first.step([PROBLEM, PROBLEM], trees, [0, 1])
    saved = json.loads(json.dumps({"search": first.state_dict(), "trees": [t.to_dict() for t in trees]}))
    resumed = TreeSearch(agents, SandboxVerifier(sandbox), config, seed=99)
    resumed.load_state_dict(saved["search"])
    resumed_trees = resumed.run([PROBLEM, PROBLEM], [SearchTree.from_dict(t) for t in saved["trees"]])
    straight = first.run([PROBLEM, PROBLEM], trees)
    assert [t.to_dict() for t in resumed_trees] == [t.to_dict() for t in straight]


@pytest.fixture(scope="module")
def tiny_agents(tiny_qwen2_path, tiny_llama_path):
    sampling = SamplingConfig(max_new_tokens=24, temperature=1.0)
    return {
        name: TransformersBackend(AutoModelForCausalLM.from_pretrained(p), AutoTokenizer.from_pretrained(p), sampling)
        for name, p in (("qwen", tiny_qwen2_path), ("llama", tiny_llama_path))
    }


def test_two_tiny_models_search_embedded_and_humaneval(tiny_agents, sandbox, shared_data):
    embedded = [SearchProblem(t.task_id, t.question, t.tests) for t in generate_tasks(3, seed=11)]
    with gzip.open(shared_data / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line, _ in zip(f, range(2))]
    humaneval = [from_code_problem(from_humaneval(r), public=1) for r in rows]
    assert humaneval[0].preamble == "from typing import List" and len(humaneval[0].public_tests) == 1
    problems = embedded + humaneval
    import torch

    torch.manual_seed(0)
    search = TreeSearch(tiny_agents, SandboxVerifier(sandbox), SearchConfig(max_nodes=6), seed=0)
    trees = search.run(problems)
    search.grade(problems, trees)
    assert all(len(t) == 6 for t in trees)
    agents = {n.agent for t in trees for n in t.solutions}
    assert agents == {"qwen", "llama"}
    assert max(n.depth for t in trees for n in t.solutions) > 1
    refinements = [n for t in trees for n in t.solutions if n.is_refinement]
    assert refinements and all(
        re.search(r"Passed \d+ of|did not contain", n.prompt[-1]["content"]) for n in refinements
    )
    assert all(
        n.private_score is not None and len(n.logprobs) == len(n.completion_ids) for t in trees for n in t.solutions
    )
    system = mean_metrics([tree_metrics(t) for t in trees])
    assert set(system) >= {"pass@1", "pass@1(mcts)", "pass@n"} and system["pass@n"] >= system["pass@1(mcts)"]
    for name in ("qwen", "llama"):  # agent mode: a tree per agent
        solo = TreeSearch({name: tiny_agents[name]}, SandboxVerifier(sandbox), SearchConfig(max_nodes=2), seed=1)
        solo_trees = solo.run(problems)
        solo.grade(problems, solo_trees)
        assert {n.agent for t in solo_trees for n in t.solutions} == {name}
        assert 0.0 <= mean_metrics([tree_metrics(t) for t in solo_trees])["pass@1"] <= 1.0
