"""The embedded task set: deterministic, well-formed, reference solutions pass and wrong ones fail."""

import pytest

from trl_mars.data.code_tasks import DIFFICULTIES, code_task_splits, generate_tasks
from trl_mars.sandbox import Sandbox


def test_deterministic_in_seed():
    a, b, c = generate_tasks(30, seed=3), generate_tasks(30, seed=3), generate_tasks(30, seed=4)
    assert a == b
    assert [t.question for t in a] != [t.question for t in c]


def test_fields_and_difficulty_levels():
    tasks = generate_tasks(30, seed=0)
    assert {t.difficulty for t in tasks} == set(DIFFICULTIES)
    assert len({t.question for t in tasks}) == 30
    for t in tasks:
        assert t.signature in t.question and t.canonical_solution.startswith(t.signature)
        assert len(t.tests) >= 2 and all(s.startswith(f"assert {t.entry_point}(") for s in t.tests)
        assert t.test.startswith("def check(candidate):")
    with pytest.raises(ValueError, match="difficulties"):
        generate_tasks(3, difficulties=[4])


def test_splits_are_disjoint():
    train, test = code_task_splits(40, 10, seed=0)
    assert len(train) == 40 and len(test) == 10
    assert not set(train["question"]) & set(test["question"])
    assert train[0]["prompt"] == [{"role": "user", "content": train[0]["question"]}]


def test_reference_solutions_pass_and_wrong_ones_fail():
    tasks = generate_tasks(60, seed=7)
    with Sandbox() as sandbox:
        good = sandbox.run_batch([(t.canonical_solution, t.tests) for t in tasks])
        wrong = sandbox.run_batch([(f"{t.signature}\n    return None\n", t.tests) for t in tasks])
        equivalent = sandbox.run_batch(
            [(t.canonical_solution.replace("    return ", "    return [] if 0 else "), t.tests) for t in tasks[:3]]
        )
    assert all(r.passed for r in good), [r for r in good if not r.passed][:1]
    assert not any(r.passed for r in wrong)
    assert all(r.passed for r in equivalent)  # an equivalent rewrite still passes: the tests check behaviour
