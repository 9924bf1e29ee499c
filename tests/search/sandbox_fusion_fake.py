"""A loopback stand-in for a SandboxFusion server: ``POST /run_code`` writes the request's files into a fresh folder
and runs its Python ``code`` there in a subprocess (``python -E -S``: the standard library only, nothing of this
environment), answering in SandboxFusion's JSON; ``GET /v1/ping`` answers ``pong``. ``fail_next`` answers the next
requests with that HTTP status (or, for ``"hang"``, with nothing until the client gives up); ``requests`` counts
every ``run_code`` request received."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FakeSandboxFusion:
    def __init__(self) -> None:
        self.requests = 0
        self.fail_next: list[int | str] = []
        self.hang_s = 3.0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def answer(self, code: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/v1/ping":
                    self.answer(200, b'"pong"')
                else:
                    self.answer(404, b'{"detail": "Not Found"}')

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/run_code":
                    self.answer(404, b'{"detail": "Not Found"}')
                    return
                with fake.lock:
                    fake.requests += 1
                    failure = fake.fail_next.pop(0) if fake.fail_next else None
                if failure == "hang":
                    time.sleep(fake.hang_s)
                    return
                if failure is not None:
                    self.answer(int(failure), b'{"detail": "injected failure"}')
                    return
                self.answer(200, json.dumps(run_code(request)).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeSandboxFusion:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_code(request: dict) -> dict:
    """SandboxFusion's ``run_code`` for ``language: python`` (its ``isolation: none`` mode, as in ``local.yaml``)."""
    assert request["language"] == "python"
    with tempfile.TemporaryDirectory() as folder:
        for path, data in request.get("files", {}).items():
            target = Path(folder) / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(base64.b64decode(data))
        (Path(folder) / "main.py").write_text(request["code"])
        t0 = time.monotonic()
        try:
            done = subprocess.run(
                [sys.executable, "-E", "-S", "main.py"], cwd=folder, input=request.get("stdin") or "",
                capture_output=True, text=True, timeout=request["run_timeout"],
            )  # fmt: skip
            run = {"status": "Finished", "return_code": done.returncode, "stdout": done.stdout, "stderr": done.stderr}
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
            run = {"status": "TimeLimitExceeded", "return_code": None, "stdout": out, "stderr": ""}
    run["execution_time"] = time.monotonic() - t0
    status = "Success" if run["status"] == "Finished" and run["return_code"] == 0 else "Failed"
    return {"status": status, "message": "", "compile_result": None, "run_result": run, "executor_pod_name": None,
            "files": {}}  # fmt: skip
