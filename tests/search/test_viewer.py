"""The HTML tree viewer on a hand-built tree saved to JSON and loaded back."""

import json
import re

from trl_mars.search import SearchTree, render_html
from trl_mars.search.cli import view_main

EVIL_CODE = 'def f(a, b):\n    return a < b  # "</script><script>alert(1)</script>" <!--<script>\n'


def saved_tree(tmp_path) -> SearchTree:
    tree = SearchTree("t<0>", "HumanEval/0")
    fail = {"summary": "Passed 1 of 2 tests.", "detailed": "expected 3 < 4"}
    tree.add(0, "qwen", 0, code=EVIL_CODE, score=0.0, pass_fraction=0.5, feedback=fail)  # 1: GEN, half passes
    tree.add(1, "<llama>", 1, code="def f(a, b):\n    return a + b\n", score=1.0, pass_fraction=1.0)  # 2: refine
    tree.add(0, "qwen", 2, code=None, score=0.0, pass_fraction=0.0)  # 3: GEN, no code
    tree.nodes[2].private_score = 1.0
    path = tmp_path / "trees.json"
    path.write_text(json.dumps([tree.to_dict()]))
    return SearchTree.from_dict(json.loads(path.read_text())[0])


def test_rendered_tree_has_nodes_edges_data_and_escaping(tmp_path):
    tree = saved_tree(tmp_path)
    page = render_html([tree])
    circles = re.findall(r"<circle ([^>]*)>", page)
    assert len(circles) == 3  # one per solution node; the root is the problem box
    fills = {
        int(re.search(r'data-node="(\d+)"', c).group(1)): re.search(r'fill="([^"]+)"', c).group(1) for c in circles
    }
    assert fills == {1: "rgb(220,140,80)", 2: "#2e9d4e", 3: "rgb(220,80,80)"}  # shade by pass fraction, green = pass
    assert all('data-tree="t&lt;0&gt;"' in c for c in circles)
    assert page.count('<line class="gen"') == 2 and page.count('<line class="refine"') == 1
    labels = re.findall(r'<text [^>]*text-anchor="middle">([^<]*)</text>', page)
    assert labels == ["problem", "qwen #1", "&lt;llama&gt; #2", "qwen #3"]

    block = re.search(r'<script id="tree-data" type="application/json">(.*?)</script>', page, re.S).group(1)
    assert "<" not in block  # neither `</script>` nor `<!--` in the code can end or confuse the data block
    data = json.loads(block)
    nodes = data["t<0>"]
    assert [n["node_id"] for n in nodes] == [0, 1, 2, 3]
    assert nodes[1]["code"] == EVIL_CODE and nodes[1]["feedback"]["detailed"] == "expected 3 < 4"
    assert nodes[2]["agent"] == "<llama>" and nodes[2]["private_score"] == 1.0 and nodes[3]["code"] is None
    assert page.count("</script>") == 2 and "alert(1)" not in page.replace(block, "")  # only the page's own tags


def test_view_command_renders_saved_trees(tmp_path, capsys):
    saved_tree(tmp_path)
    assert view_main([str(tmp_path / "trees.json"), "--title", "a < b"]) == 0
    page = (tmp_path / "trees.html").read_text()
    assert "<title>a &lt; b</title>" in page and page.count("<circle ") == 3
    assert "wrote" in capsys.readouterr().out
