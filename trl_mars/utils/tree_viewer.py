"""One self-contained HTML viewer for trees of any kind (MARS² search trees, the self-play domain tree).

A caller turns its trees into ``ViewTree``s: per node a label, colours and the sections shown when it is clicked;
per tree a statement, metrics, filter facets and the node to highlight. The page has an index of all trees (one
row each: metrics, facets; filters per facet and a text search over each tree's id and shown text, so hundreds of trees stay usable), the selected
tree drawn as SVG (depth left to right, leaves in rows, each parent centred on its children), and a detail panel.
The page carries only what it shows: the drawing, the index and, as JSON, each node's detail sections.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

SectionKind = Literal["text", "code", "diff"]
_DY, _R, _CHAR, _PAD = 40, 12, 6.6, 28


@dataclass(frozen=True)
class Section:
    """One block of a node's detail panel: ``diff`` text colours ``+``/``-``/``@@`` lines."""

    heading: str
    text: str
    kind: SectionKind = "text"


@dataclass
class ViewNode:
    """A node as drawn: ``label`` and ``sublabel`` beside it, ``fill``/``stroke`` colours, a dashed edge from its
    parent when ``dashed``, a ``box`` or ``circle`` shape; ``summary`` and ``sections`` fill the detail panel."""

    node_id: int
    parent_id: int | None
    label: str
    sublabel: str = ""
    fill: str = "#ddd"
    stroke: str = "#333"
    dashed: bool = False
    shape: Literal["circle", "box"] = "circle"
    tooltip: str = ""
    summary: str = ""
    sections: list[Section] = field(default_factory=list)


@dataclass
class ViewTree:
    """A tree as listed and drawn. ``nodes[0]`` is the root; ``metrics`` are index columns (numbers shown with 2
    decimals), ``facets`` the values each filter matches (e.g. ``{"result": ["solved"], "agent": ["qwen"]}``),
    ``chosen`` the node to highlight (e.g. the final answer), with ``chosen_text`` saying why."""

    tree_id: str
    nodes: list[ViewNode]
    heading: str = ""
    statement: str = ""
    metrics: dict[str, float | str] = field(default_factory=dict)
    facets: dict[str, list[str]] = field(default_factory=dict)
    chosen: int | None = None
    chosen_text: str = ""


def layout(nodes: Sequence[ViewNode]) -> dict[int, tuple[int, int]]:
    """``node_id -> (depth, row)``: leaves take consecutive rows in depth-first order, a parent sits at the middle
    row of its first and last child (rounded down).

    >>> nodes = [ViewNode(0, None, "r"), ViewNode(1, 0, "a"), ViewNode(2, 1, "b"), ViewNode(3, 1, "c"),
    ...          ViewNode(4, 0, "d")]
    >>> layout(nodes)
    {2: (2, 0), 3: (2, 1), 1: (1, 0), 4: (1, 2), 0: (0, 1)}
    """
    children: dict[int | None, list[int]] = {}
    for node in nodes:
        children.setdefault(node.parent_id, []).append(node.node_id)
    pos: dict[int, tuple[int, int]] = {}
    next_row = 0

    def place(node_id: int, depth: int) -> int:
        nonlocal next_row
        kids = children.get(node_id, [])
        if kids:
            rows = [place(k, depth + 1) for k in kids]
            row = (rows[0] + rows[-1]) // 2
        else:
            row, next_row = next_row, next_row + 1
        pos[node_id] = (depth, row)
        return row

    place(nodes[0].node_id, 0)
    return pos


def tree_svg(tree: ViewTree) -> str:
    """The drawing of one tree; node shapes carry ``data-tree``/``data-node`` for the page script."""
    pos = layout(tree.nodes)
    text_width = {n.node_id: max(len(n.label) + 2, len(n.sublabel)) for n in tree.nodes}
    dx = int(2 * _R + _CHAR * max(text_width.values()) + 2 * _PAD)
    xy = {k: (_R + 8 + d * dx, _R + 8 + r * _DY) for k, (d, r) in pos.items()}
    width = max(x for x, _ in xy.values()) + dx
    height = max(y for _, y in xy.values()) + _DY
    tid = html.escape(tree.tree_id, quote=True)
    parts = [f'<svg width="{width}" height="{height}" data-tree="{tid}">']
    for node in tree.nodes:
        if node.parent_id is not None:
            (x1, y1), (x2, y2) = xy[node.parent_id], xy[node.node_id]
            x1 += _R + 8 + _CHAR * text_width[node.parent_id]  # start past the parent's label
            dash = ' stroke-dasharray="5 3"' if node.dashed else ""
            mid = (x1 + x2 - _R) / 2
            parts.append(
                f'<path class="edge" d="M{x1:.0f},{y1} C{mid:.0f},{y1} {mid:.0f},{y2} {x2 - _R},{y2}"{dash}/>'
            )
    for node in tree.nodes:
        x, y = xy[node.node_id]
        fill, stroke = html.escape(node.fill, quote=True), html.escape(node.stroke, quote=True)
        attrs = f'data-tree="{tid}" data-node="{node.node_id}" fill="{fill}" stroke="{stroke}"'
        chosen = node.node_id == tree.chosen
        cls = ' class="node chosen"' if chosen else ' class="node"'
        tip = f"<title>{html.escape(node.tooltip)}</title>" if node.tooltip else ""
        if node.shape == "box":
            parts.append(
                f'<rect{cls} {attrs} x="{x - _R}" y="{y - _R}" width="{2 * _R}" height="{2 * _R}" rx="3">{tip}</rect>'
            )
        else:
            parts.append(f'<circle{cls} {attrs} cx="{x}" cy="{y}" r="{_R + 4 if chosen else _R}">{tip}</circle>')
        star, tx = ("★ ", x + _R + 10) if chosen else ("", x + _R + 6)
        parts.append(f'<text x="{tx}" y="{y - 1}">{star}{html.escape(node.label)}</text>')
        if node.sublabel:
            parts.append(f'<text class="sub" x="{tx}" y="{y + 11}">{html.escape(node.sublabel)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _cell(value: float | str) -> str:
    return f"{value:.2f}" if isinstance(value, float) else html.escape(str(value))


def _tree_section(tree: ViewTree) -> str:
    tid = html.escape(tree.tree_id, quote=True)
    metrics = " · ".join(f"{html.escape(k)} <b>{_cell(v)}</b>" for k, v in tree.metrics.items())
    parts = [f'<section class="tree" data-tree="{tid}" hidden><h2>{html.escape(tree.heading or tree.tree_id)}</h2>']
    parts.append(f'<p class="metrics">{metrics}</p>' if metrics else "")
    parts.append(f'<p class="chosen">★ {html.escape(tree.chosen_text)}</p>' if tree.chosen_text else "")
    if tree.statement:
        parts.append(f"<details open><summary>Problem</summary><pre>{html.escape(tree.statement)}</pre></details>")
    parts.append(f'<div class="drawing">{tree_svg(tree)}</div></section>')
    return "".join(parts)


def _index(trees: Sequence[ViewTree]) -> str:
    metric_names = list(dict.fromkeys(k for t in trees for k in t.metrics))
    facet_names = list(dict.fromkeys(k for t in trees for k in t.facets))
    filters = []
    for name in facet_names:
        values = sorted({v for t in trees for v in t.facets.get(name, [])})
        options = "".join(f'<option value="{html.escape(v, quote=True)}">{html.escape(v)}</option>' for v in values)
        filters.append(
            f'<label>{html.escape(name)} <select data-facet="{html.escape(name, quote=True)}">'
            f'<option value="">all</option>{options}</select></label>'
        )
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ["tree", *metric_names, *facet_names])
    rows = []
    for tree in trees:
        facets = html.escape(json.dumps(tree.facets), quote=True)
        cells = [html.escape(tree.heading or tree.tree_id)]
        cells += [_cell(tree.metrics[k]) if k in tree.metrics else "" for k in metric_names]
        cells += [html.escape(", ".join(tree.facets.get(k, []))) for k in facet_names]
        row = "".join(f"<td>{c}</td>" for c in cells)
        rows.append(f'<tr data-tree="{html.escape(tree.tree_id, quote=True)}" data-facets="{facets}">{row}</tr>')
    return (
        f'<div id="filters"><input id="search" type="search" placeholder="search trees">{"".join(filters)}'
        f' <span id="count"></span></div><div id="index-scroll"><table id="index"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _details(trees: Sequence[ViewTree]) -> str:
    """``{tree_id: {node_id: {summary, sections}}}`` as JSON safe inside a ``<script>`` block."""
    data = {
        t.tree_id: {
            str(n.node_id): {"summary": n.summary, "sections": [[s.heading, s.text, s.kind] for s in n.sections]}
            for n in t.nodes
        }
        for t in trees
    }
    return json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")  # no `</script>` or `<!--` can end it


def render_page(
    trees: Sequence[ViewTree],
    title: str,
    legend: Sequence[tuple[str, str]] = (),
    notes: Sequence[str] = (),
) -> str:
    """A standalone HTML page (no external assets): the index, every tree's drawing (one shown at a time) and a
    detail panel. ``legend`` is ``(css colour, meaning)`` swatches; ``notes`` are plain-text lines under it."""
    swatches = "".join(
        f'<span class="swatch"><i style="background:{html.escape(c, quote=True)}"></i>{html.escape(t)}</span>'
        for c, t in legend
    )
    note_html = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    return _PAGE.format(
        title=html.escape(title),
        legend=swatches,
        notes=note_html,
        index=_index(trees),
        trees="".join(_tree_section(t) for t in trees),
        data=_details(trees),
    )


def write_page(
    path: str | Path,
    trees: Sequence[ViewTree],
    title: str,
    legend: Sequence[tuple[str, str]] = (),
    notes: Sequence[str] = (),
) -> Path:
    """``render_page`` into ``path`` (UTF-8); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_page(trees, title, legend, notes), encoding="utf-8")
    return path


def palette(names: Sequence[str]) -> Mapping[str, str]:
    """Distinct colours (Tableau 10, then repeated) for ``names`` in the given order."""
    colours = ["#4e79a7", "#f28e2b", "#76b7b2", "#b07aa1", "#edc948", "#9c755f", "#ff9da7", "#bab0ac"]
    return {name: colours[i % len(colours)] for i, name in enumerate(names)}


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title><style>
body{{font-family:system-ui,sans-serif;margin:0;display:grid;grid-template-columns:minmax(34em,1fr) 1.6fr;height:100vh}}
#side{{overflow:auto;padding:.6em 1em;box-sizing:border-box;height:100vh;border-right:1px solid #ccc}}
#right{{display:flex;flex-direction:column;height:100vh}}
#main{{overflow:auto;padding:.6em 1em;max-height:55vh;flex:none;border-bottom:1px solid #ccc}}
#detail{{overflow:auto;padding:.6em 1em;flex:1;background:#fafafa}}
h1{{font-size:1.2em;margin:.2em 0}} h2{{font-size:1.1em;margin:.2em 0}} h4{{margin:.8em 0 .2em}}
#filters{{display:flex;flex-wrap:wrap;gap:.4em;align-items:center;margin:.4em 0}} #search{{flex:1 1 10em}}
table{{border-collapse:collapse;font-size:12px;width:100%}} th,td{{padding:2px 5px;text-align:left;border-bottom:1px solid #eee}}
tbody tr{{cursor:pointer}} tbody tr:hover{{background:#eef}} tr.sel{{background:#dde8ff}}
.swatch{{display:inline-flex;align-items:center;margin-right:.8em;font-size:12px}}
.swatch i{{display:inline-block;width:12px;height:12px;border-radius:6px;margin-right:4px;border:1px solid #333}}
#legend p{{font-size:12px;color:#444;margin:.3em 0}}
.node{{cursor:pointer;stroke-width:3}} .node.chosen{{stroke-width:4}} .node.sel{{filter:drop-shadow(0 0 4px #06c)}}
path.edge{{stroke:#888;fill:none;stroke-width:1.5}} svg text{{font-size:11px;pointer-events:none}} svg text.sub{{fill:#555;font-size:10px}}
pre{{background:#f3f3f3;padding:.5em;white-space:pre-wrap;font-size:12px;margin:0}}
pre.diff span{{display:block}} pre .add{{background:#dfd}} pre .del{{background:#fdd}} pre .hunk{{color:#06c}}
p.metrics,p.chosen{{margin:.3em 0;font-size:13px}}
</style></head><body>
<div id="side"><h1>{title}</h1><div id="legend">{legend}{notes}</div>{index}</div>
<div id="right"><div id="main">{trees}</div>
<div id="detail"><p>Click a node to see its details.</p></div></div>
<script id="node-data" type="application/json">{data}</script>
<script>
const DATA = JSON.parse(document.getElementById('node-data').textContent);
const esc = s => String(s ?? '').replace(/[&<>]/g, c => ({{'&':'&amp;','<':'&lt;','>':'&gt;'}}[c]));
const rows = [...document.querySelectorAll('#index tbody tr')];
const sections = new Map([...document.querySelectorAll('section.tree')].map(s => [s.dataset.tree, s]));
const texts = new Map(rows.map(r => [r, (r.dataset.tree + '\\n' + sections.get(r.dataset.tree).textContent).toLowerCase()]));
const detail = document.getElementById('detail');
function showTree(id) {{
  sections.forEach((s, key) => s.hidden = key !== id);
  rows.forEach(r => r.classList.toggle('sel', r.dataset.tree === id));
  detail.innerHTML = '<p>Click a node to see its details.</p>';
}}
function pre(text, kind) {{
  if (kind !== 'diff') return `<pre class="${{kind}}">${{esc(text)}}</pre>`;
  const cls = l => l.startsWith('@@') ? 'hunk' : l.startsWith('+') ? 'add' : l.startsWith('-') ? 'del' : '';
  return '<pre class="diff">' + text.split('\\n').map(l => `<span class="${{cls(l)}}">${{esc(l) || ' '}}</span>`).join('') + '</pre>';
}}
function showNode(el) {{
  document.querySelectorAll('.node.sel').forEach(x => x.classList.remove('sel')); el.classList.add('sel');
  const n = DATA[el.dataset.tree][el.dataset.node];
  detail.innerHTML = `<p>${{esc(n.summary)}}</p>` + n.sections.map(([h, t, k]) => `<h4>${{esc(h)}}</h4>${{pre(t, k)}}`).join('');
}}
function filter() {{
  const q = document.getElementById('search').value.trim().toLowerCase();
  const want = [...document.querySelectorAll('select[data-facet]')].map(s => [s.dataset.facet, s.value]);
  let shown = 0;
  rows.forEach(r => {{
    const f = JSON.parse(r.dataset.facets);
    const ok = (!q || texts.get(r).includes(q)) && want.every(([k, v]) => !v || (f[k] || []).includes(v));
    r.hidden = !ok; shown += ok;
  }});
  document.getElementById('count').textContent = `${{shown}} of ${{rows.length}} trees`;
}}
rows.forEach(r => r.addEventListener('click', () => showTree(r.dataset.tree)));
document.querySelectorAll('.node').forEach(el => el.addEventListener('click', () => showNode(el)));
document.getElementById('search').addEventListener('input', filter);
document.querySelectorAll('select[data-facet]').forEach(s => s.addEventListener('change', filter));
filter();
if (rows.length) showTree(rows[0].dataset.tree);
</script></body></html>"""
