"""The embedded default task: procedurally generated Python code-generation problems.

Each task has a problem text with the function signature, assert-based unit tests, a HumanEval-style
``check(candidate)`` test, and a reference solution, in three difficulty levels. Generation is
deterministic from a seed, so a user with no internet gets the same train and held-out problems as CI.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from datasets import Dataset


@dataclass(frozen=True)
class CodeTask:
    """One problem in the format of the code benchmarks (HumanEval fields plus assert-list tests)."""

    task_id: str
    difficulty: int
    question: str
    entry_point: str
    signature: str
    canonical_solution: str
    tests: list[str] = field(default_factory=list)

    @property
    def test(self) -> str:
        """HumanEval-style test code: ``check(candidate)`` running every assert on ``candidate``."""
        body = "\n".join("    " + t.replace(f"{self.entry_point}(", "candidate(") for t in self.tests)
        return f"def check(candidate):\n{body}\n"

    @property
    def completion(self) -> str:
        """The reference answer as a model should write it: one fenced python block."""
        return f"```python\n{self.canonical_solution}```"

    def to_row(self) -> dict:
        """A dataset row: conversational ``prompt`` (what TRL trainers consume) plus every task field."""
        row = asdict(self)
        row.update(prompt=[{"role": "user", "content": self.question}], test=self.test)
        return row


Spec = tuple[str, str, str, str, list[tuple]]
"""(function name, argument list, what it returns, reference expression, test inputs)."""


def _ints(rng: random.Random, n: int = 4, lo: int = -9, hi: int = 30) -> list[tuple]:
    return [(rng.randint(lo, hi),) for _ in range(n)]


def _lists(rng: random.Random, n: int = 4, plant: int | None = None) -> list[tuple]:
    """Short integer lists; with ``plant``, about half of them contain that value."""
    out = []
    for _ in range(n):
        lst = [rng.randint(0, 9) for _ in range(rng.randint(0, 6))]
        if plant is not None and rng.random() < 0.5:
            lst.append(plant)
        out.append((lst,))
    return out


def _words(rng: random.Random, n: int = 4) -> list[tuple]:
    return [("".join(rng.choice("abcde") for _ in range(rng.randint(1, 5))),) for _ in range(n)]


_NUM_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES: dict[int, list[Callable[[random.Random], Spec]]] = {1: [], 2: [], 3: []}


def _template(difficulty: int):
    def register(make: Callable[[random.Random], Spec]) -> Callable[[random.Random], Spec]:
        TEMPLATES[difficulty].append(make)
        return make

    return register


@_template(1)
def _add(r: random.Random) -> Spec:
    k = r.randint(1, 30)
    return f"add_{k}", "x: int", f"returns x plus {k}", f"x + {k}", _ints(r)


@_template(1)
def _times(r: random.Random) -> Spec:
    k = r.randint(2, 12)
    return f"times_{k}", "x: int", f"returns x times {k}", f"x * {k}", _ints(r)


@_template(1)
def _minus(r: random.Random) -> Spec:
    k = r.randint(1, 30)
    return f"minus_{k}", "x: int", f"returns x minus {k}", f"x - {k}", _ints(r)


@_template(1)
def _is_multiple(r: random.Random) -> Spec:
    k = r.randint(2, 12)
    return f"is_multiple_of_{k}", "x: int", f"returns True if x is a multiple of {k}", f"x % {k} == 0", _ints(r)


@_template(1)
def _greater(r: random.Random) -> Spec:
    k = r.randint(0, 20)
    return f"greater_than_{k}", "x: int", f"returns True if x is greater than {k}", f"x > {k}", _ints(r)


@_template(2)
def _count(r: random.Random) -> Spec:
    k = r.randint(0, 9)
    return (
        f"count_{_NUM_WORDS[k]}",
        "lst: list",
        f"returns how many times {k} occurs in lst",
        f"lst.count({k})",
        _lists(r, k),
    )


@_template(2)
def _sum_above(r: random.Random) -> Spec:
    k = r.randint(0, 8)
    desc = f"returns the sum of the elements of lst greater than {k}"
    return f"sum_above_{k}", "lst: list", desc, f"sum(v for v in lst if v > {k})", _lists(r)


@_template(2)
def _repeat(r: random.Random) -> Spec:
    k = r.randint(2, 6)
    return f"repeat_{k}", "s: str", f"returns the string s repeated {k} times", f"s * {k}", _words(r)


@_template(2)
def _multiples(r: random.Random) -> Spec:
    k = r.randint(2, 6)
    desc = f"returns the elements of lst that are multiples of {k}, in order"
    return f"multiples_of_{k}", "lst: list", desc, f"[v for v in lst if v % {k} == 0]", _lists(r)


@_template(2)
def _max_plus(r: random.Random) -> Spec:
    k = r.randint(1, 20)
    desc = f"returns the largest element of lst plus {k}, or {k} if lst is empty"
    return f"max_plus_{k}", "lst: list", desc, f"max(lst, default=0) + {k}", _lists(r)


@_template(2)
def _remove(r: random.Random) -> Spec:
    k = r.randint(0, 9)
    desc = f"returns lst without any occurrence of {k}"
    return f"remove_{_NUM_WORDS[k]}", "lst: list", desc, f"[v for v in lst if v != {k}]", _lists(r, k)


@_template(2)
def _starts_with(r: random.Random) -> Spec:
    c = r.choice("abcde")
    desc = f"returns True if the string s starts with the letter {c}"
    return f"starts_with_{c}", "s: str", desc, f"s.startswith({c!r})", _words(r)


@_template(3)
def _buzz(r: random.Random) -> Spec:
    k = r.randint(2, 12)
    desc = f"returns 'buzz' if x is a multiple of {k}, else x as a string"
    return f"buzz_{k}", "x: int", desc, f"'buzz' if x % {k} == 0 else str(x)", _ints(r)


@_template(3)
def _clamp(r: random.Random) -> Spec:
    lo, hi = r.randint(0, 9), r.randint(10, 19)
    return (
        f"clamp_{lo}_{hi}",
        "x: int",
        f"returns x limited to the range {lo} to {hi}",
        f"min(max(x, {lo}), {hi})",
        _ints(r),
    )


@_template(3)
def _power_sum(r: random.Random) -> Spec:
    k = r.randint(2, 3)
    desc = f"returns the sum of the elements of lst raised to the power {k}"
    return f"power_sum_{k}", "lst: list", desc, f"sum(v ** {k} for v in lst)", _lists(r)


@_template(3)
def _shift_reverse(r: random.Random) -> Spec:
    k = r.randint(1, 20)
    desc = f"returns lst reversed with {k} added to every element"
    return f"shift_reverse_{k}", "lst: list", desc, f"[v + {k} for v in reversed(lst)]", _lists(r)


DIFFICULTIES = (1, 2, 3)


def _build(make: Callable[[random.Random], Spec], difficulty: int, rng: random.Random, index: int) -> CodeTask:
    name, args, description, expr, inputs = make(rng)
    returns = " -> bool" if "returns True" in description else ""
    signature = f"def {name}({args}){returns}:"
    solution = f"{signature}\n    return {expr}\n"
    namespace: dict = {}
    exec(solution, namespace)  # our own generated reference, never model output
    fn = namespace[name]
    tests = list(dict.fromkeys(f"assert {name}({', '.join(map(repr, a))}) == {fn(*a)!r}" for a in inputs))
    question = f"Write a Python function `{name}` that {description}.\n\n```python\n{signature}\n```"
    return CodeTask(f"mars/{index}", difficulty, question, name, signature, solution, tests)


def generate_tasks(num_tasks: int, seed: int = 0, difficulties: Iterable[int] = DIFFICULTIES) -> list[CodeTask]:
    """``num_tasks`` distinct tasks (by question text), deterministic in ``seed``, cycling over ``difficulties``."""
    levels = sorted(set(difficulties))
    if not levels or any(d not in DIFFICULTIES for d in levels):
        raise ValueError(f"difficulties must be a non-empty subset of {DIFFICULTIES}, got {levels}")
    rng = random.Random(seed)
    tasks: dict[str, CodeTask] = {}
    attempts = 0
    while len(tasks) < num_tasks:
        attempts += 1
        if attempts > 50 * num_tasks + 100:
            raise ValueError(f"only {len(tasks)} distinct tasks exist for difficulties {levels}; asked {num_tasks}")
        level = levels[len(tasks) % len(levels)]
        task = _build(rng.choice(TEMPLATES[level]), level, rng, len(tasks))
        tasks.setdefault(task.question, task)
    return list(tasks.values())


def code_task_splits(
    num_train: int, num_test: int, seed: int = 0, difficulties: Iterable[int] = DIFFICULTIES
) -> tuple[Dataset, Dataset]:
    """Disjoint train and held-out datasets (no question appears in both)."""
    tasks = generate_tasks(num_train + num_test, seed=seed, difficulties=difficulties)
    rng = random.Random(seed + 1)
    rng.shuffle(tasks)
    train, test = tasks[:num_train], tasks[num_train:]
    return (Dataset.from_list([t.to_row() for t in train]), Dataset.from_list([t.to_row() for t in test]))
