"""Fakes for the concurrent and asynchronous search tests: backends and vLLM servers whose calls sleep, answer
deterministically from the prompt, and record when each call ran (to see overlap), plus an instant verifier."""

from __future__ import annotations

import contextlib
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from trl_mars.search.backends import Generation
from trl_mars.search.verify import Verdict

RIGHT = "```python\ndef f():\n    return 1  # right\n```"
WRONG = "```python\ndef f():\n    return 0  # wrong\n```"


def crc(text: str) -> int:
    return zlib.crc32(text.encode())


def coin_answer(salt: str) -> Callable[[list[dict]], str]:
    """RIGHT or WRONG, decided by a hash of the last message and ``salt`` (so agents answer differently)."""
    return lambda messages: RIGHT if crc(salt + messages[-1]["content"]) % 3 == 0 else WRONG


class CallLog:
    """Start and end times of calls, shared by several backends: how many ran at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, float, float, int]] = []  # (who, start, end, prompts)
        self.active = 0
        self.max_active = 0

    def enter(self) -> float:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        return time.perf_counter()

    def leave(self, who: str, start: float, prompts: int) -> None:
        with self.lock:
            self.active -= 1
            self.calls.append((who, start, time.perf_counter(), prompts))

    def overlapped(self, a: str, b: str) -> bool:
        """Whether some call of ``a`` ran while some call of ``b`` did."""
        return any(
            s1 < e2 and s2 < e1 for w1, s1, e1, _ in self.calls for w2, s2, e2, _ in self.calls if (w1, w2) == (a, b)
        )


class SleepyBackend:
    """Sleeps ``delay(prompt, n)`` seconds per call (``n``: how many calls this prompt's problem had before; the
    call lasts as long as its slowest prompt), then answers ``respond(prompt)``."""

    def __init__(
        self,
        name: str,
        log: CallLog,
        delay: Callable[[list[dict], int], float] | float = 0.0,
        respond: Callable[[list[dict]], str] | None = None,
        concurrent: bool = True,
        fail: bool = False,
    ) -> None:
        self.name, self.log, self.fail = name, log, fail
        self.delay = delay if callable(delay) else (lambda prompt, n, d=delay: d)
        self.respond = respond or coin_answer(name)
        self.concurrent_requests = concurrent
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()

    def generate(self, prompts, on_text=None):
        start = self.log.enter()
        try:
            with self.lock:
                counts = []
                for p in prompts:
                    key = p[-1]["content"].split("\n")[0]
                    counts.append(self.seen.get(key, 0))
                    self.seen[key] = counts[-1] + 1
            time.sleep(max(self.delay(p, n) for p, n in zip(prompts, counts)))
            if self.fail:
                raise RuntimeError(f"{self.name}: server error")
            out = [
                Generation([1, 2], [3, crc(p[-1]["content"]) % 50], self.respond(p), [-0.5, -0.25]) for p in prompts
            ]
        finally:
            self.log.leave(self.name, start, len(prompts))
        for i, gen in enumerate(out):
            if on_text is not None:
                on_text(i, gen.text)
        return out


class InstantVerifier:
    """Scores 1.0 iff the code says ``# right``; verdicts come back from a thread (as the sandbox's do)."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(2)

    def submit(self, code, tests, entry_point=None, setup="") -> Future[Verdict]:
        ok = "# right" in code
        return self.pool.submit(lambda: Verdict(float(ok), float(ok), {"summary": "ok" if ok else "Failed."}))


class FakeVLLMServers:
    """Stands in for ``trl.generation.vllm_client.VLLMClient`` (one instance per base_url): thread-safe, each
    ``chat`` call sleeps ``delay`` seconds (or ``delay(messages)``) and answers every conversation with ``respond(messages)``, tokenised with
    that server's tokenizer; calls are recorded in ``log`` under the base_url."""

    def __init__(
        self, tokenizers: dict, respond: Callable[[list[dict]], str], delay: float | Callable, log: CallLog
    ) -> None:
        self.tokenizers, self.respond, self.delay, self.log = tokenizers, respond, delay, log
        self.clients: dict[str, FakeVLLMServers.Client] = {}

    def __call__(self, base_url: str, group_port: int = 51216, connection_timeout: float = 0.0):
        client = self.Client(self, base_url, group_port)
        self.clients[base_url] = client
        return client

    class Client:
        def __init__(self, servers: FakeVLLMServers, base_url: str, group_port: int) -> None:
            self.servers, self.base_url, self.group_port = servers, base_url, group_port
            self.tokenizer = servers.tokenizers[base_url]
            self.weights: dict = {}

        def init_communicator(self, device) -> None:
            pass

        @contextlib.contextmanager
        def weight_update(self):
            yield

        def update_named_params(self, metadata, named_params) -> None:
            """TRL 1.16's bucketed push (tests/trainers/vllm_fakes.py checks its protocol in detail)."""
            for name, tensor in named_params:
                self.weights[name] = tensor.detach().clone()

        def reset_prefix_cache(self) -> None:
            pass

        def chat(self, messages, temperature, top_p, top_k, max_tokens, logprobs, **kwargs) -> dict:
            start = self.servers.log.enter()
            try:
                delay = self.servers.delay
                time.sleep(delay(messages) if callable(delay) else delay)
                tok = self.tokenizer
                texts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
                completions = [
                    tok(self.servers.respond(m), add_special_tokens=False).input_ids[: max_tokens - 1]
                    + [tok.eos_token_id]
                    for m in messages
                ]
                return {
                    "prompt_ids": [tok(t, add_special_tokens=False).input_ids for t in texts],
                    "completion_ids": completions,
                    "logprobs": [[[-0.5]] * len(c) for c in completions],
                }
            finally:
                self.servers.log.leave(self.base_url, start, len(messages))


class LoopbackVLLM:
    """A loopback HTTP server speaking the part of vLLM's OpenAI API that TRL's real ``VLLMClient`` uses (``/health``,
    ``/v1/models``, ``/v1/chat/completions`` with token ids and log-probs): each request sleeps ``delay`` seconds,
    then answers ``respond(messages)`` tokenised with ``tokenizer``; requests are recorded in ``log`` under ``name``.
    Use as a context manager; ``url`` is its base URL."""

    def __init__(self, name: str, tokenizer, respond: Callable[[list[dict]], str], delay: float, log: CallLog):
        import json
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def reply(self, obj) -> None:
                body = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self.reply({"data": [{"id": name}]} if self.path.startswith("/v1/models") else {})

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                start = log.enter()
                try:
                    time.sleep(delay)
                    ids = tokenizer.apply_chat_template(
                        request["messages"], add_generation_prompt=True, tokenize=False
                    )
                    prompt = tokenizer(ids, add_special_tokens=False).input_ids
                    text = respond(request["messages"])
                    out = tokenizer(text, add_special_tokens=False).input_ids[: request["max_tokens"] - 1]
                    out.append(tokenizer.eos_token_id)
                    entries = [{"token": f"token_id:{t}", "logprob": -0.5, "top_logprobs": []} for t in out]
                    server.requests.append(request)
                    self.reply({"prompt_token_ids": prompt,
                                "choices": [{"token_ids": out, "logprobs": {"content": entries}}]})  # fmt: skip
                finally:
                    log.leave(name, start, 1)

        self.requests: list[dict] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> LoopbackVLLM:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
