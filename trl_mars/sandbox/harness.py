"""Code that runs inside the sandboxed child: load the program, run each test, stream one record per step
(and ``compiled_tests``, which the parent runs: the tests' code compiled on the trusted side).

Tests split on the trusted side (``trusted``) and call-based tests only evaluate expressions here and send
their values through the strict codec (``values.encode``); the parent decides those verdicts, so a
forged record can at most claim a value. The tests' own code (setup, prefixes, unsplit tests) runs in a
test namespace with pristine builtins, never in the program's globals.

Records are appended to an fd (a memfd the zygote reads) as JSON arrays of plain str/int/float/None, one per
line, starting with a per-child nonce, and are parsed with ``protocol.loads`` (then type-checked) by the zygote.
They are written in one ``write`` per test: the end of test i and the start of test i+1 together (the start
of a test is always written before it runs, so the zygote knows which test to blame when it hangs). Every
function/class the harness relies on after the untrusted program ran is captured in locals first, so
monkey-patching builtins, ``os``, ``sys`` or this module cannot change a verdict; tests run with the builtins
as the zygote found them. ``assert`` statements raise the real AssertionError regardless of what the name is
bound to. A child that exits without reporting a test (``os._exit``, a signal; ``sys.exit`` inside a test
is an error) gets ``crashed`` from the zygote.
"""

from __future__ import annotations

import builtins
import functools
import io
import json
import marshal
import os
import sys
import traceback
from time import perf_counter

from trl_mars.sandbox.values import Unencodable, encode

FIELD_CAP = 2000  # characters kept of a message / repr / traceback
# The builtins as the interpreter made them, copied when this module is imported (in the zygote: before any
# program ran). A check's tests use this dict itself, so a fresh child need not touch every builtin's page
# to copy it; a test whose own code runs in the child gets a copy of its own.
PRISTINE_BUILTINS = dict(builtins.__dict__)
# Where an unsplit ``assert a == b`` test (rewritten by ``cases``) keeps ``a`` and ``b`` for the failure report.
ACTUAL, EXPECTED = "__sandbox_actual__", "__sandbox_expected__"


class CappedSink(io.RawIOBase):
    """A writable raw stream that keeps the first ``cap`` bytes (optionally forwarding them to ``fd``) and
    silently drops the rest, so printing gigabytes neither fills memory nor blocks."""

    def __init__(self, cap: int, fd: int | None = None, write=os.write):
        super().__init__()
        self.cap, self.fd, self._write = cap, fd, write
        self.kept, self.total = bytearray(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        n = len(data)
        room = self.cap - len(self.kept)
        if room > 0:
            chunk = bytes(data[:room])
            self.kept += chunk
            if self.fd is not None:
                self._write(self.fd, chunk)
        self.total += n
        return n


def text_stream(sink: CappedSink) -> io.TextIOWrapper:
    return io.TextIOWrapper(sink, encoding="utf-8", errors="replace", write_through=True)


class Streams:
    """A check process's ``sys.stdout``/``sys.stderr`` (the first ``output_cap`` bytes kept and forwarded to
    fds 1 and 2) and ``sys.stdin`` (fd 0, /dev/null in the child). Made once by the zygote, which never
    uses them, so each forked child starts with fresh copies instead of building its own."""

    def __init__(self, output_cap: int):
        self.stdout_sink = CappedSink(output_cap, 1)
        self.stdout, self.stderr = text_stream(self.stdout_sink), text_stream(CappedSink(output_cap, 2))
        self.stdin = io.TextIOWrapper(io.FileIO(0, closefd=False))


def compile_test(i: int, test: dict, compile_=compile):
    """What test ``i`` of a wire check compiles to: (prefix, holes) for split asserts, its code for an unsplit
    test, None for a call-based one, or the exception compiling raised (which becomes the test's verdict).
    Every ``compile`` here is ``dont_inherit``: code in the sandbox gets the plain interpreter's semantics, not
    this module's ``from __future__`` imports."""
    name = f"<test {i}>"
    try:
        if test["holes"]:
            holes = [compile_(h, name, "eval", dont_inherit=True) for h in test["holes"]]
            return compile_(test["prefix"], name, "exec", dont_inherit=True), holes
        return None if test["call"] is not None else compile_(test["source"], name, "exec", dont_inherit=True)
    except BaseException as e:  # noqa: BLE001 - a test that does not compile fails alone
        return e


@functools.lru_cache(maxsize=512)  # the problems of a few training steps; big literal inputs make big entries
def _compiled(tests: tuple, prelude: str, setup: str) -> bytes | None:
    codes = [
        compile_test(i, {"holes": h, "prefix": p, "source": s, "call": c}) for i, (h, p, s, c) in enumerate(tests)
    ]
    if any(isinstance(c, BaseException) for c in codes):
        return None
    try:
        prelude_code = compile(prelude, "<prelude>", "exec", dont_inherit=True)
        setup_code = compile(setup, "<setup>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return None
    return marshal.dumps((codes, prelude_code, setup_code))


def compiled_tests(check: dict) -> bytes | None:
    """The code of a wire check's tests, prelude and setup, compiled here (on the trusted side: that code comes
    from the tests, and is already in the wire as source) and marshalled, memoized on that source; a
    check process loads it instead of compiling it again. None for stdin/stdout checks and when something
    does not compile (the check process then compiles, and reports the error, as it would anyway)."""
    if check["stdio"]:
        return None
    tests = tuple((tuple(t["holes"]), t["prefix"], t["source"], t["call"]) for t in check["tests"])
    return _compiled(tests, check["prelude"], check["setup"])


def run_check(check: dict, start: int, fd: int, nonce: str, streams: Streams) -> None:
    """Run tests ``start..`` of ``check`` (a ``Check.wire()``), reporting on ``fd``; never returns."""
    exit_ = os._exit  # captured before any untrusted code runs (a program may replace ``os._exit``)
    try:
        run_tests(check, start, fd, nonce, streams)
    except BaseException:
        exit_(70)  # a harness failure: the zygote reports the tests not reported as crashed
    exit_(0)


def run_tests(check: dict, start: int, fd: int, nonce: str, streams: Streams) -> None:
    """What ``run_check`` runs: the program, then tests ``start..``, one record per step on ``fd``; returns
    when the report is complete (or the program failed to load). Sets ``sys.stdout``/``stderr``/``stdin``
    to ``streams``."""
    # Trusted references, captured before any untrusted code runs.
    exec_, eval_, compile_, repr_, str_, type_, isinstance_ = exec, eval, compile, repr, str, type, isinstance
    getattr_, json_loads, encode_, unencodable = getattr, json.loads, encode, Unencodable
    quote, int_repr, float_repr, join = json.encoder.encode_basestring_ascii, int.__repr__, float.__repr__, ",".join
    base_exc, assertion, memory, system_exit = BaseException, AssertionError, MemoryError, SystemExit
    write, open_fd, dup2, close, open_ = os.write, os.open, os.dup2, os.close, open
    sink_cls, wrap, wrap_in, file_io, clock = CappedSink, text_stream, io.TextIOWrapper, io.FileIO, perf_counter

    str_concat, format_exc, marshal_loads = str.__add__, traceback.format_exception, marshal.loads
    harness_file = run_check.__code__.co_filename
    clean_builtins = PRISTINE_BUILTINS
    tests, stdio = check["tests"], check["stdio"]

    def text(obj, cap=FIELD_CAP):
        try:
            s = obj if type_(obj) is str_ else str_(obj)
            return str_concat("", s)[:cap]
        except base_exc:
            return "<unprintable>"

    def safe_repr(obj):
        try:
            return text(repr_(obj))
        except base_exc:
            return "<unrepresentable>"

    pending = []

    def field(x):
        kind = type_(x)
        return quote(x) if kind is str_ else "null" if x is None else int_repr(x) if kind is int else float_repr(x)

    def send(*record):
        """Queue one record (a JSON array: fields are str, int, finite float or None); ``flush`` writes them."""
        pending.append(str_concat(str_concat("[", join([field(x) for x in record])), "]\n"))

    def flush():
        data = "".join(pending).encode()
        pending.clear()
        while data:
            data = data[write(fd, data) :]

    def classify(exc):
        status = "failed" if isinstance_(exc, assertion) else "memory" if isinstance_(exc, memory) else "error"
        try:
            frames = exc.__traceback__
            while frames is not None and frames.tb_frame.f_code.co_filename == harness_file:
                frames = frames.tb_next  # agents see their code's frames, never the sandbox's own
            tb = "".join(format_exc(type_(exc), exc, frames))
        except base_exc:
            tb = ""
        return status, text(type_(exc).__name__), text(exc), text(tb[-FIELD_CAP:])

    stdout = streams.stdout
    sys.stdout, sys.stderr, sys.stdin = stdout, streams.stderr, streams.stdin

    compiled = check.get("compiled")
    if compiled:  # compiled by the parent (``compiled_tests``)
        codes, prelude, setup = marshal_loads(compiled)
    else:
        codes = [None if stdio else compile_test(i, t, compile_) for i, t in enumerate(tests)]
    try:
        if not compiled:
            prelude = compile_(check["prelude"], "<prelude>", "exec", dont_inherit=True)
        program = compile_(check["program"], "<program>", "exec", dont_inherit=True)
        if not compiled:
            setup = compile_(check["setup"], "<setup>", "exec", dont_inherit=True)
    except base_exc as e:
        send(nonce, "L", *classify(e)[:3])
        flush()
        return

    env = {"__name__": "__main__" if stdio else "__sandbox__", "__builtins__": builtins}
    test_env = {"__name__": "__test__", "__builtins__": clean_builtins}
    if not stdio:
        try:
            exec_(prelude, env)
            exec_(program, env)
            for name in check["names"]:
                if name in env:
                    test_env[name] = env[name]
            if check["entry_point"]:
                test_env["candidate"] = env[check["entry_point"]]
            exec_(setup, test_env)
        except base_exc as e:
            status, etype, message, _ = classify(e)
            send(nonce, "L", "memory" if status == "memory" else "error", etype, message)
            flush()
            return
    send(nonce, "L", "passed", None, "")

    def run_stdio(case):
        """Run the whole program on one stdin; the parent compares the captured stdout with the expected one
        (which never enters the sandbox)."""
        path = f"stdin_{start}"
        with open_(path, "w") as f:
            f.write(case["stdin"])
        in_fd = open_fd(path, os.O_RDONLY)
        dup2(in_fd, 0)
        close(in_fd)
        sink = sink_cls(case["stdout_cap"])
        sys.stdin, sys.stdout = wrap_in(file_io(0, closefd=False)), wrap(sink)
        try:
            exec_(program, {"__name__": "__main__", "__builtins__": builtins})
        except system_exit as e:
            if e.code not in (None, 0):
                raise
        finally:
            sys.stdout.flush()
            sys.stdout = stdout
        actual = bytes(sink.kept).decode("utf-8", "replace")
        return ("passed", None, "output truncated" if sink.total > sink.cap else "", "", actual, None)

    def function(name):
        """LiveCodeBench's rule: the method of a fresh ``Solution()`` when the program defines that class."""
        solution = env.get("Solution")
        return getattr_(solution(), name) if isinstance_(solution, type_) else env[name]

    def values_outcome(values):
        try:
            return ("passed", None, "", "", encode_(values), None)
        except unencodable as e:
            return ("failed", "UnjudgeableValue", text(e), "", None, None)

    for i in range(start, len(tests)):
        send(nonce, "S", i)
        flush()  # with the previous test's end (or the load record) in one write
        t0 = clock()
        ns = None
        try:
            if stdio:
                outcome = run_stdio(tests[i])
            elif isinstance_(codes[i], base_exc):
                raise codes[i]
            elif tests[i]["call"] is not None:
                args = [json_loads(line) for line in tests[i]["call"].split("\n") if line.strip()]
                outcome = values_outcome([function(tests[i]["fn_name"])(*args)])
            else:
                ns = dict(test_env)
                if tests[i]["holes"]:  # test statements and holes share the test namespace's pristine builtins:
                    prefix, holes = codes[i]  # whatever a program did to them, it could have returned itself
                    exec_(prefix, ns)
                    outcome = values_outcome([eval_(hole, ns) for hole in holes])
                else:
                    ns["__builtins__"] = dict(clean_builtins)  # a test's own code gets its own copy
                    exec_(codes[i], ns)
                    outcome = ("passed", None, "", "", None, None)
        except base_exc as e:
            have = ns is not None and ACTUAL in ns and EXPECTED in ns
            pair = (safe_repr(ns[ACTUAL]), safe_repr(ns[EXPECTED])) if have else (None, None)
            outcome = (*classify(e), *pair)
        send(nonce, "E", i, *outcome, clock() - t0)
    send(nonce, "D")
    flush()
