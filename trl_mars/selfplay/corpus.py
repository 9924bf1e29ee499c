"""Corpus environment for the domain tree: document sources behind ``CorpusSource`` and node lookups.

* ``LocalCorpus``: in-memory documents (from files, JSONL, a ``datasets`` dataset or a builder) with BM25 (``bm25s``).
* ``SearxngCorpus``: a SearXNG-compatible JSON search API (``GET {url}/search?q=...&format=json``), parallel page
  fetching with retries and WIST's rule-based cleaning (drop script/style/nav/..., English test, URL/title filters).
* ``CorpusEnvironment``: looks up a node's documents with a path-consistent query (label plus ancestors), keeps the
  hits whose title matches the label (string similarity for bare titles, MiniLM cosine for web titles), fetches
  only those, and tracks pending lookups (synchronous, or in a thread pool).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from difflib import SequenceMatcher
from html.parser import HTMLParser
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Document:
    """A retrievable document; ``level`` (optional) is the tree level it describes, ``facts`` checkable values."""

    doc_id: str
    title: str
    text: str
    level: int | None = None
    facts: dict = field(default_factory=dict)


@runtime_checkable
class CorpusSource(Protocol):
    """A document search. Optional attributes: ``synchronous`` (False: lookups run in a thread pool), ``web`` (True:
    hit titles are web page titles, matched by embedding), ``fetch(docs) -> docs`` (fills in the kept hits' text)."""

    def search(self, query: str, k: int) -> list[Document]:
        """Up to ``k`` documents for ``query``, best first."""
        ...


class LocalCorpus:
    """In-memory documents with BM25 retrieval (``bm25s``, English stopwords)."""

    synchronous = True

    def __init__(self, documents: Sequence[Document]):
        docs = [d for d in documents if d.text.strip()]
        if not docs:
            raise ValueError("corpus is empty: no document with non-empty text")
        from trl_mars.extras import require

        bm25s = require("bm25s", "selfplay", "LocalCorpus (BM25 retrieval)")
        self.documents = docs
        self.by_id = {d.doc_id: d for d in docs}
        if len(self.by_id) != len(docs):
            raise ValueError("corpus documents must have unique doc_id values")
        self._bm25s = bm25s
        self.retriever = bm25s.BM25()
        self.retriever.index(
            bm25s.tokenize([f"{d.title}\n{d.text}" for d in docs], show_progress=False), show_progress=False
        )

    def search(self, query: str, k: int) -> list[Document]:
        tokens = self._bm25s.tokenize([query], show_progress=False)
        if not tokens.vocab:  # only stopwords/punctuation: nothing to match
            return []
        ids, scores = self.retriever.retrieve(tokens, k=min(k, len(self.documents)), show_progress=False)
        return [self.documents[i] for i, s in zip(ids[0], scores[0], strict=True) if s > 0]

    def get(self, doc_id: str) -> Document:
        return self.by_id[doc_id]

    @classmethod
    def from_files(cls, paths: Iterable[str | os.PathLike]) -> LocalCorpus:
        """One document per text file (title = file stem); directories are searched for ``*.txt``/``*.md``."""
        files: list[Path] = []
        for p in map(Path, paths):
            files += sorted([*p.rglob("*.txt"), *p.rglob("*.md")]) if p.is_dir() else [p]
        return cls([Document(str(f), f.stem.replace("_", " "), f.read_text(encoding="utf-8")) for f in files])

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike) -> LocalCorpus:
        """One JSON object per line with ``title`` and ``text`` (and optionally ``doc_id``, ``level``, ``facts``)."""
        docs = []
        for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
            if line.strip():
                row = json.loads(line)
                docs.append(
                    Document(
                        str(row.get("doc_id", i)), row["title"], row["text"], row.get("level"), row.get("facts", {})
                    )
                )
        return cls(docs)

    @classmethod
    def from_dataset(cls, dataset, text_column: str = "text", title_column: str = "title") -> LocalCorpus:
        """From a ``datasets.Dataset`` with a text and a title column."""
        for column in (text_column, title_column):
            if column not in dataset.column_names:
                raise ValueError(f"dataset has no column {column!r} (columns: {dataset.column_names})")
        return cls([Document(str(i), r[title_column], r[text_column]) for i, r in enumerate(dataset)])


# --- web cleaning (WIST worker_web rules) -----------------------------------------------------------------------------
_DROP_TAGS = {"script", "style", "noscript", "header", "footer", "nav", "aside"}
_URL_BLACKLIST = ("arxiv", "academia.edu", "github", "wiki/talk:", "publication", "youtube")
_STOPWORDS = frozenset(
    "the of and to in a is that for it as was with be by on not he i this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so its can more no other".split()
)
_CJK_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


class _TextExtractor(HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        self.skip += tag in _DROP_TAGS

    def handle_endtag(self, tag):
        self.skip -= tag in _DROP_TAGS and self.skip > 0

    def handle_data(self, data):
        if not self.skip and data.strip():
            self.parts.append(data.strip())


def clean_html(html: str) -> str:
    """Visible text of an HTML page without script/style/noscript/header/footer/nav/aside, one block per line."""
    parser = _TextExtractor()
    parser.feed(html)
    return "\n".join(parser.parts)


def is_english(text: str, min_words: int = 300, max_non_latin: float = 0.3, min_stopwords: float = 0.15) -> bool:
    """WIST's English test: no CJK, non-Latin letter ratio <= 0.3, >= ``min_words`` words, stopword ratio >= 0.15."""
    if _CJK_RE.search(text):
        return False
    letters = [c for c in text if c.isalpha()]
    if not letters or sum(not c.isascii() for c in letters) / len(letters) > max_non_latin:
        return False
    words = re.findall(r"[a-z']+", text.casefold())
    return len(words) >= min_words and sum(w in _STOPWORDS for w in words) / len(words) >= min_stopwords


BROWSER_HEADERS = {
    "User-Agent": (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
    ),
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,application/json;q=0.8,*/*;q=0.7",
    "Accept-Language": "en-US,en;q=0.9",
}
"""Request headers of every SearXNG and page request: many sites answer a Python user agent with 403."""
SEARXNG_403_HINT = (
    "a SearXNG instance answers format=json with 403 unless its settings.yml lists json among the search formats "
    "(search: formats: [html, json])"
)
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class SearxngCorpus:
    """Documents from a SearXNG-compatible JSON API (``GET {base_url}/search?q=...&format=json``).

    ``search`` returns the deduplicated, filtered hits with their snippet as text (no page is fetched);
    ``fetch`` then retrieves the pages of the hits a caller kept, in parallel, and applies WIST's page rules.
    Requests send browser-like headers and are retried up to ``retries`` times on timeouts, connection errors and
    HTTP 408/425/429/5xx (backoff 0.5 s, 1 s, ...). A failed search raises ``SearxngError`` naming the URL; a failed
    page is logged with its URL and skipped.
    """

    synchronous = False
    web = True

    def __init__(
        self,
        base_url: str,
        fetch_pages: bool = True,
        timeout: float = 15.0,
        min_words: int = 300,
        retries: int = 2,
        workers: int = 8,
    ):
        self.base_url, self.fetch_pages, self.timeout, self.min_words = (
            base_url.rstrip("/"),
            fetch_pages,
            timeout,
            min_words,
        )
        self.retries, self.workers = retries, workers

    def _get(self, url: str) -> str:
        """GET ``url`` with retries; raises the last ``urllib.error.HTTPError``/``OSError``."""
        for attempt in range(self.retries + 1):
            try:
                request = urllib.request.Request(url, headers=BROWSER_HEADERS)
                with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - user URL
                    return response.read().decode("utf-8", errors="replace")
            except urllib.error.HTTPError as err:
                if err.code not in _RETRY_STATUS or attempt == self.retries:
                    raise
            except OSError:
                if attempt == self.retries:
                    raise
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def search(self, query: str, k: int) -> list[Document]:
        params = urllib.parse.urlencode({"q": query, "format": "json", "language": "en", "categories": "general"})
        url = f"{self.base_url}/search?{params}"
        try:
            results = json.loads(self._get(url)).get("results", [])
        except urllib.error.HTTPError as err:
            hint = f"; {SEARXNG_403_HINT}" if err.code == 403 else ""
            raise SearxngError(f"SearXNG search failed: HTTP {err.code} for {url}{hint}") from err
        except (OSError, ValueError) as err:
            raise SearxngError(f"SearXNG search failed for {url}: {err}") from err
        docs, seen = [], set()
        for hit in results:
            url, title = hit.get("url", ""), hit.get("title", "")
            if not url or url in seen or "pdf" in title.casefold() or any(b in url.casefold() for b in _URL_BLACKLIST):
                continue
            seen.add(url)
            docs.append(Document(url, title.title(), hit.get("content", "")))
            if len(docs) == k:
                break
        return docs

    def _page(self, doc: Document) -> Document | None:
        text = doc.text
        if self.fetch_pages:
            try:
                text = clean_html(self._get(doc.doc_id))
            except urllib.error.HTTPError as err:
                logger.warning("page skipped: HTTP %s for %s", err.code, doc.doc_id)
                return None
            except OSError as err:
                logger.warning("page skipped: %s for %s", err, doc.doc_id)
                return None
        if len(text) < 200 or "403" in text[:200] or not is_english(text, self.min_words):
            return None
        return Document(doc.doc_id, doc.title, text)

    def fetch(self, docs: Sequence[Document]) -> list[Document]:
        """The kept hits with their cleaned page text (fetched in parallel), in order; failing pages dropped."""
        if not docs:
            return []
        with ThreadPoolExecutor(max_workers=min(self.workers, len(docs))) as pool:
            pages = list(pool.map(self._page, docs))
        return [p for p in pages if p is not None]


class SearxngError(RuntimeError):
    """A SearXNG search request failed (the message names the URL)."""


# --- lookups ----------------------------------------------------------------------------------------------------------
def title_similarity(label: str, title: str) -> float:
    """WIST's title match: SequenceMatcher ratio x length ratio, on lower-cased alphanumerics."""
    a, b = (re.sub(r"[^a-z0-9]", "", s.casefold()) for s in (label, title))
    if not a or not b:
        return 0.0
    return SequenceMatcher(None, a, b).ratio() * min(len(a), len(b)) / max(len(a), len(b))


def path_query(path_names: Sequence[str], mode: str = "path") -> str:
    """``path``: label then its ancestors (path-consistent); ``label``: the label alone (WIST's leaf query)."""
    if mode == "label":
        return path_names[-1]
    return " ".join(reversed(path_names))


TITLE_MATCHES = ("auto", "string", "embedding")


def embedding_title_filter(label_emb, title_embs, threshold: float = 0.5) -> list[bool]:
    """WIST's web-hit filter: keep titles whose cosine with the label is >= max(threshold, median cosine of the
    batch). Rows are L2-normalised embeddings.

    >>> embedding_title_filter([1.0, 0.0], [[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    [True, True, False]
    """
    cos = np.asarray(title_embs, dtype=float) @ np.asarray(label_emb, dtype=float)
    if not cos.size:
        return []
    cutoff = max(threshold, float(np.median(cos)))
    return [bool(c >= cutoff) for c in cos]


class CorpusEnvironment:
    """Node lookups against a ``CorpusSource``: results arrive through ``poll`` (pending until then).

    A lookup searches the path query, keeps hits whose title matches the label, and (for sources with ``fetch``,
    i.e. web search) fetches only the kept hits' pages. Title matching: ``string`` (``title_similarity >=
    title_threshold``, for bare titles such as a local corpus's) or ``embedding`` (MiniLM cosine >= max(0.5, the
    batch median), WIST's filter for web page titles such as "Chinese remainder theorem - Wikipedia"); ``auto`` picks
    ``embedding`` for sources marked ``web``. The documents of resolved nodes are kept in ``documents`` and
    checkpointed with ``state_dict`` (a live search may not return them again).
    """

    def __init__(
        self,
        source: CorpusSource,
        docs_per_node: int = 4,
        title_threshold: float = 0.8,
        search_k: int = 20,
        query_mode: str = "path",
        title_match: str = "auto",
        embedding_threshold: float = 0.5,
        title_encoder=None,
        device=None,
    ):
        if title_match not in TITLE_MATCHES:
            raise ValueError(f"title_match must be one of {TITLE_MATCHES}, got {title_match!r}")
        self.source, self.docs_per_node, self.title_threshold = source, docs_per_node, title_threshold
        self.search_k, self.query_mode = search_k, query_mode
        if title_match == "auto":
            title_match = "embedding" if getattr(source, "web", False) else "string"
        self.title_match, self.embedding_threshold = title_match, embedding_threshold
        self._title_encoder, self.device = title_encoder, device
        self.synchronous = getattr(source, "synchronous", True)
        self._executor = None if self.synchronous else ThreadPoolExecutor(max_workers=4)
        self._jobs: dict[int, Future | list[Document]] = {}
        self.documents: dict[str, Document] = {}

    @property
    def title_encoder(self):
        """The encoder of the embedding title filter (offline MiniLM unless one was given), built on first use."""
        if self._title_encoder is None:
            from trl_mars.selfplay.encoders import minilm_encoder

            self._title_encoder = minilm_encoder(device=self.device)
        return self._title_encoder

    def keep_titles(self, label: str, hits: Sequence[Document]) -> list[Document]:
        """The hits whose title matches ``label`` (see the class docstring), in order."""
        if not hits:
            return []
        if self.title_match == "string":
            return [d for d in hits if title_similarity(label, d.title) >= self.title_threshold]
        emb = self.title_encoder.encode([label, *[d.title for d in hits]])
        keep = embedding_title_filter(emb[0], emb[1:], self.embedding_threshold)
        return [d for d, k in zip(hits, keep, strict=True) if k]

    def lookup(self, path_names: Sequence[str]) -> list[Document]:
        """Up to ``docs_per_node`` documents for the path query whose title matches the label; web pages are
        fetched (in parallel) only for the hits that passed the title filter."""
        hits = self.source.search(path_query(path_names, self.query_mode), self.search_k)
        keep = self.keep_titles(path_names[-1], hits)
        fetch = getattr(self.source, "fetch", None)
        if fetch is not None:
            keep = fetch(keep)
        return keep[: self.docs_per_node]

    def submit(self, node_id: int, path_names: Sequence[str]) -> None:
        if self._executor is None:
            self._jobs[node_id] = self.lookup(path_names)
        else:
            self._jobs[node_id] = self._executor.submit(self.lookup, list(path_names))

    def poll(self, wait: bool = False) -> dict[int, list[Document]]:
        """Finished lookups (``wait``: block for all) as ``{node_id: documents}``, removed from the pending set; a
        failed lookup re-raises its error here."""
        done = {}
        for node_id, job in list(self._jobs.items()):
            if isinstance(job, list):
                done[node_id] = job
            elif wait or job.done():
                done[node_id] = job.result()
            else:
                continue
            del self._jobs[node_id]
        return done

    def add(self, docs: Iterable[Document]) -> None:
        """Keep ``docs`` (the documents of a resolved node) for ``get``."""
        self.documents.update((d.doc_id, d) for d in docs)

    def get(self, doc_id: str) -> Document:
        return self.documents[doc_id]

    def state_dict(self) -> dict:
        return {"documents": [asdict(d) for d in self.documents.values()]}

    def load_state_dict(self, state: dict) -> None:
        self.documents = {d["doc_id"]: Document(**d) for d in state.get("documents", [])}

    def suggest(self, path_names: Sequence[str], exclude: Iterable[str], level: int, k: int) -> list[str]:
        """Titles of documents found for the path that could become children at ``level`` (documents whose
        ``level`` is set must match it), excluding ``exclude``; best first."""
        taken = {" ".join(e.casefold().split()) for e in exclude}
        hits = self.source.search(path_query(path_names, "path"), self.search_k)
        titles = []
        for doc in hits:
            key = " ".join(doc.title.casefold().split())
            if (doc.level is None or doc.level == level) and key not in taken:
                titles.append(doc.title)
                taken.add(key)
        return titles[:k]
