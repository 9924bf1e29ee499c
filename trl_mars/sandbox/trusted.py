"""Verdicts decided on the trusted side: split an assert into what the program computes and what the test checks.

For ``assert CONDITION`` the parent finds the *holes*: the smallest sub-expressions that need the program
(a call of ``candidate`` or of a function the program defines, a name the program binds). Only the holes go
into the sandbox; the child evaluates them and sends their values back through the strict codec
(``values``). The parent then evaluates ``CONDITION`` itself, the holes replaced by the decoded values, with
pristine builtins and its own, unpatched modules. So ``assert f(x) == y``, ``assert f(x)``,
``assert not f(x)``, ``assert math.isclose(f(x), y)``, ``assert abs(f(x) - y) < tol``,
``assert set(f(x)) == {...}`` and their mixes are decided by code the program never touched, on values it
cannot give a custom ``__eq__``, ``__bool__`` or ``__sub__``; the expected value never enters the sandbox.

Between a hole and the assert's root only operators, subscripts, displays, non-underscore attributes,
calls of ``PARENT_CALLS`` builtins and calls into ``PARENT_MODULES`` may stand; names that the test's
own statements bind must be computable in the parent (assignments of test-only values, imports of
``PARENT_MODULES``). Anything else (loops, helpers the test defines, values derived from the program, a
comparison of the program's values with each other) is not split: such a test runs inside the sandbox and
its verdict is marked ``trusted=False``.

>>> split = split_assert("assert abs(candidate(2.0) - 1.5) < 1e-6", "", "f")
>>> split.holes, split.judge.expr
(('candidate(2.0)',), 'abs(__hole_0__ - 1.5) < 1e-06')
>>> decide(split.judge, [1.5]).passed, decide(split.judge, [2.0]).passed
(True, False)
>>> split_assert("for i in range(3):\\n    assert f(i) == i", "", "f") is None
True
"""

from __future__ import annotations

import ast
import builtins
import functools
from dataclasses import dataclass

from trl_mars.sandbox.harness import PRISTINE_BUILTINS

FIELD_CAP = 2000
# Modules the parent imports itself (its own, unpatched copies) to evaluate a test's condition.
PARENT_MODULES = frozenset({
    "bisect", "cmath", "collections", "copy", "datetime", "decimal", "fractions", "functools", "heapq",
    "itertools", "json", "math", "operator", "re", "statistics", "string", "typing",
})  # fmt: skip
# Builtins the parent may apply to values the program returned.
PARENT_CALLS = frozenset({
    "abs", "all", "any", "bool", "chr", "complex", "dict", "divmod", "enumerate", "float", "frozenset", "int",
    "isinstance", "len", "list", "max", "min", "ord", "repr", "reversed", "round", "set", "sorted", "str",
    "sum", "tuple", "type", "zip",
})  # fmt: skip
# One-argument builtin conversions that stay inside a hole (evaluated in the child, with pristine builtins),
# so that iterators, generators and the program's own objects are converted there: ``sorted(f(x)) == [...]``,
# ``str(f(x)) == "..."``. This grants a program nothing: it could have returned the converted value itself.
MATERIALIZE = frozenset({"bool", "float", "frozenset", "int", "len", "list", "repr", "set", "sorted", "str", "tuple"})
BUILTIN_NAMES = frozenset(dir(builtins))
HOLE = "__hole_{}__"
_SLOW_OPS = (ast.Pow, ast.LShift)  # could turn a returned int into a huge one in the parent


class NotSplittable(Exception):
    """The test's shape is not one the parent can decide; it runs inside the sandbox."""


@dataclass(frozen=True)
class Judge:
    """The parent's half of a split test: ``setup`` (test statements the condition needs, parent-safe),
    ``expr`` (the condition with ``__hole_i__`` names), ``expected`` (the hole-free side of a top-level
    ``==`` or of ``math.isclose``, shown on failure) and the assert's constant ``message``."""

    setup: str
    expr: str
    expected: str | None = None
    message: str = ""


@dataclass(frozen=True)
class Split:
    """``holes``: expressions the child evaluates after running ``prefix`` (the test statements they need)."""

    holes: tuple[str, ...]
    prefix: str
    judge: Judge
    input: str | None


@dataclass
class Decision:
    passed: bool
    actual: str | None = None
    expected: str | None = None
    error_type: str | None = None
    message: str = ""


def free_names(node: ast.AST) -> set[str]:
    """Names read in ``node`` and not bound inside it (comprehension targets, lambda arguments)."""
    loads, stores = set(), set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            (loads if isinstance(n.ctx, ast.Load) else stores).add(n.id)
        elif isinstance(n, ast.arg):
            stores.add(n.arg)
    return loads - stores


def bound_names(stmt: ast.stmt) -> set[str]:
    """Names a statement binds at its own level."""
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in stmt.names}
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {stmt.name}
    return {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}


class Scope:
    """Names bound by a test's own code, in order: ``parent`` maps each parent-computable name to the
    statement defining it (test-only values, imports of ``PARENT_MODULES``); ``child`` holds the names
    only the sandbox can compute (helpers, values derived from the program, other imports)."""

    def __init__(self, entry_point: str | None, base: Scope | None = None):
        self.entry_point = entry_point
        self.parent: dict[str, ast.stmt] = dict(base.parent) if base else {}
        self.child: set[str] = set(base.child) if base else set()

    def untrusted(self, name: str) -> bool:
        """A name the program provides: not bound by the test, not a builtin (the entry point always is)."""
        if name in self.parent or name in self.child:
            return False
        return name not in BUILTIN_NAMES or name == self.entry_point

    def parent_safe(self, stmt: ast.stmt) -> bool:
        if isinstance(stmt, ast.Import):
            return all(a.name.split(".")[0] in PARENT_MODULES for a in stmt.names)
        if isinstance(stmt, ast.ImportFrom):
            return stmt.level == 0 and (stmt.module or "").split(".")[0] in PARENT_MODULES
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            plain = all(isinstance(n, (ast.Name, ast.Tuple, ast.Starred)) for t in targets for n in ast.walk(t)
                        if not isinstance(n, ast.expr_context))  # fmt: skip
            return plain and all(n in self.parent or not self.untrusted(n) and n not in self.child
                                 for n in free_names(stmt.value))  # fmt: skip
        return False

    def add(self, stmt: ast.stmt) -> None:
        names = bound_names(stmt)
        safe = self.parent_safe(stmt)
        for name in names:
            if safe:
                self.parent[name] = stmt
                self.child.discard(name)
            else:
                self.parent.pop(name, None)
                self.child.add(name)


def _dependencies(stmt: ast.stmt) -> set[str]:
    """Names a statement reads: its value's free names, or for a def/class everything its body reads."""
    if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        return free_names(stmt.value) if stmt.value is not None else set()
    return free_names(stmt)


def child_setup(setup: str, codes: tuple[str, ...]) -> str:
    """The statements of the test setup that the sandbox needs to run ``codes`` (holes and prefixes of
    split tests): test values that only the parent's conditions use (expected values) stay out of it."""
    try:
        body = ast.parse(setup).body
        names = set().union(*(free_names(ast.parse(c)) for c in codes)) if codes else set()
    except SyntaxError:
        return setup
    return "\n".join(ast.unparse(s) for s in _closure(names, body))


def _closure(names: set[str], stmts: list[ast.stmt], defs: dict[str, ast.stmt] | None = None) -> list[ast.stmt]:
    """The statements of ``stmts`` needed (transitively) to bind ``names``, in their original order."""
    needed: set[int] = set()
    todo = set(names)
    while todo:
        name = todo.pop()
        for i in range(len(stmts) - 1, -1, -1):
            if name in bound_names(stmts[i]) and (defs is None or defs.get(name) is stmts[i]):
                if i not in needed:
                    needed.add(i)
                    todo |= _dependencies(stmts[i])
                break
    return [stmts[i] for i in sorted(needed)]


class _Splitter:
    def __init__(self, scope: Scope):
        self.scope = scope
        self.holes: list[ast.expr] = []
        self._free: dict[int, set[str]] = {}
        self._parts: dict[int, tuple[set[str], set[str]]] = {}

    def free(self, node: ast.AST) -> set[str]:
        """``free_names`` of every node of the condition, computed once (the walk asks at every level)."""
        if id(node) not in self._free:
            loads, stores = set(), set()
            if isinstance(node, ast.Name):
                (loads if isinstance(node.ctx, ast.Load) else stores).add(node.id)
            elif isinstance(node, ast.arg):
                stores.add(node.arg)
            for child in ast.iter_child_nodes(node):
                self.free(child)
                child_loads, child_stores = self._parts[id(child)]
                loads |= child_loads
                stores |= child_stores
            self._parts[id(node)] = (loads, stores)
            self._free[id(node)] = loads - stores
        return self._free[id(node)]

    def untrusted(self, node: ast.AST) -> bool:
        return any(self.scope.untrusted(n) for n in self.free(node))

    def hole(self, node: ast.expr) -> ast.expr:
        self.holes.append(node)
        return ast.Name(HOLE.format(len(self.holes) - 1), ast.Load())

    def parent_call(self, func: ast.expr) -> bool:
        if isinstance(func, ast.Name):  # a builtin, or a function imported from PARENT_MODULES
            if isinstance(self.scope.parent.get(func.id), ast.ImportFrom):
                return True
            return func.id in PARENT_CALLS and func.id not in self.scope.parent and func.id not in self.scope.child
        return (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and isinstance(self.scope.parent.get(func.value.id), (ast.Import, ast.ImportFrom))
            and not func.attr.startswith("_")
        )

    def walk(self, node: ast.expr) -> ast.expr:
        if not self.untrusted(node):
            if self.free(node) & self.scope.child:
                raise NotSplittable("the condition uses a value only the sandbox can compute")
            return node
        if isinstance(node, ast.Name):
            return self.hole(node)
        if isinstance(node, ast.Call):
            func = node.func
            method = isinstance(func, ast.Attribute) and not func.attr.startswith("_")
            if self.untrusted(func):
                if isinstance(func, ast.Attribute) and func.attr.startswith("_"):
                    raise NotSplittable("a private attribute of the program's value")
                if not method or isinstance(func.value, ast.Name):
                    return self.hole(node)  # f(x), obj.method(x), f(x)(y): the program computes it all
                func.value = self.walk(func.value)  # f(x).strip(): the hole is f(x)
            elif (
                isinstance(func, ast.Name)
                and func.id in MATERIALIZE
                and len(node.args) == 1
                and not node.keywords
                and isinstance(node.args[0], ast.Call)
                and self.untrusted(node.args[0].func)
            ):
                return self.hole(node)
            elif not (self.parent_call(func) or method and isinstance(func.value, ast.Constant)):
                # ", ".join(f(x)) is fine; methods of the test's own values could change them between checks
                raise NotSplittable(f"call of {ast.unparse(func)} on the program's values")
            node.args = [self.walk(a) for a in node.args]
            for keyword in node.keywords:
                keyword.value = self.walk(keyword.value)
            return node
        if isinstance(node, ast.Attribute):  # f(x).size: read where the program's object lives
            if node.attr.startswith("_"):
                raise NotSplittable("a private attribute of the program's value")
            return self.hole(node)
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(self.untrusted(a) and self.untrusted(b) for a, b in zip(sides, sides[1:])):
                # the program's values against the program's values (f(x) == Point(1, 2), f(1) == f(2)):
                # the program defines that equality; nothing here for the parent to verify
                raise NotSplittable("both sides of a comparison come from the program")
            node.left = self.walk(node.left)
            node.comparators = [self.walk(c) for c in node.comparators]
            return node
        if isinstance(node, ast.BoolOp):
            node.values = [self.walk(v) for v in node.values]
            return node
        if isinstance(node, ast.UnaryOp):
            node.operand = self.walk(node.operand)
            return node
        if isinstance(node, ast.BinOp) and not isinstance(node.op, _SLOW_OPS):
            node.left, node.right = self.walk(node.left), self.walk(node.right)
            return node
        if isinstance(node, ast.Subscript):
            node.value, node.slice = self.walk(node.value), self.walk(node.slice)
            return node
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            node.elts = [self.walk(e) for e in node.elts]
            return node
        if isinstance(node, ast.Slice):
            for part in ("lower", "upper", "step"):
                if getattr(node, part) is not None:
                    setattr(node, part, self.walk(getattr(node, part)))
            return node
        raise NotSplittable(f"{type(node).__name__} over the program's values")


def _expected_side(test: ast.expr, holes: int) -> ast.expr | None:
    """The hole-free side of ``A == B``, or ``math.isclose``'s second argument, for failure reports."""
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
        sides = [test.left, test.comparators[0]]
    elif isinstance(test, ast.Call) and isinstance(test.func, ast.Attribute) and test.func.attr == "isclose":
        sides = test.args[:2]
    else:
        return None
    free = [s for s in sides if not any(n.startswith("__hole_") for n in free_names(s))]
    return free[0] if len(free) == 1 and holes else None


@functools.lru_cache(maxsize=1024)
def scope_of(setup: str, entry_point: str | None) -> tuple[Scope, list[ast.stmt]]:
    """The scope of a check's test setup code (``SyntaxError`` propagates); shared, not to be changed."""
    scope = Scope(entry_point)
    body = ast.parse(setup).body
    for stmt in body:
        scope.add(stmt)
    return scope, body


def _unpacked(stmt: ast.stmt) -> list[ast.stmt]:
    """``x, expected = 3, 9`` as two assignments, so the sandbox can get ``x`` without ``expected``."""
    if (
        isinstance(stmt, ast.Assign)
        and len(stmt.targets) == 1
        and isinstance(stmt.targets[0], ast.Tuple)
        and isinstance(stmt.value, ast.Tuple)
        and len(stmt.targets[0].elts) == len(stmt.value.elts)
        and all(isinstance(t, ast.Name) for t in stmt.targets[0].elts)
        and not any(isinstance(v, ast.Starred) for v in stmt.value.elts)
        and not set().union(*map(free_names, stmt.value.elts)) & {t.id for t in stmt.targets[0].elts}
    ):
        return [ast.Assign([t], v, lineno=0) for t, v in zip(stmt.targets[0].elts, stmt.value.elts)]
    return [stmt]


@functools.lru_cache(maxsize=1 << 14)
def split_assert(snippet: str, setup: str, entry_point: str | None) -> Split | None:
    """The trusted split of a test snippet (statements, then one ``assert``), or None when its shape
    must run inside the sandbox."""
    try:
        scope, setup_body = scope_of(setup, entry_point)
        body = ast.parse(snippet).body
    except SyntaxError:
        return None
    if not body or not isinstance(body[-1], ast.Assert):
        return None
    prefix, last = [s for stmt in body[:-1] for s in _unpacked(stmt)], body[-1]
    local = Scope(entry_point, scope)
    for stmt in prefix:
        local.add(stmt)
    original = ast.unparse(last.test)
    splitter = _Splitter(local)
    try:
        condition = splitter.walk(ast.parse(original, mode="eval").body)
    except NotSplittable:
        return None
    if not splitter.holes:
        return None  # nothing of the program's is checked: leave it to the sandbox as written
    expected = _expected_side(condition, len(splitter.holes))
    needed = free_names(condition) | (free_names(expected) if expected is not None else set())
    parent_stmts = _closure(needed, setup_body + prefix, local.parent)
    hole_names = set().union(*(free_names(h) for h in splitter.holes))
    child_stmts = _closure(hole_names, prefix)
    first = splitter.holes[0]
    call_input = (
        ", ".join(ast.unparse(a) for a in [*first.args, *first.keywords]) if isinstance(first, ast.Call) else None
    )
    message = last.msg.value if isinstance(last.msg, ast.Constant) and isinstance(last.msg.value, str) else ""
    judge = Judge(
        setup="\n".join(ast.unparse(s) for s in parent_stmts),
        expr=ast.unparse(condition),
        expected=ast.unparse(expected) if expected is not None else None,
        message=message,
    )
    holes = tuple(ast.unparse(h) for h in splitter.holes)
    return Split(holes, "\n".join(ast.unparse(s) for s in child_stmts), judge, call_input)


@functools.lru_cache(maxsize=1 << 14)
def _code(source: str, mode: str):
    return compile(source, "<judge>", mode)


@functools.lru_cache(maxsize=4096)
def _namespace(setup: str) -> dict:
    """The test values a condition needs, computed once per process (the condition never changes them:
    only operators, builtins, functions of the allowed modules and methods of literals touch them)."""
    ns = {"__builtins__": PRISTINE_BUILTINS}
    if setup:
        exec(_code(setup, "exec"), ns)
    return ns


def show(value) -> str:
    """``repr`` for a failure report, capped at ``FIELD_CAP`` characters; never raises."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's limit on decimal digits
        return f"<an int of {value.bit_length()} bits>" if type(value) is int else "<unrepresentable>"
    return text if len(text) <= FIELD_CAP else text[: FIELD_CAP - 3] + "..."


def decide(judge: Judge, values: list) -> Decision:
    """Evaluate the condition in this (trusted) process on the decoded hole values; on failure, also show
    the values and the expected side."""
    try:
        ns = dict(_namespace(judge.setup))
    except Exception as e:  # noqa: BLE001 - the test's own code is broken; report it, never raise
        return Decision(False, error_type=type(e).__name__, message=f"the test's own code failed: {e}")
    for i, value in enumerate(values):
        ns[HOLE.format(i)] = value
    try:
        if eval(_code(judge.expr, "eval"), ns):
            return Decision(True)
        error_type, message = "AssertionError", judge.message
    except Exception as e:  # noqa: BLE001 - e.g. abs() of a returned str: the program's error
        error_type, message = type(e).__name__, str(e)[:FIELD_CAP]
    try:
        expected = show(eval(_code(judge.expected, "eval"), ns)) if judge.expected is not None else None
    except Exception:  # noqa: BLE001 - only for the report
        expected = None
    return Decision(False, ", ".join(show(v) for v in values), expected, error_type, message)


def same_value(actual, expected) -> bool:
    """Call-based comparison (LiveCodeBench functional problems): tuples are compared as lists, then ``==``.

    >>> same_value((1, [2, (3,)]), [1, [2, [3]]]), same_value(1.0, 1), same_value("1", 1)
    (True, True, False)
    """
    return _listify(actual) == expected


def _listify(value):
    if type(value) in (list, tuple):
        return [_listify(v) for v in value]
    if type(value) is dict:
        return {k: _listify(v) for k, v in value.items()}
    return value


__all__ = ["Decision", "Judge", "Split", "decide", "same_value", "split_assert"]
