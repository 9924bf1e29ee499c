"""Checks run on a remote SandboxFusion server (``POST /run_code``), verdicts still decided here.

The remote only runs code and returns its output. Each request ships the harness that the local zygote's children
run (``harness``, with ``cases``, ``trusted``, ``values`` and ``protocol``, standard library only), the check's ``Check.wire()``
(no expected output or value) and a small driver: the driver forks one child that runs ``harness.run_check``,
forwards the child's records to stdout, kills the child when a record takes more than ``timeout_s`` (or the check's
budget is spent) and ends with one JSON line (how the child ended, its stdout/stderr). This process then reads the
records with the zygote's own reader (``zygote.Records``), continues after a timed-out or crashed test with a new
request from the next test, exactly as the zygote forks a new child, and decides every trusted verdict itself
(``pool.judge``): the remote can claim values, never a verdict, so an object with its own ``__eq__`` still fails.

Requests are retried on HTTP 5xx, connection errors and timeouts, waiting ``backoff_s * 2**attempt`` before retry
``attempt + 1``; a check whose requests all failed comes back ``crashed`` with ``sandbox_error`` naming the URL
(as a local worker failure does). ``RemoteSandbox`` has the API of ``pool.Sandbox``.
"""

from __future__ import annotations

import base64
import functools
import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from trl_mars.sandbox.cases import Check
from trl_mars.sandbox.config import SandboxConfig
from trl_mars.sandbox.pool import CheckRunner, Sandbox, SandboxUnavailable, crashed_result, judge
from trl_mars.sandbox.verdict import ExecutionResult
from trl_mars.sandbox.zygote import CheckRun, Records, _describe_exit

SHIPPED = (
    "harness.py",
    "cases.py",
    "trusted.py",
    "values.py",
    "protocol.py",
)  # what the remote child imports, all stdlib-only
_GRACE_S = 2.0  # the remote's own run limit exceeds the check's budget by this much (interpreter start, driver)

DRIVER = """\
import json, os, select, signal, time
from trl_mars.sandbox.harness import Streams, run_check
with open("check.json") as f:
    check = json.load(f)
START, NONCE, TIMEOUT, CAP = {start}, {nonce!r}, {timeout!r}, {cap}
END = time.monotonic() + {total!r}
out = os.dup(1)
rfd, wfd = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        os.close(rfd)
        os.close(out)
        os.setsid()
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        for target, name in ((1, "child.stdout"), (2, "child.stderr")):
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, target)
            os.close(fd)
        run_check(check, START, wfd, NONCE, Streams(CAP))
    finally:
        os._exit(70)
os.close(wfd)
end, deadline, partial = "eof", time.monotonic() + TIMEOUT, False
while True:
    wait = min(deadline, END) - time.monotonic()
    if wait <= 0 or not select.select([rfd], [], [], wait)[0]:
        end = "timeout"
        break
    chunk = os.read(rfd, 1 << 16)
    if not chunk:
        break
    os.write(out, chunk)
    partial = not chunk.endswith(b"\\n")
    if b"\\n" in chunk:
        deadline = time.monotonic() + TIMEOUT
for kill in (os.killpg, os.kill):
    try:
        kill(pid, signal.SIGKILL)
    except OSError:
        pass
_, status = os.waitpid(pid, 0)
outputs = []
for name in ("child.stdout", "child.stderr"):
    with open(name, "rb") as f:
        outputs.append([f.read(CAP).decode("utf-8", "replace"), os.fstat(f.fileno()).st_size])
summary = {{"end": end, "status": status, "outputs": outputs, "partial": partial}}
os.write(out, ("\\n" * partial + json.dumps(summary) + "\\n").encode())
"""


@dataclass(frozen=True)
class SandboxFusionConfig:
    """Where and how to reach the server. ``url``: its base (``http://host:8080``) or its ``/run_code`` endpoint;
    ``concurrency``: checks in flight at once; ``retries``: further attempts of a failed request;
    ``backoff_s``: the wait before the first retry (doubling each time); ``request_timeout_s``: how much longer
    than the check's own time budget one HTTP request may take."""

    url: str
    concurrency: int = 8
    retries: int = 3
    backoff_s: float = 0.5
    request_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        check_fusion_fields("SandboxFusionConfig", self.url, self.concurrency, self.retries, self.backoff_s,
                            self.request_timeout_s)  # fmt: skip

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/").removesuffix("/run_code")


def check_fusion_fields(
    owner: str, url: str | None, concurrency: int, retries: int, backoff_s: float, request_timeout_s: float,
    prefix: str = "",
) -> None:  # fmt: skip
    """Raise ``ValueError`` naming the field (``{owner}.{prefix}{name}``) of an invalid SandboxFusion setting."""
    parsed = urllib.parse.urlparse(url or "")
    checks = {
        "url": parsed.scheme in ("http", "https") and bool(parsed.netloc),
        "concurrency": isinstance(concurrency, int) and concurrency >= 1,
        "retries": isinstance(retries, int) and retries >= 0,
        "backoff_s": backoff_s >= 0,
        "request_timeout_s": request_timeout_s > 0,
    }
    values = {"url": url, "concurrency": concurrency, "retries": retries, "backoff_s": backoff_s,
              "request_timeout_s": request_timeout_s}  # fmt: skip
    for name, ok in checks.items():
        if not ok:
            hint = " (an http:// or https:// URL of the server)" if name == "url" else ""
            raise ValueError(f"{owner}.{prefix}{name} has an invalid value: {values[name]!r}{hint}")


class SandboxFusionError(RuntimeError):
    """A request failed for good (retries spent, or an answer that retrying cannot fix); the text names the URL."""


class SandboxFusionClient:
    """``POST {base}/run_code`` with retries and exponential backoff; ``attempts`` counts every request sent."""

    def __init__(self, config: SandboxFusionConfig, sleep=time.sleep) -> None:
        self.config, self.sleep = config, sleep
        self.endpoint = f"{config.base_url}/run_code"
        self.attempts = 0

    def ping(self) -> None:
        """Fail now, naming the URL, when the server does not answer ``GET /v1/ping``."""
        url = f"{self.config.base_url}/v1/ping"
        try:
            with urllib.request.urlopen(url, timeout=self.config.request_timeout_s) as response:
                answer = response.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError) as e:
            raise SandboxUnavailable(f"SandboxFusion at {url} did not answer: {e}") from None
        if "pong" not in answer:
            raise SandboxUnavailable(f"SandboxFusion at {url} answered {answer[:200]!r}, not 'pong'")

    def run_code(self, request: dict, run_s: float) -> dict:
        """The server's answer to one ``run_code`` request whose program may run ``run_s`` seconds."""
        data = json.dumps(request).encode()
        timeout = run_s + self.config.request_timeout_s
        failure = ""
        for attempt in range(self.config.retries + 1):
            if attempt:
                self.sleep(self.config.backoff_s * 2 ** (attempt - 1))
            self.attempts += 1
            post = urllib.request.Request(self.endpoint, data, {"Content-Type": "application/json"}, method="POST")
            try:
                with urllib.request.urlopen(post, timeout=timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as e:
                body = e.read()[:300].decode("utf-8", "replace")
                failure = f"HTTP {e.code}: {body}"
                if e.code < 500:
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                failure = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            except ValueError as e:
                failure = f"an answer that is not JSON: {e}"
                break
        raise SandboxFusionError(f"SandboxFusion at {self.endpoint} failed after {attempt + 1} attempt(s): {failure}")


@functools.cache
def shipped_files() -> dict[str, str]:
    """The harness modules as the remote imports them (``trl_mars/sandbox/*.py``, base64), plus empty packages."""
    here = Path(__file__).resolve().parent
    files = {"trl_mars/__init__.py": b"", "trl_mars/sandbox/__init__.py": b""}
    files.update({f"trl_mars/sandbox/{name}": (here / name).read_bytes() for name in SHIPPED})
    return {path: base64.b64encode(data).decode() for path, data in files.items()}


class RemoteCheckRun(CheckRun):
    """One check over one or more ``run_code`` requests: the zygote's ``CheckRun`` with a request per child."""

    def __init__(self, check: dict, config: SandboxConfig, client: SandboxFusionClient) -> None:
        self.check, self.config, self.client = check, config, client
        self.tests = check["tests"]
        self.verdicts = [None] * len(self.tests)
        self.program = {"program_status": "passed", "program_error": ""}
        self.deadline = time.monotonic() + config.max_total_s
        self.outputs: list[tuple[str, int]] = [("", 0), ("", 0)]
        self.files = {**shipped_files(), "check.json": base64.b64encode(json.dumps(check).encode()).decode()}

    def run(self) -> dict:
        t0 = time.monotonic()
        start = self.spawn(0)
        while start < len(self.tests) and time.monotonic() < self.deadline:
            start = self.spawn(start)
        return self.report(self.outputs, time.monotonic() - t0, {"remote": self.client.endpoint})

    def spawn(self, start: int) -> int:
        """Run tests from ``start`` in one request; returns the index to continue from."""
        nonce = secrets.token_hex(16)
        total = max(0.0, self.deadline - time.monotonic())
        code = DRIVER.format(start=start, nonce=nonce, timeout=float(self.config.timeout_s), total=total,
                             cap=self.config.output_cap_bytes)  # fmt: skip
        request = {
            "code": code, "language": "python", "stdin": "", "compile_timeout": 10.0, "run_timeout": total + _GRACE_S,
            "memory_limit_MB": self.config.memory_bytes >> 20, "files": self.files, "fetch_files": [],
        }  # fmt: skip
        answer = self.client.run_code(request, total + _GRACE_S)
        if answer.get("status") == "SandboxError":
            raise SandboxFusionError(f"SandboxFusion at {self.client.endpoint}: SandboxError: "
                                     f"{str(answer.get('message'))[:300]}")  # fmt: skip
        run = answer.get("run_result") or {}
        lines = str(run.get("stdout") or "").encode().split(b"\n")
        summary = _summary(lines)
        # complete record lines only: a record the child was killed in the middle of is not read (as in the zygote)
        complete = lines[: -3 if summary["partial"] else -2] if summary else lines[:-1]
        records, reason = Records(self, nonce, start), None
        for line in complete:
            if reason := records.feed(line):
                break
        if summary:
            self._add_outputs(summary["outputs"])
        if reason == "done":
            return len(self.tests)
        if reason == "protocol":
            verdict, message = "crashed", "the sandboxed process sent a malformed or forged report"
        elif summary is None or summary["end"] == "timeout":  # the driver, or the server itself, stopped it
            verdict, message = "timeout", f"exceeded the {self.config.timeout_s:g}s time limit"
        else:
            verdict, message = _describe_exit(summary["status"])
        return self.settle(start, records.loaded, records.current, verdict, message)

    def _add_outputs(self, outputs) -> None:
        cap = self.config.output_cap_bytes
        self.outputs = [
            ((old + str(new))[:cap], size + int(new_size))
            for (old, size), (new, new_size) in zip(self.outputs, outputs)
        ]


def _summary(lines: list[bytes]) -> dict | None:
    """The driver's last line (``{end, status, outputs}``), or None when the driver did not get to write it."""
    if len(lines) < 2 or lines[-1]:
        return None
    try:
        summary = json.loads(lines[-2])
    except ValueError:
        return None
    ok = (
        isinstance(summary, dict) and summary.get("end") in ("eof", "timeout") and type(summary.get("partial")) is bool
    )
    ok = ok and type(summary.get("status")) is int and isinstance(summary.get("outputs"), list)
    ok = ok and len(summary["outputs"]) == 2 and all(isinstance(o, list) and len(o) == 2 for o in summary["outputs"])
    return summary if ok else None


def _shutdown(executor: ThreadPoolExecutor) -> None:
    executor.shutdown(wait=True, cancel_futures=True)


class RemoteSandbox(CheckRunner):
    """``pool.Sandbox``'s API over a SandboxFusion server: ``fusion.concurrency`` checks in flight, each with the
    limits of ``config`` (``timeout_s`` per test, ``max_total_s`` per check, ``memory_bytes`` as the server's
    ``memory_limit_MB``, ``output_cap_bytes``). Verdicts are decided here; the futures never raise."""

    def __init__(self, fusion: SandboxFusionConfig, config: SandboxConfig | None = None, **overrides) -> None:
        self.fusion = fusion
        self.config = replace(config or SandboxConfig(), **overrides)
        self.client = SandboxFusionClient(fusion)
        self._executor = ThreadPoolExecutor(fusion.concurrency, thread_name_prefix="sandbox-fusion")
        self._finalizer = weakref.finalize(self, _shutdown, self._executor)

    def _submit_check(self, check: Check) -> Future[ExecutionResult]:
        return self._executor.submit(self._execute, check)

    def _execute(self, check: Check) -> ExecutionResult:
        try:
            wire = check.wire(self.config.output_cap_bytes)
            result = ExecutionResult(**RemoteCheckRun(wire, self.config, self.client).run())
        except (SandboxFusionError, ValueError, TypeError, KeyError, AttributeError) as e:  # a malformed answer
            return crashed_result(check, f"remote sandbox failed: {e}")
        judge(result, check)
        return result

    def start(self) -> dict:
        """Check that the server answers (``SandboxUnavailable`` naming the URL if not)."""
        self.client.ping()
        return {"remote": self.client.endpoint}

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> RemoteSandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_sandbox(config: SandboxConfig, fusion: SandboxFusionConfig | None = None) -> Sandbox | RemoteSandbox:
    """The local ``Sandbox`` with ``config``, or with ``fusion`` a ``RemoteSandbox`` whose server answered a ping
    (``SandboxUnavailable`` naming the URL otherwise: before any check is submitted)."""
    if fusion is None:
        return Sandbox(config)
    sandbox = RemoteSandbox(fusion, config)
    try:
        sandbox.start()
    except SandboxUnavailable:
        sandbox.close()
        raise
    return sandbox
