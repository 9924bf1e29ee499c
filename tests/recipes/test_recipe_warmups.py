"""The recipes' SFT warm-up data, including the imperfect-teacher errors the tiny demos leave for RL to remove."""

import importlib.util
import random
import re
import sys
from pathlib import Path

from trl_mars.data.code_tasks import code_task_splits
from trl_mars.rec import ItemAttributeGraph
from trl_mars.rewards.rerec import extract_boxed
from trl_mars.sandbox import Sandbox
from trl_mars.search.verify import verdict_of

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_mars2_warmup_chats_teach_first_answers_refinements_and_the_print_bug():
    warmup_chats = recipe("mars2").warmup_chats
    rows = list(code_task_splits(24, 0, seed=3)[0])
    with Sandbox(concurrency=2, timeout_s=2.0) as sandbox:
        clean = warmup_chats(rows, sandbox)
        noisy = warmup_chats(rows, sandbox, error_rate=1.0)
        half = warmup_chats(rows, sandbox, error_rate=0.5, seed=1)
        again = warmup_chats(rows, sandbox, error_rate=0.5, seed=1)
        assert len(clean) == len(noisy) == 2 * len(rows)
        assert [c[-1]["content"] for c in clean[: len(rows)]] == [r["completion"] for r in rows]
        assert noisy[len(rows) :] == clean[len(rows) :]  # refinements always end with the reference fix
        firsts = [c[-1]["content"] for c in noisy[: len(rows)]]
        programs = [re.fullmatch(r"```python\n(.*)```", f, re.DOTALL)[1] for f in firsts]
        assert all("    print(" in p and "return" not in p for p in programs)
        verdicts = sandbox.run_batch([(p, r["tests"]) for p, r in zip(programs, rows)])
    assert all(verdict_of(v).score == 0.0 for v in verdicts)  # printing instead of returning fails every task
    printed = sum("print(" in c[-1]["content"] for c in half[: len(rows)])
    assert 0 < printed < len(rows) and half == again  # the share is drawn, reproducibly from the seed


def test_rerec_warmup_answer_position_bias():
    warmup_answer = recipe("rerec").warmup_answer
    graph = ItemAttributeGraph.from_edges([("Up", "genre:Comedy"), ("Heat", "genre:Crime"), ("Alien", "genre:Horror")])
    row = {"candidates": ["Heat", "Up", "Alien"], "ground_truth": ["Up"], "query_attributes": ["genre:Comedy"]}
    rng = random.Random(0)
    assert extract_boxed(warmup_answer(row, graph, 0.0, rng)) == ["Up"]
    biased = warmup_answer(row, graph, 1.0, rng)
    assert extract_boxed(biased) == ["Heat"] and "Up: has" in biased  # the reasoning stays right, the answer not
    answers = [extract_boxed(warmup_answer(row, graph, 0.3, rng))[0] for _ in range(400)]
    assert 0.2 < answers.count("Heat") / 400 < 0.4 and set(answers) == {"Heat", "Up"}
