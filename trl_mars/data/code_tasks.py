"""The embedded default task: procedurally generated Python code-generation problems.

Each task has a problem text with the function signature, assert-based unit tests, a HumanEval-style
``check(candidate)`` test, and a reference solution, in three difficulty levels. Generation is
deterministic from a seed, so a user with no internet gets the same train and held-out problems as CI.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
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
        """A dataset row: conversational ``prompt`` (what TRL trainers consume), the reference ``completion``
        (for SFT warm-ups) and every task field."""
        row = asdict(self)
        row.update(prompt=[{"role": "user", "content": self.question}], test=self.test, completion=self.completion)
        return row


def _ints(rng: random.Random, plant: int | None, n: int = 4) -> list[tuple]:
    """Integers; with ``plant`` the first one is a multiple of it, so both branches of a condition are tested."""
    values = [rng.randint(-9, 30) for _ in range(n)]
    if plant:
        values[0] = plant * rng.randint(0, 3)
    return [(v,) for v in values]


def _lists(rng: random.Random, plant: int | None, n: int = 4) -> list[tuple]:
    """Short integer lists; about half of them contain ``plant`` when it is given."""
    out = []
    for _ in range(n):
        lst = [rng.randint(0, 9) for _ in range(rng.randint(0, 6))]
        if plant is not None and rng.random() < 0.5:
            lst.append(plant)
        out.append((lst,))
    return out


def _words(rng: random.Random, plant: int | None, n: int = 4) -> list[tuple]:
    return [("".join(rng.choice("abcde") for _ in range(rng.randint(1, 5))),) for _ in range(n)]


_NUM_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_INPUTS = {"x: int": _ints, "lst: list": _lists, "s: str": _words}


@dataclass(frozen=True)
class _Template:
    """A task family. ``name``, ``returns`` and ``expr`` are format strings over ``k`` (drawn from ``k_range``),
    ``w`` (the number word of k), ``k2`` (drawn from ``k2_range``) and ``c`` (the letter ``"abcde"[k]``)."""

    difficulty: int
    name: str
    args: str
    returns: str
    expr: str
    k_range: tuple[int, int]
    k2_range: tuple[int, int] = (0, 0)
    plant: bool = False  # inputs hit k: lists often contain it, integers include a multiple of it

    def make(self, rng: random.Random) -> tuple[str, str, str, list[tuple]]:
        k, k2 = rng.randint(*self.k_range), rng.randint(*self.k2_range)
        values = {"k": k, "k2": k2, "w": _NUM_WORDS[k % 10], "c": "abcde"[k % 5]}
        inputs = _INPUTS[self.args](rng, k if self.plant else None)
        return self.name.format(**values), self.returns.format(**values), self.expr.format(**values), inputs


TEMPLATES: tuple[_Template, ...] = (
    # difficulty 1: one arithmetic or comparison on an integer
    _Template(1, "add_{k}", "x: int", "returns x plus {k}", "x + {k}", (1, 30)),
    _Template(1, "times_{k}", "x: int", "returns x times {k}", "x * {k}", (2, 12)),
    _Template(1, "minus_{k}", "x: int", "returns x minus {k}", "x - {k}", (1, 30)),
    _Template(
        1,
        "is_multiple_of_{k}",
        "x: int",
        "returns True if x is a multiple of {k}",
        "x % {k} == 0",
        (2, 12),
        plant=True,
    ),
    _Template(1, "greater_than_{k}", "x: int", "returns True if x is greater than {k}", "x > {k}", (0, 20)),
    # difficulty 2: one pass over a list or a string
    _Template(
        2, "count_{w}", "lst: list", "returns how many times {k} occurs in lst", "lst.count({k})", (0, 9), plant=True
    ),
    _Template(
        2,
        "sum_above_{k}",
        "lst: list",
        "returns the sum of the elements of lst greater than {k}",
        "sum(v for v in lst if v > {k})",
        (0, 8),
    ),
    _Template(2, "repeat_{k}", "s: str", "returns the string s repeated {k} times", "s * {k}", (2, 6)),
    _Template(
        2,
        "multiples_of_{k}",
        "lst: list",
        "returns the elements of lst that are multiples of {k}, in order",
        "[v for v in lst if v % {k} == 0]",
        (2, 6),
    ),
    _Template(
        2,
        "max_plus_{k}",
        "lst: list",
        "returns the largest element of lst plus {k}, or {k} if lst is empty",
        "max(lst, default=0) + {k}",
        (1, 20),
    ),
    _Template(
        2,
        "remove_{w}",
        "lst: list",
        "returns lst without any occurrence of {k}",
        "[v for v in lst if v != {k}]",
        (0, 9),
        plant=True,
    ),
    _Template(
        2,
        "starts_with_{c}",
        "s: str",
        "returns True if the string s starts with the letter {c}",
        "s.startswith('{c}')",
        (0, 4),
    ),
    # difficulty 3: two operations combined
    _Template(
        3,
        "buzz_{k}",
        "x: int",
        "returns 'buzz' if x is a multiple of {k}, else x as a string",
        "'buzz' if x % {k} == 0 else str(x)",
        (2, 12),
    ),
    _Template(
        3,
        "clamp_{k}_{k2}",
        "x: int",
        "returns x limited to the range {k} to {k2}",
        "min(max(x, {k}), {k2})",
        (0, 9),
        (10, 19),
    ),
    _Template(
        3,
        "power_sum_{k}",
        "lst: list",
        "returns the sum of the elements of lst raised to the power {k}",
        "sum(v ** {k} for v in lst)",
        (2, 3),
    ),
    _Template(
        3,
        "shift_reverse_{k}",
        "lst: list",
        "returns lst reversed with {k} added to every element",
        "[v + {k} for v in reversed(lst)]",
        (1, 20),
    ),
)

DIFFICULTIES = (1, 2, 3)


def _build(template: _Template, rng: random.Random, index: int) -> CodeTask:
    name, description, expr, inputs = template.make(rng)
    returns = " -> bool" if "returns True" in description else ""
    signature = f"def {name}({template.args}){returns}:"
    solution = f"{signature}\n    return {expr}\n"
    namespace: dict = {}
    exec(solution, namespace)  # our own generated reference, never model output
    fn = namespace[name]
    tests = list(dict.fromkeys(f"assert {name}({', '.join(map(repr, a))}) == {fn(*a)!r}" for a in inputs))
    question = f"Write a Python function `{name}` that {description}.\n\n```python\n{signature}\n```"
    return CodeTask(f"mars/{index}", template.difficulty, question, name, signature, solution, tests)


def generate_tasks(num_tasks: int, seed: int = 0, difficulties: Iterable[int] = DIFFICULTIES) -> list[CodeTask]:
    """``num_tasks`` distinct tasks (by question text), deterministic in ``seed``, cycling over ``difficulties``.

    A level whose distinct questions run out (50 misses in a row) drops out of the cycle; asking for more
    tasks than all levels hold raises."""
    levels = sorted(set(difficulties))
    if not levels or any(d not in DIFFICULTIES for d in levels):
        raise ValueError(f"difficulties must be a non-empty subset of {DIFFICULTIES}, got {levels}")
    rng = random.Random(seed)
    tasks: dict[str, CodeTask] = {}
    misses = dict.fromkeys(levels, 0)
    turn = 0
    while len(tasks) < num_tasks:
        open_levels = [lvl for lvl in levels if misses[lvl] < 50]
        if not open_levels:
            raise ValueError(f"only {len(tasks)} distinct tasks exist for difficulties {levels}; asked {num_tasks}")
        level = open_levels[turn % len(open_levels)]
        task = _build(rng.choice([t for t in TEMPLATES if t.difficulty == level]), rng, len(tasks))
        if task.question in tasks:
            misses[level] += 1
            continue
        tasks[task.question], misses[level] = task, 0
        turn += 1
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
