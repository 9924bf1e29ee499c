"""SearXNG corpus over a loopback fake: filter titles first, fetch kept pages in parallel with a browser-like user
agent and bounded retries, errors with the URL, WIST's embedding title filter for web hits, and state round trip."""

import json
import logging
import sys
from pathlib import Path

import pytest

from trl_mars.selfplay.corpus import (
    CorpusEnvironment,
    Document,
    SearxngCorpus,
    SearxngError,
    clean_html,
    embedding_title_filter,
    title_similarity,
)

sys.path.insert(0, str(Path(__file__).parent))
from searxng_fake import FakeSearxng  # noqa: E402


@pytest.fixture(scope="module")
def minilm():
    from trl_mars.selfplay.encoders import minilm_encoder

    return minilm_encoder()


def test_web_titles_are_matched_by_embedding_not_string(minilm):
    """Bug: string similarity >= 0.8 rejected "Chinese remainder theorem - Wikipedia" (0.60); WIST keeps web hits
    whose MiniLM cosine with the label is >= max(0.5, the batch median)."""
    label = "Chinese remainder theorem"
    titles = [
        "Chinese remainder theorem - Wikipedia",
        "Chinese Remainder Theorem | Brilliant Math & Science Wiki",
        "Best pizza restaurants in Rome",
        "Premier League football results",
    ]
    assert title_similarity(label, titles[0]) == pytest.approx(0.6, abs=0.01)  # < 0.8: rejected by string
    hits = [Document(f"u{i}", t, "") for i, t in enumerate(titles)]
    env = CorpusEnvironment(SearxngCorpus("http://unused"), title_encoder=minilm)
    assert env.title_match == "embedding"  # auto: web source
    assert [d.title for d in env.keep_titles(label, hits)] == titles[:2]
    # the batch median raises the cut above 0.5 when most hits are relevant: (0.9, 0.8, 0.7, 0.6) -> median 0.75
    unit = [[c, (1 - c * c) ** 0.5] for c in (0.9, 0.8, 0.7, 0.6)]
    assert embedding_title_filter([1.0, 0.0], unit) == [True, True, False, False]
    assert embedding_title_filter([1.0, 0.0], [[0.3, 0.95], [0.2, 0.98]]) == [False, False]  # below 0.5


def test_searxng_filters_first_then_fetches_in_parallel_with_retries(minilm, caplog):
    extra = [
        {"title": "Heat film - Missing page", "url": "/missing/heat", "content": "x"},
        {"title": "Heat film - Flaky page", "url": "/flaky/heat", "content": "x"},
    ]
    extra += [{"title": t, "url": f"/page/{i}", "content": "x"} for i, t in enumerate(["Stock news", "Pasta recipes"])]
    with FakeSearxng(page_delay=0.3) as fake:
        for hit in extra:
            hit["url"] = fake.url + hit["url"]
        fake.extra_hits = extra
        corpus = SearxngCorpus(fake.url, min_words=100, retries=1)
        env = CorpusEnvironment(corpus, docs_per_node=10, title_encoder=minilm)
        with caplog.at_level(logging.WARNING, logger="trl_mars.selfplay.corpus"):
            docs = env.lookup(["Heat film"])
        paths = [p for p, _ in fake.requests]
    assert [d.title for d in docs] == ["Heat Film - Wikipedia", "Heat Film | Encyclopedia 1", "Heat Film - Flaky Page"]
    assert "menu" not in docs[0].text and "track()" not in docs[0].text and "best known" in docs[0].text
    assert not any("weather" in p or p.startswith("/page/0") for p in paths)  # filtered by title: never fetched
    assert not any("github" in p for p in paths)  # blacklisted URL
    assert paths.count("/flaky/heat") == 2  # one retry after the 503
    assert paths.count("/missing/heat") == 1  # a 404 is not retried ...
    assert f"HTTP 404 for {fake.url}/missing/heat" in caplog.text  # ... but logged with its URL
    assert fake.max_concurrent >= 2  # pages fetched in parallel
    assert all(ua.startswith("Mozilla/5.0") for _, ua in fake.requests)  # browser-like user agent
    # documents of resolved nodes survive a checkpoint (live search may not return them again)
    env.add(docs)
    restored = CorpusEnvironment(SearxngCorpus("http://unused"))
    restored.load_state_dict(json.loads(json.dumps(env.state_dict())))
    assert restored.get(docs[0].doc_id) == docs[0]
    assert clean_html("<footer>f</footer><p>a</p><aside>b</aside>") == "a"


def test_searxng_http_errors_name_the_url_and_the_json_setting():
    """Bug: a 403 (SearXNG with its JSON format off) was swallowed: every node silently got no documents."""
    with FakeSearxng(json_format=False) as fake:
        with pytest.raises(SearxngError, match=r"HTTP 403 for http://127\.0\.0\.1:\d+/search\?q=Heat.*formats"):
            CorpusEnvironment(SearxngCorpus(fake.url)).lookup(["Heat"])
    with pytest.raises(SearxngError, match=r"http://127\.0\.0\.1:9/search"):
        SearxngCorpus("http://127.0.0.1:9", timeout=0.5, retries=0).search("x", 5)  # unreachable
