"""Pure figures of the Circuit tab: the component grid to select from, the faithfulness curve, and
the EAP edge graph.

- `component_grid`: layers down the y axis, heads then one MLP column across; colour = effect
  (diverging, white = none, grey = not measured); every cell's `customdata` is its component's
  name, and an invisible marker on every cell carries the component's name in
  `customdata`, so a click (`clickData`) or a box selection (`selectedData`) names components;
  kept components are outlined.
- `feature_grid`: the same for SAE units (features, error nodes): layer x rank, each layer's
  strongest units by |effect| named in their cells (a d_sae-wide grid would not read).
- `curve_figure`: faithfulness against k (components added in ranked order), with the full (1)
  and empty (0) levels.
- `edge_graph_figure`: nodes at x = layer, y = head (MLPs above the heads, the embedding and the
  logits at either end), edges coloured by sign and as wide as |score|.

>>> fig = component_grid({Component(0, "head", 1): 0.5}, n_layers=2, n_heads=4)   # doctest: +SKIP
>>> fig.data[1].customdata[1]                                                    # doctest: +SKIP
'L0H1'
"""
from __future__ import annotations

import math

import plotly.graph_objects as go

from patching.methods.circuit import Component, CurveResult, EdgeGraph

from patching.figures.common import DIVERGING, base_layout, empty_figure

KEPT = "#111827"
POSITIVE, NEGATIVE = "#2563eb", "#dc2626"


def _absmax(values) -> float:
    finite = [abs(v) for v in values if v is not None and v == v]
    return max(finite) if finite and max(finite) > 0 else 1.0


def cell_component(layer: int, column: int, n_heads: int) -> Component:
    """The component at a grid cell: columns 0..H-1 are heads, column H the MLP.

    >>> cell_component(2, 4, 4).name
    'MLP2'
    """
    return Component(layer, "mlp") if column == n_heads else Component(layer, "head", column)


def component_grid(effects: dict, *, n_layers: int, n_heads: int, selected=(), title: str | None = None,
                   value_label: str = "effect") -> go.Figure:
    """Effects {Component: float} on a layer x (heads + MLP) grid; `selected` components outlined.
    ATTN{l} effects fill every head cell of layer l."""
    cols = n_heads + 1
    z = [[None] * cols for _ in range(n_layers)]
    for c, v in effects.items():
        if not 0 <= c.layer < n_layers:
            continue
        if c.kind == "head" and c.head < n_heads:
            z[c.layer][c.head] = v
        elif c.kind == "mlp":
            z[c.layer][n_heads] = v
        elif c.kind == "attn":
            for h in range(n_heads):
                z[c.layer][h] = v
    zmax = _absmax([v for row in z for v in row])
    x_labels = [f"H{h}" for h in range(n_heads)] + ["MLP"]
    names_grid = [[cell_component(l, c, n_heads).name for c in range(cols)] for l in range(n_layers)]
    missing = [[1 if v is None else None for v in row] for row in z]      # cells without an effect: grey
    fig = go.Figure(go.Heatmap(
        z=missing, x=list(range(cols)), y=list(range(n_layers)), customdata=names_grid, showscale=False,
        colorscale=[[0, "#eef0f3"], [1, "#eef0f3"]], hoverongaps=False, xgap=1, ygap=1,
        hovertemplate="%{customdata}: no effect measured<extra></extra>", name="no effect"))
    fig.add_trace(go.Heatmap(
        z=z, x=list(range(cols)), y=list(range(n_layers)), customdata=names_grid,
        colorscale=DIVERGING, zmid=0, zmin=-zmax, zmax=zmax,
        colorbar=dict(title=dict(text=value_label, side="right"), thickness=12), hoverongaps=False,
        hovertemplate="%{customdata}<br>" + value_label + " %{z:.4f}<extra></extra>", xgap=1, ygap=1,
        name="effects"))
    names, xs, ys, texts = [], [], [], []
    for layer in range(n_layers):
        for col in range(cols):
            c = cell_component(layer, col, n_heads)
            v = z[layer][col]
            names.append(c.name)
            xs.append(col)
            ys.append(layer)
            texts.append(f"{c.name}<br>{value_label} " + ("–" if v is None else f"{v:.4f}"))
    fig.add_trace(go.Scatter(
        x=xs, y=ys, mode="markers", customdata=names, text=texts, hovertemplate="%{text}<extra></extra>",
        marker=dict(symbol="square", size=22, color="rgba(0,0,0,0)"), showlegend=False, name="cells",
        selected=dict(marker=dict(opacity=1)), unselected=dict(marker=dict(opacity=1))))
    kept = []
    for c in selected:
        kept += [Component(c.layer, "head", h) for h in range(n_heads)] if c.kind == "attn" else [c]
    kx = [c.head if c.kind == "head" else n_heads for c in kept if 0 <= c.layer < n_layers]
    ky = [c.layer for c in kept if 0 <= c.layer < n_layers]
    fig.add_trace(go.Scatter(x=kx, y=ky, mode="markers", hoverinfo="skip", showlegend=False, name="kept",
                             marker=dict(symbol="square-open", size=26, color=KEPT, line=dict(width=3))))
    base_layout(fig, title, height=max(260, 60 + 46 * n_layers))
    fig.update_xaxes(tickvals=list(range(cols)), ticktext=x_labels, title_text="head", showgrid=False,
                     zeroline=False, range=[-0.5, cols - 0.5])
    fig.update_yaxes(tickvals=list(range(n_layers)), ticktext=[f"L{l}" for l in range(n_layers)],
                     title_text="layer", autorange="reversed", showgrid=False, zeroline=False)
    fig.update_layout(dragmode="select", clickmode="event", uirevision="circuit-grid")
    return fig


def feature_grid(effects: dict, *, k: int = 10, selected=(), title: str | None = None,
                 value_label: str = "effect") -> go.Figure:
    """SAE units' effects {Component: float} (features L1F12, error nodes L1ERR) as layer × rank:
    each layer's k strongest units by |effect|, named in their cells; kept ones outlined (shapes); every
    cell's component name in `customdata` (clicks and box selections name them, as in
    `component_grid`).

    >>> fig = feature_grid({Component(0, "feature", 3): 0.5, Component(0, "error"): -1.0}, k=2)
    >>> list(fig.data[1].customdata)
    ['L0ERR', 'L0F3']
    """
    by_layer: dict[int, list] = {}
    for c, v in effects.items():
        if c.kind in ("feature", "error") and v == v:
            by_layer.setdefault(c.layer, []).append((c, v))
    if not by_layer:
        return empty_figure("No SAE unit has an effect to rank.")
    layers = sorted(by_layer)
    top = {l: sorted(by_layer[l], key=lambda cv: -abs(cv[1]))[:k] for l in layers}
    cols = max(len(t) for t in top.values())
    z = [[top[l][r][1] if r < len(top[l]) else None for r in range(cols)] for l in layers]
    names = [[top[l][r][0].name if r < len(top[l]) else "" for r in range(cols)] for l in layers]
    zmax = _absmax([v for row in z for v in row])
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(cols)), y=list(range(len(layers))), customdata=names, text=names,
        texttemplate="%{text}", colorscale=DIVERGING, zmid=0, zmin=-zmax, zmax=zmax, hoverongaps=False,
        colorbar=dict(title=dict(text=value_label, side="right"), thickness=12), xgap=1, ygap=1,
        hovertemplate="%{customdata}<br>" + value_label + " %{z:.4f}<extra></extra>", name="effects"))
    cells = [(r, i, names[i][r], z[i][r]) for i in range(len(layers)) for r in range(cols) if names[i][r]]
    fig.add_trace(go.Scatter(
        x=[r for r, *_ in cells], y=[i for _, i, *_ in cells], mode="markers", customdata=[n for *_, n, _ in cells],
        text=[f"{n}<br>{value_label} {v:.4f}" for *_, n, v in cells], hovertemplate="%{text}<extra></extra>",
        marker=dict(symbol="square", size=22, color="rgba(0,0,0,0)"), showlegend=False, name="cells",
        selected=dict(marker=dict(opacity=1)), unselected=dict(marker=dict(opacity=1))))
    kept = {c.name for c in selected}
    fig.update_layout(shapes=[dict(type="rect", x0=r - 0.48, x1=r + 0.48, y0=i - 0.46, y1=i + 0.46,
                                   line=dict(color=KEPT, width=3), layer="above")
                              for r, i, n, _ in cells if n in kept])
    base_layout(fig, title or f"SAE units: each layer's {k} strongest by |{value_label}|",
                height=max(260, 80 + 46 * len(layers)))
    fig.update_xaxes(tickvals=list(range(cols)), ticktext=[f"#{r + 1}" for r in range(cols)], showgrid=False,
                     title_text="rank in the layer (by |effect|)", zeroline=False, range=[-0.5, cols - 0.5])
    fig.update_yaxes(tickvals=list(range(len(layers))), ticktext=[f"L{l}" for l in layers], title_text="layer",
                     autorange="reversed", showgrid=False, zeroline=False)
    fig.update_layout(dragmode="select", clickmode="event", uirevision="circuit-grid")
    return fig


def curve_figure(curve: CurveResult | None, *, title: str | None = None) -> go.Figure:
    """Faithfulness against the number of kept components (k), hover: the component added."""
    if curve is None or not curve.ks:
        return empty_figure("Run to see the faithfulness curve.")
    f = curve.faithfulness
    labels = ["(none)" if k == 0 else curve.components[k - 1].name for k in curve.ks]
    hover = [f"k={k}: +{lab}<br>faithfulness {v:.4f}<br>{curve.metric} {m:.4f}"
             for k, lab, v, m in zip(curve.ks, labels, f, curve.values.tolist())]
    fig = go.Figure(go.Scatter(x=list(curve.ks), y=[None if v != v else v for v in f], mode="lines+markers",
                               text=hover, hovertemplate="%{text}<extra></extra>", name="faithfulness",
                               line=dict(color=POSITIVE, width=2.5), marker=dict(size=7)))
    for level, name in ((1.0, "full model"), (0.0, "all ablated")):
        fig.add_hline(y=level, line=dict(color="#9ca3af", dash="dot", width=1),
                      annotation_text=name, annotation_position="bottom right")
    keep = f" (always kept: {len(curve.keep)})" if curve.keep else ""
    base_layout(fig, title or f"Faithfulness as components are added · {curve.ablation} ablation{keep}", height=340)
    many = len(curve.ks) > 24
    fig.update_xaxes(title_text="components kept (k)", tickvals=None if many else list(curve.ks),
                     ticktext=None if many else [str(k) if k == 0 else f"{k}<br>{lab}" for k, lab in zip(curve.ks, labels)],
                     showgrid=True, gridcolor="#f3f4f6")
    fig.update_yaxes(title_text="faithfulness", showgrid=True, gridcolor="#f3f4f6", zeroline=False)
    return fig


def edge_graph_figure(graph: EdgeGraph | None, *, title: str | None = None) -> go.Figure:
    """The thresholded EAP graph: one line per edge (blue positive, red negative; width ~ |score|),
    nodes labelled by name."""
    if graph is None:
        return empty_figure("Compute edges (EAP) or open an attribution run with edges.")
    if graph.edges.empty:
        return empty_figure(f"No edge has |score| ≥ {graph.threshold:.4g} (of {graph.n_edges_total}); "
                            "lower the threshold.")
    fig = go.Figure()
    biggest = float(graph.edges.abs_score.max()) or 1.0
    for sign, colour in ((1, POSITIVE), (-1, NEGATIVE)):
        part = graph.edges[(graph.edges.score >= 0) if sign > 0 else (graph.edges.score < 0)]
        for r in part.itertuples(index=False):          # a trace per edge: widths differ
            width = 0.8 + 5.0 * math.sqrt(r.abs_score / biggest)
            fig.add_trace(go.Scatter(
                x=[r.x0, r.x1], y=[r.y0, r.y1], mode="lines", line=dict(color=colour, width=width),
                opacity=0.75, hoverinfo="skip", showlegend=False))
    mid = graph.edges.assign(mx=(graph.edges.x0 + graph.edges.x1) / 2, my=(graph.edges.y0 + graph.edges.y1) / 2)
    fig.add_trace(go.Scatter(
        x=mid.mx, y=mid.my, mode="markers", marker=dict(size=6, color="rgba(0,0,0,0)"), showlegend=False,
        text=[f"{r.upstream} → {r.downstream} ({r.via})<br>score {r.score:.4f}"
              + ("" if r.normalized != r.normalized else f"<br>normalized {r.normalized:.3f}")
              for r in mid.itertuples(index=False)], hovertemplate="%{text}<extra></extra>", name="edges"))
    colours = {"embed": "#6b7280", "head": "#111827", "kv": "#4b5563", "mlp": "#7c3aed", "logits": "#059669"}
    fig.add_trace(go.Scatter(
        x=graph.nodes.x, y=graph.nodes.y, mode="markers+text", text=graph.nodes.node, textposition="top center",
        marker=dict(size=13, color=[colours.get(k, "#111827") for k in graph.nodes.kind],
                    line=dict(color="white", width=1.5)),
        hovertemplate="%{text}<extra></extra>", showlegend=False, name="nodes", textfont=dict(size=11)))
    shown = len(graph.edges)
    base_layout(fig, title or f"EAP edges with |{'score' if graph.by == 'abs' else 'normalized score'}| ≥ "
                 f"{graph.threshold:.4g}: {shown} of {graph.n_edges_total}", height=max(360, 70 * (graph.n_heads + 2)))
    fig.update_xaxes(tickvals=[-1] + [x for l in range(graph.n_layers) for x in (l, l + 0.5)] + [graph.n_layers],
                     ticktext=["embed"] + [t for l in range(graph.n_layers) for t in (f"L{l}", f"MLP{l}")] + ["logits"],
                     showgrid=False, zeroline=False, range=[-1.5, graph.n_layers + 0.5])
    fig.update_yaxes(tickvals=list(range(graph.n_heads)) + [graph.n_heads],
                     ticktext=[f"H{h}" for h in range(graph.n_heads)] + ["MLP"], autorange="reversed",
                     showgrid=False, zeroline=False, range=None)
    return fig


__all__ = ["component_grid", "curve_figure", "edge_graph_figure", "cell_component"]
