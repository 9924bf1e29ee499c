"""Domain-tree dumps: nested JSON with posteriors, and the page of the shared tree viewer.

Each node shows its name, global posterior mean alpha / (alpha + beta), window ``s/n`` and status; fill colour
goes from red (posterior mean 0) to green (1); pending nodes hang on dashed edges, masked ones are grey.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from trl_mars.selfplay.tree import MASKED, PENDING, READY, DomainTree
from trl_mars.utils.tree_viewer import Section, ViewNode, ViewTree, render_page

NOTES = ("Label: name; posterior mean alpha/(alpha+beta), window successes/length, status. Dashed edge: pending.",)


def tree_to_json(tree: DomainTree, node_id: int = 0) -> dict:
    """Nested ``{name, level, status, alpha, beta, posterior_mean, window, docs, children}`` from ``node_id``."""
    node = tree.nodes[node_id]
    return {
        "id": node_id,
        "name": node.name,
        "level": node.level,
        "status": node.status,
        "alpha": node.alpha,
        "beta": node.beta,
        "posterior_mean": node.alpha / (node.alpha + node.beta),
        "window": list(node.window),
        "docs": len(node.docs),
        "unk_masked": node.unk_masked,
        "children": [tree_to_json(tree, c) for c in node.children],
    }


def _colour(mean: float) -> str:
    return f"rgb({int(230 * (1 - mean)) + 20},{int(200 * mean) + 40},90)"


LEGEND = [(_colour(0.0), "posterior mean 0"), (_colour(0.5), "0.5"), (_colour(1.0), "1"), ("#ccc", "masked")]


def view_tree(tree: DomainTree) -> ViewTree:
    """The domain tree as the tree viewer shows it: one node per topic, detail = its posterior and window."""
    nodes = []
    for node_id, node in enumerate(tree.nodes):
        mean = node.alpha / (node.alpha + node.beta)
        stats = f"{mean:.2f} ({sum(node.window)}/{len(node.window)}) {node.status}"
        detail = (
            f"level {node.level}, status {node.status}, documents: {len(node.docs)}\n"
            f"posterior mean alpha / (alpha + beta) = {node.alpha:g} / {node.alpha + node.beta:g} = {mean:.3f}\n"
            f"window (last outcomes): {node.window} -> {sum(node.window)}/{len(node.window)}\n"
            f"unk child masked: {node.unk_masked}"
        )
        nodes.append(
            ViewNode(
                node_id,
                node.parent,
                label=node.name[:28],
                sublabel=stats,
                fill="#ccc" if node.status == MASKED else _colour(mean),
                dashed=node.status == PENDING,
                tooltip=f"{node.name}: alpha={node.alpha:g} beta={node.beta:g} docs={len(node.docs)}",
                summary=node.name,
                sections=[Section("Posterior", detail)],
            )
        )
    counts = Counter(n.status for n in tree.nodes)
    metrics = {"nodes": len(tree.nodes), **{status: counts[status] for status in (READY, PENDING, MASKED)}}
    return ViewTree("domain", nodes, heading="Domain tree", metrics=metrics)


def render_html(tree: DomainTree, title: str = "Domain tree") -> str:
    """The domain tree in the tree viewer (``trl_mars.utils.tree_viewer``)."""
    return render_page([view_tree(tree)], title, legend=LEGEND, notes=NOTES)


def dump_tree(tree: DomainTree, directory: str | os.PathLike, stem: str = "domain_tree") -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.html`` into ``directory``; returns both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, html_path = directory / f"{stem}.json", directory / f"{stem}.html"
    json_path.write_text(json.dumps(tree_to_json(tree), indent=1))
    html_path.write_text(render_html(tree))
    return json_path, html_path
