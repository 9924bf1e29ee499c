"""MARS² search trees in the tree viewer (``trl_mars.utils.tree_viewer``).

Per tree: the problem statement (the first answers' user turn), Pass@1 / Pass@1(MCTS) / Pass@N / Public@N when
graded, the final answer (``select_final``) starred with its public and private result, and facets ``result``
(solved: the final answer passes the private tests, or the public ones before grading) and ``agent``. Per node:
fill = agent, border = public result, a dashed edge for a refinement, whose detail shows the diff against its
parent's code, plus code, verifier feedback and the raw completion. Token ids, log-probs and prompts stay out.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path

from trl_mars.search.metrics import TieBreak, select_final, tree_metrics
from trl_mars.search.tree import ROOT, Node, SearchTree
from trl_mars.utils.tree_viewer import Section, ViewNode, ViewTree, palette, render_page, write_page

PASS, FAIL = "#2e9d4e", "#d62728"
METRIC_NAMES = {"pass@1": "Pass@1", "pass@1(mcts)": "Pass@1(MCTS)", "pass@n": "Pass@N", "public_pass@n": "Public@N"}
NOTES = (
    "Fill: the agent that wrote the node. Border: green = passes every public test (the score the search sees), "
    "red = fails one. ★ = final answer: best public score, then pass fraction, then the tie-break ({tie_break}).",
    "Solid edge: a first answer to the problem; dashed: a refinement of its parent (its detail shows the diff "
    "against the parent's code).",
    "Public tests guide the search; private tests are held back and grade it. Pass@1: mean private score of the "
    "first answers. Pass@1(MCTS): private score of the final answer. Pass@N: 1 if any node passes the private "
    "tests. Public@N: 1 if any node passes the public tests.",
)


def problem_statement(tree: SearchTree) -> str:
    """The problem as the agents saw it: the last user turn of a first answer's prompt ("" for an empty tree)."""
    for node in tree.solutions:
        if node.parent_id == ROOT:
            users = [m["content"] for m in node.prompt if m.get("role") == "user"]
            return users[-1] if users else ""
    return ""


def _result(passed: float | None) -> str:
    return "not graded" if passed is None else ("pass" if passed >= 1.0 else "fail")


def code_diff(parent: Node, node: Node) -> str:
    """Unified diff from ``parent``'s code to ``node``'s ("" unless both have code)."""
    if parent.code is None or node.code is None:
        return ""
    lines = difflib.unified_diff(
        parent.code.splitlines(), node.code.splitlines(), f"node {parent.node_id}", f"node {node.node_id}", lineterm=""
    )
    return "\n".join(lines)


def _view_node(tree: SearchTree, node: Node, colours: Mapping[str, str]) -> ViewNode:
    result = (
        f"public tests: {_result(node.score)} (pass fraction {node.pass_fraction:.2f}); "
        f"private tests: {_result(node.private_score)}"
    )
    kind = f"refinement of node {node.parent_id}" if node.is_refinement else "first answer"
    sections = [
        Section("Result", result),
        Section("Code", node.code, "code") if node.code is not None else Section("Code", "(no code block found)"),
    ]
    if node.is_refinement and (diff := code_diff(tree.nodes[node.parent_id], node)):
        sections.append(Section(f"Diff against node {node.parent_id}", diff, "diff"))
    if feedback := node.feedback.get("detailed") or node.feedback.get("summary"):
        sections.append(Section("Feedback", feedback))  # the detailed report starts with the summary's count
    sections.append(Section("Completion", node.completion))
    private = "" if node.private_score is None else f" · private {'✓' if node.private_score >= 1.0 else '✗'}"
    return ViewNode(
        node.node_id,
        node.parent_id,
        label=f"{node.agent} #{node.node_id}",
        sublabel=f"public {node.pass_fraction:.2f}{private}",
        fill=colours[node.agent],
        stroke=PASS if node.score >= 1.0 else FAIL,
        dashed=node.is_refinement,
        tooltip=f"{node.agent} #{node.node_id}: {result}",
        summary=f"{tree.tree_id} · node {node.node_id} by {node.agent} · {kind} · depth {node.depth} · step {node.step}",
        sections=sections,
    )


def view_tree(tree: SearchTree, colours: Mapping[str, str], tie_break: TieBreak = "latest") -> ViewTree:
    """One search tree as the viewer shows it (``colours``: agent -> fill)."""
    root = ViewNode(ROOT, None, "problem", fill="#ddd", shape="box", summary=f"{tree.problem_id}: the problem")
    nodes = [root, *(_view_node(tree, n, colours) for n in tree.solutions)]
    view = ViewTree(tree.tree_id, nodes, heading=tree.tree_id, statement=problem_statement(tree))
    view.facets["agent"] = sorted({n.agent for n in tree.solutions})
    if not tree.solutions:
        return view
    final = select_final(tree, tie_break)
    graded = all(n.private_score is not None for n in tree.solutions)
    if graded:
        view.metrics = {name: tree_metrics(tree, tie_break)[key] for key, name in METRIC_NAMES.items()}
    else:
        view.metrics = {"Public@N": float(any(n.score >= 1.0 for n in tree.solutions))}
    solved = (final.private_score if graded else final.score) >= 1.0
    view.facets = {"result": ["solved" if solved else "unsolved"], **view.facets}
    view.chosen = final.node_id
    view.chosen_text = (
        f"final answer: node {final.node_id} by {final.agent}: public tests {_result(final.score)} "
        f"(pass fraction {final.pass_fraction:.2f}), private tests {_result(final.private_score)}"
    )
    return view


def _views(trees: Sequence[SearchTree], tie_break: TieBreak) -> tuple[list[ViewTree], dict]:
    agents = list(dict.fromkeys(n.agent for t in trees for n in t.solutions))
    colours = palette(agents)
    legend = [(colours[a], a) for a in agents]
    notes = [n.format(tie_break=tie_break) for n in NOTES]
    return [view_tree(t, colours, tie_break) for t in trees], {"legend": legend, "notes": notes}


def render_html(trees: Sequence[SearchTree], title: str = "MARS² search trees", tie_break: TieBreak = "latest") -> str:
    """A standalone HTML page (no external assets) with an index of every tree and each tree's drawing."""
    views, extra = _views(trees, tie_break)
    return render_page(views, title, **extra)


def write_html(
    trees: Sequence[SearchTree], path: str | Path, title: str = "MARS² search trees", tie_break: TieBreak = "latest"
) -> Path:
    views, extra = _views(trees, tie_break)
    return write_page(path, views, title, **extra)
