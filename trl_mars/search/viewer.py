"""A self-contained HTML view of search trees: an SVG per tree, nodes coloured by score and labelled by agent,
edges marked as first answers or refinements; clicking a node shows its code, feedback and statistics."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

from trl_mars.search.tree import ROOT, SearchTree

_X, _Y, _R = 70, 80, 18
_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title><style>
body{{font-family:system-ui,sans-serif;margin:1em;display:flex;gap:1em}}
#trees{{flex:2}} #detail{{flex:1;position:sticky;top:0;max-height:95vh;overflow:auto;border-left:1px solid #ccc;padding-left:1em}}
circle{{stroke:#333;stroke-width:1.5;cursor:pointer}} circle.sel{{stroke:#06c;stroke-width:4}}
line.gen{{stroke:#999}} line.refine{{stroke:#555;stroke-dasharray:5 3}}
text{{font-size:11px;pointer-events:none}} pre{{background:#f6f6f6;padding:.5em;white-space:pre-wrap}}
</style></head><body>
<div id="trees">{svgs}</div>
<div id="detail"><p>Click a node. Colour: red = fails, green = passes all tests (shade = pass fraction).
Solid edge: first answer; dashed: refinement of the parent.</p></div>
<script id="tree-data" type="application/json">{data}</script>
<script>
const DATA = JSON.parse(document.getElementById('tree-data').textContent);
const esc = s => String(s ?? '').replace(/[&<>]/g, c => ({{'&':'&amp;','<':'&lt;','>':'&gt;'}}[c]));
document.querySelectorAll('circle[data-node]').forEach(c => c.addEventListener('click', () => {{
  document.querySelectorAll('circle.sel').forEach(x => x.classList.remove('sel')); c.classList.add('sel');
  const n = DATA[c.dataset.tree][+c.dataset.node];
  document.getElementById('detail').innerHTML =
    `<h3>${{esc(c.dataset.tree)}} / node ${{n.node_id}}</h3><p>agent <b>${{esc(n.agent)}}</b>, depth ${{n.depth}},
     score ${{n.score}}, pass fraction ${{n.pass_fraction.toFixed(2)}}, private ${{esc(n.private_score)}}</p>
     <h4>Code</h4><pre>${{esc(n.code ?? '(no code extracted)')}}</pre>
     <h4>Feedback</h4><pre>${{esc(n.feedback.detailed ?? n.feedback.summary)}}</pre>
     <h4>Completion</h4><pre>${{esc(n.completion)}}</pre>`;
}}));
</script></body></html>"""


def _colour(pass_fraction: float, score: float) -> str:
    if score >= 1.0:
        return "#2e9d4e"
    red, green = 220, int(80 + 120 * pass_fraction)
    return f"rgb({red},{green},80)"


def _layout(tree: SearchTree) -> dict[int, tuple[float, float]]:
    """Leaves get consecutive columns in depth-first order; a parent sits above the middle of its children."""
    pos: dict[int, tuple[float, float]] = {}
    column = 0

    def place(node_id: int) -> float:
        nonlocal column
        node = tree.nodes[node_id]
        if node.children:
            xs = [place(c) for c in node.children]
            x = (xs[0] + xs[-1]) / 2
        else:
            x, column = column, column + 1
        pos[node_id] = (x, node.depth)
        return x

    place(ROOT)
    return {k: (_X * (x + 0.5), _Y * (d + 0.5)) for k, (x, d) in pos.items()}


def tree_svg(tree: SearchTree) -> str:
    """One tree as an SVG fragment; circles carry ``data-tree``/``data-node`` for the page script."""
    pos = _layout(tree)
    width = max(x for x, _ in pos.values()) + _X
    height = max(y for _, y in pos.values()) + _Y
    tid = html.escape(tree.tree_id, quote=True)
    parts = [f'<h3>{html.escape(tree.tree_id)}</h3><svg width="{width:.0f}" height="{height:.0f}">']
    for node in tree.solutions:
        (x1, y1), (x2, y2) = pos[node.parent_id], pos[node.node_id]
        kind = "refine" if node.is_refinement else "gen"
        parts.append(f'<line class="{kind}" x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}"/>')
    x, y = pos[ROOT]
    parts.append(f'<rect x="{x - 25:.0f}" y="{y - 12:.0f}" width="50" height="24" fill="#ddd"/>')
    parts.append(f'<text x="{x:.0f}" y="{y + 4:.0f}" text-anchor="middle">problem</text>')
    for node in tree.solutions:
        x, y = pos[node.node_id]
        title = html.escape(f"{node.agent} #{node.node_id}: score {node.score}, pass {node.pass_fraction:.2f}")
        parts.append(
            f'<circle data-tree="{tid}" data-node="{node.node_id}" cx="{x:.0f}" cy="{y:.0f}" r="{_R}" '
            f'fill="{_colour(node.pass_fraction, node.score)}"><title>{title}</title></circle>'
        )
        label = html.escape(f"{(node.agent or '?')[:8]}")
        parts.append(f'<text x="{x:.0f}" y="{y + _R + 12:.0f}" text-anchor="middle">{label} #{node.node_id}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def render_html(trees: Sequence[SearchTree], title: str = "MARS² search trees") -> str:
    """A standalone HTML page (no external assets) showing every tree."""
    data = {t.tree_id: [n.__dict__ for n in t.nodes] for t in trees}
    payload = json.dumps(data).replace("<", "\\u003c")  # no `</script>` or `<!--` can end/confuse the block
    return _PAGE.format(title=html.escape(title), svgs="\n".join(tree_svg(t) for t in trees), data=payload)


def write_html(trees: Sequence[SearchTree], path: str | Path, title: str = "MARS² search trees") -> Path:
    path = Path(path)
    path.write_text(render_html(trees, title), encoding="utf-8")
    return path
