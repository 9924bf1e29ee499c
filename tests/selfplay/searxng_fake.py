"""A loopback SearXNG fake (``http.server`` on 127.0.0.1) whose results change with every request, as live search does.

``/search?q=Q&format=json`` answers hits for Q whose URLs carry the request number ``n`` (so two processes that both
query get different documents): ``"Q - Wikipedia"``, ``"Q | Encyclopedia n"``, an unrelated ``"Weather forecast n"``
and a blacklisted GitHub hit. ``/page/...`` serves an English HTML page about the page's topic (with nav and script
noise); ``/missing/...`` is a 404, ``/flaky/...`` a 503 on its first request. Every request is recorded with its path,
User-Agent and the number of requests in flight (``max_concurrent``). ``json_format=False`` answers ``/search`` with
403, what a stock SearXNG does when ``search.formats`` lacks ``json``.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SENTENCE = "The {topic} is one of the best known topics of its kind and it is the subject of many books. "


class _Handler(BaseHTTPRequestHandler):
    server: FakeSearxng

    def do_GET(self):  # noqa: N802 - http.server API
        fake = self.server
        with fake.lock:
            fake.count += 1
            n = fake.count
            fake.in_flight += 1
            fake.max_concurrent = max(fake.max_concurrent, fake.in_flight)
            fake.requests.append((self.path, self.headers.get("User-Agent", "")))
        try:
            self._answer(fake, n)
        finally:
            with fake.lock:
                fake.in_flight -= 1

    def _answer(self, fake: FakeSearxng, n: int) -> None:
        url = urllib.parse.urlsplit(self.path)
        host = f"http://127.0.0.1:{fake.server_port}"
        if url.path == "/search":
            if not fake.json_format:
                return self._send(403, b"Forbidden")
            query = urllib.parse.parse_qs(url.query)["q"][0]
            slug = urllib.parse.quote(query)
            hits = [
                {"title": f"{query} - Wikipedia", "url": f"{host}/page/{slug}/wiki/{n}", "content": "snippet"},
                {"title": f"{query} | Encyclopedia {n}", "url": f"{host}/page/{slug}/enc/{n}", "content": "snippet"},
                {"title": f"Weather forecast {n}", "url": f"{host}/page/weather/{n}", "content": "snippet"},
                {"title": f"{query} code", "url": f"https://github.com/x/{n}", "content": "snippet"},
            ]
            return self._send(200, json.dumps({"results": hits + fake.extra_hits}).encode())
        time.sleep(fake.page_delay)
        if url.path.startswith("/missing/"):
            return self._send(404, b"not found")
        if url.path.startswith("/flaky/"):
            with fake.lock:
                first = url.path not in fake.flaky_seen
                fake.flaky_seen.add(url.path)
            if first:
                return self._send(503, b"busy")
        topic = urllib.parse.unquote(url.path.split("/")[2]) if url.path.count("/") >= 2 else "page"
        body = "<html><nav>menu</nav><script>track()</script><p>" + SENTENCE.format(topic=topic) * 25 + "</p></html>"
        return self._send(200, body.encode())

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class FakeSearxng(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, json_format: bool = True, page_delay: float = 0.0, extra_hits: list[dict] | None = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.json_format, self.page_delay, self.extra_hits = json_format, page_delay, list(extra_hits or [])
        self.lock = threading.Lock()
        self.count = self.in_flight = self.max_concurrent = 0
        self.requests: list[tuple[str, str]] = []
        self.flaky_seen: set[str] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def __enter__(self) -> FakeSearxng:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
