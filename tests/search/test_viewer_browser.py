"""The tree viewer of a saved ``trl-mars search`` run in a real browser (Debian's headless Chromium over the
Chrome DevTools protocol): the page loads without errors, lists every tree, filters and searches the index, and a
click on a node shows its code, feedback and diff. CI installs Chromium (.ci/run); without one the test skips.

``TRL_MARS_VIEWER_SCREENSHOT=docs/viewer.png`` also saves the screenshot shown in docs/mars2.md.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from trl_mars.data.code_tasks import generate_tasks
from trl_mars.search import ScriptedBackend, SearchTree, select_final
from trl_mars.search import cli as search_cli

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the helper sits here
from headless_chromium import Chromium, find_chromium  # noqa: E402

pytest.importorskip("websocket", reason="websocket-client (the test extra) drives Chromium")

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary on PATH (apt-get install chromium, or set CHROMIUM=/path/to/it)"
)
TASKS = generate_tasks(6, seed=5)


def printer(messages):
    """First answers print instead of returning; a refinement returns, except on every third task (unsolved)."""
    k, task = next((k, t) for k, t in enumerate(TASKS) if t.question in messages[-1]["content"])
    if "Your previous code" in messages[-1]["content"] and k % 3 != 2:
        return f"Fixed: return, do not print.\n{task.completion}"
    return task.completion.replace("return ", "print(").replace("\n```", ")\n```", 1)


def guesser(messages):
    return "```python\ndef answer(*args):\n    return 0\n```"


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory) -> Path:
    """A real search (sandboxed scoring and grading) with two scripted agents, written by the CLI."""
    out = tmp_path_factory.mktemp("run")
    backends = {"printer": ScriptedBackend(printer), "guesser": ScriptedBackend(guesser)}
    original = search_cli.load_backends
    search_cli.load_backends = lambda models, *a: {n: backends[n] for n in models}
    try:
        args = ["--model", "printer=p", "--model", "guesser=g", "--benchmark", "embedded", "--num-problems", "6"]
        args += ["--seed", "5", "--mode", "both", "--max-nodes", "4", "--public", "0.5", "--concurrency", "2"]
        assert search_cli.main([*args, "--output", str(out)]) == 0
    finally:
        search_cli.load_backends = original
    return out


def test_viewer_in_headless_chromium(saved_run, tmp_path):
    trees = [SearchTree.from_dict(t) for t in json.loads((saved_run / "trees.json").read_text())]
    records = [json.loads(line) for line in (saved_run / "results.jsonl").read_text().splitlines()]
    solved = sum(r["pass@1(mcts)"] == 1.0 for r in records)
    assert len(trees) == 18 and 0 < solved < len(trees)
    with Chromium(CHROMIUM) as browser:
        browser.open(saved_run / "trees.html")
        listed = browser.evaluate("[...document.querySelectorAll('#index tbody tr')].map(r => r.dataset.tree)")
        assert listed == [t.tree_id for t in trees]  # every tree, in order
        assert browser.evaluate("document.getElementById('count').textContent") == "18 of 18 trees"
        visible = "[...document.querySelectorAll('section.tree')].filter(s => !s.hidden).map(s => s.dataset.tree)"
        assert browser.evaluate(visible) == [trees[0].tree_id]

        # a refined tree: open it from the index, click the refinement, see code, feedback and the diff
        tree = next(t for t in trees if t.tree_id.startswith("system/") and select_final(t).is_refinement)
        node = select_final(tree)
        parent = tree.nodes[node.parent_id]
        row = f'#index tbody tr[data-tree="{tree.tree_id}"]'
        browser.click(row)
        assert browser.evaluate(visible) == [tree.tree_id]
        browser.click(f'section[data-tree="{tree.tree_id}"] circle[data-node="{node.node_id}"]')
        text = browser.evaluate("document.getElementById('detail').innerText")
        assert node.code.strip() in text and f"Diff against node {parent.node_id}" in text
        assert "-    print(" in text and "+    return " in text
        browser.click(f'section[data-tree="{tree.tree_id}"] circle[data-node="{parent.node_id}"]')
        text = browser.evaluate("document.getElementById('detail').innerText")
        assert (
            parent.code.strip() in text and parent.feedback["detailed"].splitlines()[-1] in text and "Feedback" in text
        )

        # filters and search narrow the index
        select = "document.querySelector('select[data-facet=\"result\"]')"
        browser.evaluate(f"{select}.value = 'solved'; {select}.dispatchEvent(new Event('change'))")
        assert browser.evaluate("document.getElementById('count').textContent") == f"{solved} of 18 trees"
        shown = "[...document.querySelectorAll('#index tbody tr')].filter(r => !r.hidden).map(r => r.dataset.tree)"
        assert browser.evaluate(shown) == [r["tree_id"] for r in records if r["pass@1(mcts)"] == 1.0]
        browser.evaluate(f"{select}.value = ''; {select}.dispatchEvent(new Event('change'))")
        agent = "document.querySelector('select[data-facet=\"agent\"]')"
        browser.evaluate(f"{agent}.value = 'guesser'; {agent}.dispatchEvent(new Event('change'))")
        assert browser.evaluate(shown) == [t.tree_id for t in trees if "guesser" in {n.agent for n in t.solutions}]
        browser.evaluate(f"{agent}.value = ''; {agent}.dispatchEvent(new Event('change'))")
        search = "document.getElementById('search')"
        browser.evaluate(f"{search}.value = 'agent:guesser'; {search}.dispatchEvent(new Event('input'))")
        assert browser.evaluate(shown) == [t.tree_id for t in trees if t.tree_id.startswith("agent:guesser/")]
        name = TASKS[1].question.split("`")[1]  # a function name, only in that task's problem statement
        browser.evaluate(f"{search}.value = '{name.upper()}'; {search}.dispatchEvent(new Event('input'))")
        assert browser.evaluate(shown) == [t.tree_id for t in trees if t.problem_id == TASKS[1].task_id]
        browser.evaluate(f"{search}.value = ''; {search}.dispatchEvent(new Event('input'))")

        browser.click(row)
        browser.click(f'section[data-tree="{tree.tree_id}"] circle[data-node="{node.node_id}"]')
        shot = browser.screenshot(os.environ.get("TRL_MARS_VIEWER_SCREENSHOT") or tmp_path / "viewer.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert browser.errors == []


def test_domain_tree_page_in_headless_chromium(tmp_path):
    """The self-play domain tree goes through the same viewer: it loads, and a click shows a node's posterior."""
    from trl_mars.selfplay.render import dump_tree
    from trl_mars.selfplay.tree import DomainTree

    tree = DomainTree(["Movies", "Books"], max_level=3, expansion_caps=[4, 4])
    tree.resolve(1, ["movies doc"])
    child = tree.add_child(1, "Comedy")
    tree.resolve(child, ["a doc"])
    tree.update([0, 1, child], 1)
    _, page = dump_tree(tree, tmp_path)
    with Chromium(CHROMIUM) as browser:
        browser.open(page)
        browser.click(f'circle[data-node="{child}"]')
        text = browser.evaluate("document.getElementById('detail').innerText")
        assert "Comedy" in text and "= 2 / 3 = 0.667" in text and "documents: 1" in text
        assert browser.errors == []
        assert (
            browser.evaluate("document.querySelectorAll('path.edge[stroke-dasharray]').length") == 1
        )  # Books: pending
