"""Corpus environment for the domain tree: document sources behind ``CorpusSource`` and node lookups.

* ``LocalCorpus``: in-memory documents (from files, JSONL, a ``datasets`` dataset or a builder) with BM25 (``bm25s``).
* ``SearxngCorpus``: a SearXNG-compatible JSON search API (``GET {url}/search?q=...&format=json``), optional page
  fetching and WIST's rule-based cleaning (drop script/style/nav/..., English test, URL/title filters).
* ``CorpusEnvironment``: looks up a node's documents with a path-consistent query (label plus ancestors), keeps the
  hits whose title is similar to the label, and tracks pending lookups (synchronous, or in a thread pool).
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from difflib import SequenceMatcher
from html.parser import HTMLParser
from pathlib import Path
from typing import Protocol, runtime_checkable


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
    def search(self, query: str, k: int) -> list[Document]:
        """Up to ``k`` documents for ``query``, best first."""
        ...

    def get(self, doc_id: str) -> Document:
        """A document returned earlier by ``search``."""
        ...

    def state_dict(self) -> dict:
        """What a resumed run needs to ``get`` earlier documents again (empty for rebuildable corpora)."""
        ...

    def load_state_dict(self, state: dict) -> None: ...


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

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

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


class SearxngCorpus:
    """Documents from a SearXNG-compatible JSON API; fetched documents are kept (and checkpointed) by URL."""

    synchronous = False

    def __init__(self, base_url: str, fetch_pages: bool = True, timeout: float = 15.0, min_words: int = 300):
        self.base_url, self.fetch_pages, self.timeout, self.min_words = (
            base_url.rstrip("/"),
            fetch_pages,
            timeout,
            min_words,
        )
        self.store: dict[str, Document] = {}

    def _get(self, url: str) -> str:
        with urllib.request.urlopen(url, timeout=self.timeout) as response:  # noqa: S310 - user-configured endpoint
            return response.read().decode("utf-8", errors="replace")

    def search(self, query: str, k: int) -> list[Document]:
        params = urllib.parse.urlencode({"q": query, "format": "json", "language": "en", "categories": "general"})
        results = json.loads(self._get(f"{self.base_url}/search?{params}")).get("results", [])
        docs, seen = [], set()
        for hit in results:
            url, title = hit.get("url", ""), hit.get("title", "")
            if not url or url in seen or "pdf" in title.casefold() or any(b in url.casefold() for b in _URL_BLACKLIST):
                continue
            seen.add(url)
            text = hit.get("content", "")
            if self.fetch_pages:
                try:
                    text = clean_html(self._get(url))
                except OSError:
                    continue
            if len(text) < 200 or "403" in text[:200] or not is_english(text, self.min_words):
                continue
            docs.append(self.store.setdefault(url, Document(url, title.title(), text)))
            if len(docs) == k:
                break
        return docs

    def get(self, doc_id: str) -> Document:
        return self.store[doc_id]

    def state_dict(self) -> dict:
        return {"store": [asdict(d) for d in self.store.values()]}

    def load_state_dict(self, state: dict) -> None:
        self.store = {d["doc_id"]: Document(**d) for d in state.get("store", [])}


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


class CorpusEnvironment:
    """Node lookups against a ``CorpusSource``: results arrive through ``poll`` (pending until then)."""

    def __init__(
        self,
        source: CorpusSource,
        docs_per_node: int = 4,
        title_threshold: float = 0.5,
        search_k: int = 20,
        query_mode: str = "path",
    ):
        self.source, self.docs_per_node, self.title_threshold = source, docs_per_node, title_threshold
        self.search_k, self.query_mode = search_k, query_mode
        self.synchronous = getattr(source, "synchronous", True)
        self._executor = None if self.synchronous else ThreadPoolExecutor(max_workers=4)
        self._jobs: dict[int, Future | list[str]] = {}

    def lookup(self, path_names: Sequence[str]) -> list[str]:
        """Ids of up to ``docs_per_node`` hits for the path query whose title is similar enough to the label."""
        try:
            hits = self.source.search(path_query(path_names, self.query_mode), self.search_k)
        except (OSError, ValueError):  # an unreachable or broken backend: the node gets no documents
            return []
        label = path_names[-1]
        keep = [d.doc_id for d in hits if title_similarity(label, d.title) >= self.title_threshold]
        return keep[: self.docs_per_node]

    def submit(self, node_id: int, path_names: Sequence[str]) -> None:
        if self._executor is None:
            self._jobs[node_id] = self.lookup(path_names)
        else:
            self._jobs[node_id] = self._executor.submit(self.lookup, list(path_names))

    def poll(self, wait: bool = False) -> dict[int, list[str]]:
        """Finished lookups (``wait``: block for all) as ``{node_id: doc_ids}``, removed from the pending set."""
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

    def suggest(self, path_names: Sequence[str], exclude: Iterable[str], level: int, k: int) -> list[str]:
        """Titles of documents found for the path that could become children at ``level`` (documents whose
        ``level`` is set must match it), excluding ``exclude``; best first."""
        taken = {" ".join(e.casefold().split()) for e in exclude}
        try:
            hits = self.source.search(path_query(path_names, "path"), self.search_k)
        except (OSError, ValueError):
            return []
        titles = []
        for doc in hits:
            key = " ".join(doc.title.casefold().split())
            if (doc.level is None or doc.level == level) and key not in taken:
                titles.append(doc.title)
                taken.add(key)
        return titles[:k]
