"""Drawing FX (sub)graphs as SVG: the per-site graph diff of ``fusegraph compare``.

For one match site, ``site_views`` builds two small graphs: the unfused side (the replaced nodes, in
red, with the values flowing in and out in grey) and the fused side (the fused call, in green, with
the same boundary values). Boundary nodes keep their names in both graphs, so the two drawings line
up by name. Long single-file chains inside a site (the 19 Sinkhorn iterations of mhc_pre are 114
nodes) are folded into one dashed box that lists the ops it hides.

Layout: graphviz ``dot`` when it is installed, else a layered (Sugiyama-style) layout written here:
longest-path layering, dummy nodes on long edges, barycenter sweeps against crossings, left-packed
coordinates centred per layer. networkx does the graph bookkeeping.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from html import escape

import networkx as nx
import torch.fx

from fusegraph.records import MatchSite

try:
    from fusegraph.canonicalize import op_label
except ImportError:  # pragma: no cover
    from fusegraph.cost import op_label

STYLE = {  # kind -> (fill, stroke, dash)
    "removed": ("#fde2e1", "#c62828", ""),
    "fused": ("#dcfce7", "#15803d", ""),
    "boundary": ("#f3f4f6", "#9ca3af", ""),
    "folded": ("#fff1f0", "#c62828", "5,3"),
    "missing": ("#fff7e6", "#d97706", "5,3"),
}
FOLD_MIN = 12      # stretches of more layers than this are folded
FOLD_KEEP = 3      # layers kept visible at each end of a folded stretch
FOLD_WIDTH = 3     # a stretch is narrow when each layer has at most this many nodes
LAYER_GAP = 58
NODE_GAP = 18
NODE_H = 34
CHAR_W = 6.6


@dataclass
class View:
    """A small graph to draw: node id -> (title, subtitle, kind, tooltip), and edges."""

    title: str
    nodes: dict[str, tuple[str, str, str, str]] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)

    def add(self, nid: str, title: str, subtitle: str, kind: str, tooltip: str = "") -> None:
        self.nodes[nid] = (title, subtitle, kind, tooltip)

    def graph(self) -> nx.DiGraph:
        g = nx.DiGraph()
        g.add_nodes_from(self.nodes)
        g.add_edges_from((a, b) for a, b in self.edges if a in self.nodes and b in self.nodes)
        return g


def _describe(node: torch.fx.Node) -> str:
    val = node.meta.get("val")
    if hasattr(val, "shape") and hasattr(val, "dtype"):
        return f"{node.name}: {str(val.dtype).replace('torch.', '')}{list(val.shape)}"
    return node.name


def _boundary_label(node: torch.fx.Node) -> str:
    return {"placeholder": "input", "get_attr": "weight"}.get(node.op, op_label(node))


def site_views(unfused: torch.fx.GraphModule, fused: torch.fx.GraphModule | None,
               site: MatchSite) -> tuple[View, View]:
    """The unfused subgraph of ``site`` and its fused replacement, with shared boundary nodes."""
    left = View(f"unfused: {len(site.replaced)} nodes")
    names = {n.name: n for n in unfused.graph.nodes}
    inside = [names[r] for r in site.replaced if r in names]
    inside_set = {n.name for n in inside}
    for n in inside:
        left.add(n.name, op_label(n), n.name, "removed", _describe(n))
        for a in n.all_input_nodes:
            if a.name not in inside_set:
                left.add(a.name, _boundary_label(a), a.name, "boundary", _describe(a))
            left.edges.append((a.name, n.name))
        for u in n.users:
            if u.name not in inside_set:
                left.add(u.name, _boundary_label(u), u.name, "boundary", _describe(u))
                left.edges.append((n.name, u.name))
    _fold_chains(left, inside_set)

    right = View("fused")
    call = None
    if fused is not None:
        call = next((n for n in fused.graph.nodes if n.name == site.fused_node), None)
    if call is None:
        right.add("missing", site.fused_node or "?", "not in the fused graph", "missing")
        return left, right
    right.title = f"fused: one {site.op} call"
    right.add(call.name, f"{site.op} [{site.selection.provider}]", call.name, "fused", _describe(call))
    for a in call.all_input_nodes:
        right.add(a.name, _boundary_label(a), a.name, "boundary", _describe(a))
        right.edges.append((a.name, call.name))
    for u in call.users:
        # getitem nodes unpack the fused call's tuple: show them with their consumers
        right.add(u.name, op_label(u), u.name, "fused" if op_label(u) == "getitem" else "boundary", _describe(u))
        right.edges.append((call.name, u.name))
        if op_label(u) == "getitem":
            for w in u.users:
                right.add(w.name, _boundary_label(w), w.name, "boundary", _describe(w))
                right.edges.append((u.name, w.name))
    return left, right


def _fold_chains(view: View, foldable: set[str]) -> None:
    """Fold long, narrow stretches of ``foldable`` nodes into one dashed box.

    Nodes are layered by longest path; a run of more than FOLD_MIN consecutive layers that hold
    only foldable nodes, at most FOLD_WIDTH each, keeps FOLD_KEEP layers at each end and folds the
    middle. Edges into or out of the folded nodes attach to the box.
    """
    g = view.graph()
    layer: dict[str, int] = {}
    for n in nx.topological_sort(g):
        layer[n] = max((layer[p] + 1 for p in g.predecessors(n)), default=0)
    by_layer: dict[int, list[str]] = {}
    for n, k in layer.items():
        by_layer.setdefault(k, []).append(n)
    narrow = [k for k in sorted(by_layer)
              if len(by_layer[k]) <= FOLD_WIDTH and all(n in foldable for n in by_layer[k])]
    runs: list[list[int]] = []
    for k in narrow:
        if runs and runs[-1][-1] == k - 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    for run in runs:
        if len(run) <= FOLD_MIN:
            continue
        hidden = [n for k in run[FOLD_KEEP:-FOLD_KEEP] for n in by_layer[k]]
        census: dict[str, int] = {}
        for h in hidden:
            census[view.nodes[h][0]] = census.get(view.nodes[h][0], 0) + 1
        summary = ", ".join(f"{k} x{v}" for k, v in sorted(census.items(), key=lambda kv: -kv[1])[:4])
        fold_id = f"fold:{hidden[0]}"
        for h in hidden:
            del view.nodes[h]
        view.add(fold_id, f"... {len(hidden)} nodes folded", summary, "folded",
                 f"{hidden[0]} .. {hidden[-1]}: " + ", ".join(f"{k} x{v}" for k, v in census.items()))
        hidden_set = set(hidden)
        edges: list[tuple[str, str]] = []
        for a, b in view.edges:
            a2 = fold_id if a in hidden_set else a
            b2 = fold_id if b in hidden_set else b
            if a2 != b2 and (a2, b2) not in edges:
                edges.append((a2, b2))
        view.edges = edges


# -- layout --------------------------------------------------------------------------------------------
@dataclass
class Placed:
    x: dict[str, float]
    y: dict[str, float]
    w: dict[str, float]
    width: float
    height: float
    routes: dict[tuple[str, str], list[tuple[float, float]]]


def _node_width(view: View, nid: str) -> float:
    title, sub, _, _ = view.nodes[nid]
    return max(len(title), len(sub)) * CHAR_W + 20


def layout(view: View) -> Placed:
    g = view.graph()
    layer: dict[str, int] = {}
    for n in nx.topological_sort(g):
        preds = list(g.predecessors(n))
        layer[n] = max((layer[p] + 1 for p in preds), default=0)
    # Then as late as possible: every node moves down to just above its first consumer, so that
    # weights, slices of them and side branches sit next to where they are used (short edges).
    for n in reversed(list(nx.topological_sort(g))):
        if g.out_degree(n) > 0:
            layer[n] = min(layer[s] for s in g.successors(n)) - 1
    # Dummy nodes on long edges, so that ordering sees them and edges get bends.
    chains: dict[tuple[str, str], list[str]] = {}
    layers: dict[int, list[str]] = {}
    for n in nx.topological_sort(g):
        layers.setdefault(layer[n], []).append(n)
    dummy_w: dict[str, float] = {}
    for a, b in g.edges:
        path = []
        for k in range(layer[a] + 1, layer[b]):
            d = f"~{a}>{b}@{k}"
            layer[d] = k
            layers.setdefault(k, []).append(d)
            dummy_w[d] = 4.0
            path.append(d)
        chains[(a, b)] = path
    adj_up: dict[str, list[str]] = {n: [] for n in layer}
    adj_down: dict[str, list[str]] = {n: [] for n in layer}
    for (a, b), path in chains.items():
        seq = [a] + path + [b]
        for u, v in zip(seq, seq[1:]):
            adj_down[u].append(v)
            adj_up[v].append(u)
    keys = sorted(layers)
    order = {k: list(layers[k]) for k in keys}
    for sweep in range(6):  # barycenter sweeps, down then up
        down = sweep % 2 == 0
        for k in (keys[1:] if down else list(reversed(keys[:-1]))):
            ref = keys[keys.index(k) - 1] if down else keys[keys.index(k) + 1]
            ref_pos = {n: i for i, n in enumerate(order[ref])}
            own_pos = {n: i for i, n in enumerate(order[k])}
            nbrs = adj_up if down else adj_down
            score = {}
            for n in order[k]:
                ps = [ref_pos[m] for m in nbrs[n] if m in ref_pos]
                score[n] = sum(ps) / len(ps) if ps else own_pos[n]
            order[k].sort(key=score.__getitem__)
    widths = {n: dummy_w.get(n) or _node_width(view, n) for n in layer}
    x: dict[str, float] = {}
    row_w: dict[int, float] = {}
    for k in keys:
        cur = 0.0
        for n in order[k]:
            x[n] = cur + widths[n] / 2
            cur += widths[n] + NODE_GAP
        row_w[k] = cur - NODE_GAP
    total_w = max(row_w.values(), default=0.0)
    for k in keys:
        shift = (total_w - row_w[k]) / 2
        for n in order[k]:
            x[n] += shift
    y = {n: (layer[n] - keys[0]) * LAYER_GAP + NODE_H / 2 for n in layer} if keys else {}
    routes = {}
    for (a, b), path in chains.items():
        routes[(a, b)] = [(x[a], y[a] + NODE_H / 2)] + [(x[d], y[d]) for d in path] + [(x[b], y[b] - NODE_H / 2)]
    height = (keys[-1] - keys[0]) * LAYER_GAP + NODE_H if keys else NODE_H
    return Placed({n: x[n] for n in view.nodes}, {n: y[n] for n in view.nodes},
                  {n: widths[n] for n in view.nodes}, total_w, height, routes)


# -- SVG -------------------------------------------------------------------------------------------------
def svg_builtin(view: View) -> str:
    p = layout(view)
    pad = 12
    w, h = p.width + 2 * pad, p.height + 2 * pad
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0f}" height="{h:.0f}" '
           f'viewBox="0 0 {w:.0f} {h:.0f}" font-family="ui-monospace, Menlo, monospace" font-size="11">',
           '<defs><marker id="arr" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7" '
           'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#6b7280"/></marker></defs>',
           f'<g transform="translate({pad},{pad})">']
    for (a, b), pts in p.routes.items():
        d = "M" + " L".join(f"{px:.1f},{py:.1f}" for px, py in pts)
        out.append(f'<path d="{d}" fill="none" stroke="#6b7280" stroke-width="1.1" marker-end="url(#arr)"/>')
    for nid, (title, sub, kind, tip) in view.nodes.items():
        fill, stroke, dash = STYLE.get(kind, STYLE["boundary"])
        nx_, ny, nw = p.x[nid], p.y[nid], p.w[nid]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<g class="node {kind}"><title>{escape(tip or sub)}</title>'
                   f'<rect x="{nx_ - nw / 2:.1f}" y="{ny - NODE_H / 2:.1f}" width="{nw:.1f}" height="{NODE_H}" '
                   f'rx="5" fill="{fill}" stroke="{stroke}" stroke-width="1.4"{dash_attr}/>'
                   f'<text x="{nx_:.1f}" y="{ny - 3:.1f}" text-anchor="middle" font-weight="bold">{escape(title)}</text>'
                   f'<text x="{nx_:.1f}" y="{ny + 11:.1f}" text-anchor="middle" fill="#4b5563">{escape(sub)}</text></g>')
    out.append("</g></svg>")
    return "\n".join(out)


def to_dot(view: View) -> str:
    lines = ["digraph G {", '  node [shape=box, style="rounded,filled", fontname="monospace", fontsize=10];',
             "  edge [color=\"#6b7280\"];"]
    ids = {nid: f"n{i}" for i, nid in enumerate(view.nodes)}
    for nid, (title, sub, kind, tip) in view.nodes.items():
        fill, stroke, dash = STYLE.get(kind, STYLE["boundary"])
        style = "rounded,filled,dashed" if dash else "rounded,filled"
        label = f"{title}\\n{sub}".replace('"', "'")
        lines.append(f'  {ids[nid]} [label="{label}", fillcolor="{fill}", color="{stroke}", style="{style}", '
                     f'tooltip="{(tip or sub).replace(chr(34), chr(39))}"];')
    for a, b in view.edges:
        if a in ids and b in ids:
            lines.append(f"  {ids[a]} -> {ids[b]};")
    lines.append("}")
    return "\n".join(lines)


def svg_dot(view: View) -> str | None:
    exe = shutil.which("dot")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "-Tsvg"], input=to_dot(view), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0 or "<svg" not in done.stdout:
        return None
    return done.stdout[done.stdout.index("<svg"):]


def render_svg(view: View, engine: str = "auto") -> str:
    """SVG of ``view``: graphviz ``dot`` when installed (engine 'auto' or 'dot'), else the builtin."""
    if engine in ("auto", "dot"):
        svg = svg_dot(view)
        if svg is not None:
            return svg
    return svg_builtin(view)


def describe_engine(engine: str = "auto") -> str:
    return "graphviz dot" if engine in ("auto", "dot") and shutil.which("dot") else "builtin layered layout"
