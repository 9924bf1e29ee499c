"""The HTML tree viewer on hand-built trees saved to JSON and loaded back (the page's behaviour in a browser is
tested in test_viewer_browser.py)."""

import html
import json
import re

from trl_mars.search import SearchTree, render_html
from trl_mars.search.cli import view_main
from trl_mars.search.viewer import FAIL, PASS, code_diff
from trl_mars.utils.tree_viewer import ViewNode, layout

EVIL_CODE = 'def f(a, b):\n    return a < b  # "</script><script>alert(1)</script>" <!--<script>\n'
QUESTION = "Write f(a, b) returning a + b. Beware of a < b."
LOGPROBS = [-0.123456789] * 50


def prompt(text: str) -> list[dict]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


def saved_trees(tmp_path) -> list[SearchTree]:
    """A solved tree (qwen fails, <llama> refines it to pass; a second first answer has no code) and an unsolved
    one, with the token ids and log-probs a real run records."""
    tree = SearchTree("t<0>", "HumanEval/0")
    fail = {"summary": "Passed 1 of 2 tests.", "detailed": "expected 3 < 4"}
    tokens = {"prompt_ids": [91, 92, 93], "completion_ids": [777001, 777002], "logprobs": LOGPROBS}
    tree.add(
        0, "qwen", 0, code=EVIL_CODE, score=0.0, pass_fraction=0.5, feedback=fail, prompt=prompt(QUESTION), **tokens
    )
    right = "def f(a, b):\n    return a + b\n"
    tree.add(1, "<llama>", 1, code=right, score=1.0, pass_fraction=1.0, completion=f"```python\n{right}```", **tokens)
    tree.add(0, "qwen", 2, code=None, score=0.0, pass_fraction=0.0, prompt=prompt(QUESTION), completion="no idea")
    for node, private in zip(tree.solutions, (0.0, 1.0, 0.0)):
        node.private_score = private
    other = SearchTree("t1", "HumanEval/1")
    other.add(0, "qwen", 0, code="def g():\n    pass\n", score=0.0, pass_fraction=0.0, prompt=prompt("Write g."))
    other.nodes[1].private_score = 0.0
    path = tmp_path / "trees.json"
    path.write_text(json.dumps([tree.to_dict(), other.to_dict()]))
    return [SearchTree.from_dict(t) for t in json.loads(path.read_text())]


def data_block(page: str) -> str:
    block = re.search(r'<script id="node-data" type="application/json">(.*?)</script>', page, re.S).group(1)
    assert "<" not in block  # neither `</script>` nor `<!--` in the code can end or confuse the data block
    return block


def test_layout_puts_leaves_in_rows_and_parents_between_their_children():
    nodes = [
        ViewNode(0, None, "r"),
        ViewNode(1, 0, "a"),
        ViewNode(2, 1, "b"),
        ViewNode(3, 1, "c"),
        ViewNode(4, 0, "d"),
    ]
    assert layout(nodes) == {2: (2, 0), 3: (2, 1), 1: (1, 0), 4: (1, 2), 0: (0, 1)}


def test_page_shows_problem_final_answer_metrics_agents_and_diffs(tmp_path):
    trees = saved_trees(tmp_path)
    page = render_html(trees)
    circles = re.findall(r"<circle ([^>]*)>", page)
    assert len(circles) == 4  # one per solution node; the roots are the problem boxes
    attr = {
        (re.search(r'data-tree="([^"]+)"', c).group(1), int(re.search(r'data-node="(\d+)"', c).group(1))): c
        for c in circles
    }
    fill = {k: re.search(r'fill="([^"]+)"', c).group(1) for k, c in attr.items()}
    stroke = {k: re.search(r'stroke="([^"]+)"', c).group(1) for k, c in attr.items()}
    qwen, llama = "#4e79a7", "#f28e2b"  # agents in order of appearance, distinct palette colours
    assert fill == {("t&lt;0&gt;", 1): qwen, ("t&lt;0&gt;", 2): llama, ("t&lt;0&gt;", 3): qwen, ("t1", 1): qwen}
    assert stroke == {("t&lt;0&gt;", 1): FAIL, ("t&lt;0&gt;", 2): PASS, ("t&lt;0&gt;", 3): FAIL, ("t1", 1): FAIL}
    assert 'class="node chosen"' in attr[("t&lt;0&gt;", 2)] and 'class="node chosen"' in attr[("t1", 1)]
    assert page.count('class="node chosen"') == 2  # one final answer per tree
    assert page.count("<rect ") == 2 and page.count('stroke-dasharray="5 3"') == 1  # the one refinement
    legend = re.findall(r'<span class="swatch"><i style="background:([^"]+)"></i>([^<]*)</span>', page)
    assert legend == [(qwen, "qwen"), (llama, "&lt;llama&gt;")]

    # the problem statement and the final answer with its public and private results
    assert f"<pre>{html.escape(QUESTION)}</pre>" in page
    assert "final answer: node 2 by &lt;llama&gt;: public tests pass (pass fraction 1.00), private tests pass" in page
    # metrics by hand: first answers 1 and 3 fail privately; the final answer (2) passes; some node passes
    assert "Pass@1 <b>0.00</b> · Pass@1(MCTS) <b>1.00</b> · Pass@N <b>1.00</b> · Public@N <b>1.00</b>" in page
    assert "Pass@1(MCTS): private score of the final answer" in page  # the metrics are explained on the page

    # index: one row per tree with its metrics and facets
    rows = re.findall(r'<tr data-tree="([^"]+)" data-facets="([^"]+)"[^>]*>(.*?)</tr>', page)
    assert [r[0] for r in rows] == ["t&lt;0&gt;", "t1"]
    facets = [json.loads(html.unescape(r[1])) for r in rows]
    assert facets == [
        {"result": ["solved"], "agent": ["<llama>", "qwen"]},
        {"result": ["unsolved"], "agent": ["qwen"]},
    ]
    assert re.findall(r"<td>([^<]*)</td>", rows[1][2]) == ["t1", "0.00", "0.00", "0.00", "0.00", "unsolved", "qwen"]

    block = data_block(page)
    data = json.loads(block)
    refine = dict((h, (t, k)) for h, t, k in data["t<0>"]["2"]["sections"])
    assert refine["Diff against node 1"] == (code_diff(trees[0].nodes[1], trees[0].nodes[2]), "diff")
    assert (
        "-    return a < b" in refine["Diff against node 1"][0]
        and "+    return a + b" in refine["Diff against node 1"][0]
    )
    assert refine["Result"][0] == "public tests: pass (pass fraction 1.00); private tests: pass"
    first = dict((h, t) for h, t, _ in data["t<0>"]["1"]["sections"])
    assert first["Code"] == EVIL_CODE and first["Feedback"] == "expected 3 < 4" and "Diff against node 0" not in first
    assert dict((h, t) for h, t, _ in data["t<0>"]["3"]["sections"])["Code"] == "(no code block found)"
    assert page.count("</script>") == 2 and "alert(1)" not in page.replace(block, "")  # only the page's own tags


def test_page_carries_no_token_ids_logprobs_or_prompts(tmp_path):
    page = render_html(saved_trees(tmp_path))
    assert "0.123456" not in page and "777001" not in page and "be brief" not in page
    assert not re.search(r"prompt_ids|completion_ids|logprobs", page)


def test_ungraded_trees_show_public_results_only(tmp_path):
    """A training checkpoint keeps the last round's trees, ungraded, in its method state; the view command reads
    them from there."""
    tree = saved_trees(tmp_path)[0]
    for node in tree.solutions:
        node.private_score = None
    state = tmp_path / "checkpoint-3" / "trl_mars_state" / "rank0.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"search": {}, "policies": {}, "trees": [tree.to_dict()]}))
    assert view_main([str(state), "-o", str(tmp_path / "round.html")]) == 0
    page = (tmp_path / "round.html").read_text()
    assert "Public@N <b>1.00</b>" in page and "Pass@N" not in page.split('<div id="main">')[1]
    assert "private tests not graded" in page and "[&quot;solved&quot;]" in page  # solved on its public tests


def test_view_command_renders_saved_trees(tmp_path, capsys):
    saved_trees(tmp_path)
    assert view_main([str(tmp_path / "trees.json"), "--title", "a < b"]) == 0
    page = (tmp_path / "trees.html").read_text()
    assert "<title>a &lt; b</title>" in page and page.count("<circle ") == 4
    assert "wrote" in capsys.readouterr().out


def test_view_command_stars_the_final_answer_of_its_tie_break(tmp_path):
    tree = SearchTree("tie", "HumanEval/2")
    for step, agent in enumerate(("qwen", "llama")):  # two first answers that both pass: a tie
        tree.add(0, agent, step, code="def f():\n    return 1\n", score=1.0, pass_fraction=1.0, prompt=prompt("Q"))
    (tmp_path / "trees.json").write_text(json.dumps([tree.to_dict()]))
    chosen = {}
    for tie_break in ("latest", "earliest"):
        out = tmp_path / f"{tie_break}.html"
        assert view_main([str(tmp_path / "trees.json"), "-o", str(out), "--tie-break", tie_break]) == 0
        chosen[tie_break] = re.findall(r'<circle class="node chosen" [^>]*data-node="(\d+)"', out.read_text())
    assert chosen == {"latest": ["2"], "earliest": ["1"]}
