"""Domain-tree dumps: nested JSON with posteriors, and a self-contained HTML page with an SVG drawing.

Each node shows its name, global posterior mean alpha / (alpha + beta), window ``s/n`` and status; fill colour
goes from red (posterior mean 0) to green (1); pending nodes are dashed, masked ones grey.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

from trl_mars.selfplay.tree import MASKED, PENDING, DomainTree

_W, _H, _DX, _DY = 190, 34, 230, 44


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


def _layout(tree: DomainTree) -> dict[int, tuple[float, float]]:
    """x by level, y by leaf order (parents centred over their children)."""
    pos: dict[int, tuple[float, float]] = {}
    next_row = [0]

    def place(node_id: int) -> float:
        children = tree.nodes[node_id].children
        if children:
            ys = [place(c) for c in children]
            y = (ys[0] + ys[-1]) / 2
        else:
            y = next_row[0] * _DY
            next_row[0] += 1
        pos[node_id] = (tree.nodes[node_id].level * _DX, y)
        return y

    place(0)
    return pos


def _colour(mean: float) -> str:
    return f"rgb({int(230 * (1 - mean)) + 20},{int(200 * mean) + 40},90)"


def render_svg(tree: DomainTree) -> str:
    pos = _layout(tree)
    width = (tree.max_level + 1) * _DX + 20
    height = max(y for _, y in pos.values()) + _H + 20
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">']
    for node_id, node in enumerate(tree.nodes):
        if node.parent is not None:
            (px, py), (x, y) = pos[node.parent], pos[node_id]
            parts.append(
                f'<line x1="{px + _W + 10}" y1="{py + _H / 2 + 10}" x2="{x + 10}" y2="{y + _H / 2 + 10}" stroke="#999"/>'
            )
    for node_id, node in enumerate(tree.nodes):
        x, y = pos[node_id]
        mean = node.alpha / (node.alpha + node.beta)
        fill = "#ccc" if node.status == MASKED else _colour(mean)
        dash = ' stroke-dasharray="4 3"' if node.status == PENDING else ""
        label = html.escape(node.name[:28])
        stats = f"{mean:.2f} ({sum(node.window)}/{len(node.window)}) {node.status}"
        parts.append(
            f"<g><title>{html.escape(node.name)}: alpha={node.alpha:g} beta={node.beta:g} docs={len(node.docs)}</title>"
            f'<rect x="{x + 10}" y="{y + 10}" width="{_W}" height="{_H}" rx="5" fill="{fill}" stroke="#333"{dash}/>'
            f'<text x="{x + 16}" y="{y + 24}" font-size="11">{label}</text>'
            f'<text x="{x + 16}" y="{y + 38}" font-size="9">{stats}</text></g>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def render_html(tree: DomainTree, title: str = "Domain tree") -> str:
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{len(tree.nodes)} nodes. Box: posterior mean alpha/(alpha+beta), "
        f"window successes/length, status.</p>{render_svg(tree)}</body></html>"
    )


def dump_tree(tree: DomainTree, directory: str | os.PathLike, stem: str = "domain_tree") -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.html`` into ``directory``; returns both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, html_path = directory / f"{stem}.json", directory / f"{stem}.html"
    json_path.write_text(json.dumps(tree_to_json(tree), indent=1))
    html_path.write_text(render_html(tree))
    return json_path, html_path
