"""Real HumanEval: every canonical solution passes; an empty body (``pass``) fails every problem."""

from __future__ import annotations

import pytest

from trl_mars.eval import load_problems
from trl_mars.sandbox import Sandbox


@pytest.fixture(scope="module")
def problems(shared_data):
    path = shared_data / "humaneval" / "HumanEval.jsonl.gz"
    if not path.exists():
        pytest.fail(f"HumanEval not found at {path}; set TRL_MARS_DATA")
    return load_problems(path)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(concurrency=2, timeout_s=3.0, max_total_s=20.0) as sb:
        yield sb


def test_all_canonical_solutions_pass(problems, sandbox):
    assert len(problems) == 164
    results = sandbox.run_batch([p.check(p.reference_solution) for p in problems])
    failing = [(p.task_id, r.feedback_text()) for p, r in zip(problems, results) if not r.passed]
    assert failing == []
    assert sum(len(r.verdicts) for r in results) > 164  # checks were split into per-assert tests


def test_empty_bodies_fail_every_problem(problems, sandbox):
    results = sandbox.run_batch([p.check(p.prompt + "    pass\n") for p in problems])
    assert sum(r.passed for r in results) == 0
    assert all(r.sandbox_error is None for r in results)
