"""Exact vs attribution as a scatter: one point per cell, flagged cells coloured (pure).

x = the exact patching effect, y = attribution's estimate (both minus the base run's metric, so
0 = no effect); the diagonal is perfect agreement. Missed cells are red, invented ones orange,
under- / overestimated ones (a cell that matters, off by half or more) purple / blue, the rest grey; the hover names the cell. Shaded bands mark |effect| < small x scale (where a
cell counts as "no effect" for the flags).

>>> fig = agreement_scatter(compare_cells(exact, approx))     # doctest: +SKIP
>>> [t.name for t in fig.data]                                # doctest: +SKIP
['agree', 'missed', 'invented', 'underestimated', 'overestimated', 'y = x']
"""
from __future__ import annotations

import plotly.graph_objects as go

from patching.methods.compare import FLAGS, Agreement

from patching.figures.common import base_layout

COLOURS = {"": "#9ca3af", "missed": "#dc2626", "invented": "#f59e0b", "underestimated": "#7c3aed",
           "overestimated": "#2563eb"}
NAMES = {"": "agree", **{flag: flag for flag in FLAGS}}


def agreement_scatter(agreement: Agreement, *, height: int = 380) -> go.Figure:
    """Exact effect (x) vs estimated effect (y) per cell, flags coloured, hover = cell label."""
    fig = go.Figure()
    cells = agreement.cells
    for flag in ("",) + FLAGS:
        pts = [c for c in cells if c.flag == flag]
        fig.add_trace(go.Scatter(
            x=[c.exact for c in pts], y=[c.approx for c in pts], mode="markers", name=f"{NAMES[flag]} ({len(pts)})",
            text=[c.label for c in pts], customdata=[[c.flag or "agree"] for c in pts],
            marker=dict(color=COLOURS[flag], size=7 if flag == "" else 10, opacity=0.75 if flag == "" else 0.95,
                        line=dict(width=0.5, color="white")),
            hovertemplate="<b>%{text}</b><br>exact %{x:.4f}<br>attribution %{y:.4f}<br>%{customdata[0]}<extra></extra>"))
    values = [v for c in cells for v in (c.exact, c.approx)] or [0.0, 1.0]
    lo, hi = min(values + [0.0]), max(values + [0.0])
    pad = 0.05 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", hoverinfo="skip",
                             line=dict(color="#6b7280", dash="dot", width=1)))
    band = agreement.small * agreement.scale
    if band > 0:
        for axis in ("x", "y"):
            kw = dict(x0=-band, x1=band, y0=0, y1=1, yref="paper") if axis == "x" else \
                dict(y0=-band, y1=band, x0=0, x1=1, xref="paper")
            fig.add_shape(type="rect", fillcolor="rgba(107,114,128,0.08)", line_width=0, layer="below", **kw)
    title = (f"Exact vs attribution · {agreement.kind} · Pearson r {agreement.pearson:.3f}"
             if agreement.pearson == agreement.pearson else f"Exact vs attribution · {agreement.kind}")
    base_layout(fig, title, height)
    fig.update_xaxes(title="exact patching effect", range=[lo, hi], zeroline=True, zerolinecolor="#d1d5db",
                     gridcolor="#f3f4f6")
    fig.update_yaxes(title="attribution estimate", range=[lo, hi], zeroline=True, zerolinecolor="#d1d5db",
                     gridcolor="#f3f4f6")
    fig.update_layout(legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1))
    return fig
