"""``trl-mars search`` with ``--vllm-server`` agents (in-process fakes of TRL's ``VLLMClient`` whose calls sleep), as a
user runs it: lockstep steps call both servers at once; ``--search-mode async`` grows each tree on its own with
``--max-inflight`` single-prompt requests, reproducibly at 1; options it cannot honour fail before any model loads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from trl_mars.data.code_tasks import generate_tasks
from trl_mars.search import cli as search_cli

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the helpers sit here
from concurrency_fakes import CallLog, FakeVLLMServers, crc  # noqa: E402

TASKS = generate_tasks(4, seed=3)
URLS = {"right": "http://127.0.0.1:8100", "wrong": "http://127.0.0.1:8101"}


def respond(messages) -> str:
    """The reference for about half the prompts, a wrong program for the others (per prompt, deterministic)."""
    task = next(t for t in TASKS if t.question in messages[-1]["content"])
    return task.completion if crc(messages[-1]["content"]) % 2 else "```python\nx = 1  # not it\n```"


@pytest.fixture
def search(tmp_path, monkeypatch, tiny_qwen2_path, tiny_llama_path):
    paths = {"right": tiny_qwen2_path, "wrong": tiny_llama_path}
    tokenizers = {URLS[a]: AutoTokenizer.from_pretrained(paths[a]) for a in URLS}

    def run(out: str, *extra: str, jitter: int = 0, delay: float = 0.05) -> tuple[Path, CallLog]:
        log, rng = CallLog(), np.random.default_rng(jitter)
        wait = (lambda m: float(rng.uniform(0, delay))) if jitter else delay
        monkeypatch.setattr("trl.generation.vllm_client.VLLMClient", FakeVLLMServers(tokenizers, respond, wait, log))
        args = [arg for a in URLS for arg in ("--model", f"{a}={paths[a]}", "--vllm-server", f"{a}={URLS[a]}")]
        args += ["--benchmark", "embedded", "--num-problems", "4", "--seed", "3", "--max-nodes", "4"]
        args += ["--concurrency", "2", "--quiet", "--output", str(tmp_path / out), *extra]
        assert search_cli.main(args) == 0
        return tmp_path / out, log

    return run


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_async_search_with_one_request_per_tree_is_reproducible_whatever_the_timing(search):
    first, log = search("a", "--search-mode", "async", jitter=1)
    second, _ = search("b", "--search-mode", "async", jitter=2)
    assert lines(first) == lines(second) and len(lines(first)) == 4
    assert all(r["nodes"] == 4 for r in lines(first))
    assert all(prompts == 1 for *_, prompts in log.calls) and len(log.calls) == 16  # one request per node
    assert log.max_active > 1
    summary = json.loads((first / "summary.json").read_text())
    assert summary["runs"]["system"]["nodes"] == 16 and 0 < summary["runs"]["system"]["metrics"]["pass@n"] <= 1
    assert json.loads((first / "run.json").read_text())["search_mode"] == "async"


def test_async_search_keeps_up_to_max_inflight_requests_per_tree(search):
    out, log = search("c", "--search-mode", "async", "--max-inflight", "3", delay=0.2)
    assert [r["nodes"] for r in lines(out)] == [4] * 4  # the budget, exactly
    assert len(log.calls) == 16 and log.max_active > 4  # more than one request per tree (4 trees) at once
    trees = json.loads((out / "trees.json").read_text())
    assert all(sorted(n["step"] for n in t["nodes"][1:]) == [0, 1, 2, 3] for t in trees)


def test_lockstep_search_calls_both_servers_at_once(search):
    out, log = search("d", delay=0.2)
    assert log.overlapped(URLS["right"], URLS["wrong"]) and log.max_active == 2
    assert any(prompts > 1 for *_, prompts in log.calls)  # lockstep: one batch per server per step
    assert json.loads((out / "run.json").read_text())["search_mode"] == "lockstep"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--search-mode", "async"], r"--search-mode async needs backends that serve concurrent requests.*'local'"),
        (["--max-inflight", "2"], r"--max-inflight 2 needs --search-mode async"),
        (["--vllm-server", "nobody=http://x:1"], r"--vllm-server nobody=http://x:1: no --model is named 'nobody'"),
        (["--vllm-server", "local"], r"--vllm-server takes NAME=URL"),
    ],
)
def test_options_it_cannot_honour_fail_before_any_model_loads(tmp_path, monkeypatch, extra, message):
    monkeypatch.setattr(search_cli, "load_backends", lambda *a: pytest.fail("models loaded"))
    monkeypatch.setattr(search_cli, "load_search_problems", lambda *a: pytest.fail("problems loaded"))
    with pytest.raises(SystemExit, match=message):
        search_cli.main(["--model", "local=some/path", *extra, "--output", str(tmp_path / "out")])


def test_a_run_written_before_the_scheduling_options_resumes_and_async_is_a_changed_setting(search):
    out, _ = search("e", delay=0.01)
    run_file = out / "run.json"
    old = json.loads(run_file.read_text())
    del old["search_mode"], old["max_inflight"]  # as written before these options existed
    run_file.write_text(json.dumps(old))
    before = lines(out)
    resumed, log = search("e", "--resume", delay=0.01)
    assert lines(resumed) == before and not log.calls  # nothing redone
    with pytest.raises(SystemExit, match="--search-mode 'lockstep', now 'async'"):
        search("e", "--resume", "--search-mode", "async")
