"""The head clustergram: a heatmap of heads' effect profiles in leaf order, its dendrogram beside it.

>>> from patching.inspect.clustergram import clustergram
>>> fig = clustergram_figure(clustergram(result))
>>> [t.type for t in fig.data][-1]
'heatmap'
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from patching.figures.common import DIVERGING, base_layout, empty_figure

MAX_TEXT_COLUMNS = 24           # column labels drawn up to this many profile columns (hover keeps them)


def dendrogram_lines(linkage: np.ndarray) -> tuple[list[float], list[float]]:
    """(x, y) of the dendrogram's segments, None-separated: x = merge distance, y = leaf rows
    (0 = the first leaf in leaf order), as scipy's dendrogram lays them out.

    >>> dendrogram_lines(np.array([[0., 1., 2., 2.]]))
    ([0.0, 2.0, 2.0, 0.0, None], [0.0, 0.0, 1.0, 1.0, None])
    """
    from scipy.cluster.hierarchy import dendrogram
    d = dendrogram(linkage, no_plot=True)
    xs, ys = [], []
    for ic, dc in zip(d["icoord"], d["dcoord"]):
        xs += [float(v) for v in dc] + [None]
        ys += [(float(v) - 5.0) / 10.0 for v in ic] + [None]
    return xs, ys


def clustergram_figure(cg, title: str | None = None) -> go.Figure:
    """Heads (rows, leaf order, labelled 'L1H2' or 'L1H2 · induction') × profile columns on the
    diverging scale centred at 0, with the dendrogram on the left (merge distance grows leftwards)
    and the head labels between them."""
    if cg is None or len(cg.heads) < 2:
        return empty_figure("Not enough heads to cluster.")
    n, f = cg.profile.shape
    labels = [cg.label(h) for h in cg.heads]
    # the head labels sit between the dendrogram and the heatmap: room for the longest (~7 px a
    # character on a ~1000 px wide figure)
    gap = min(0.3, 0.02 + 0.007 * max(len(t) for t in labels))
    fig = make_subplots(rows=1, cols=2, column_widths=[0.2, 0.8], horizontal_spacing=gap)
    xs, ys = dendrogram_lines(cg.linkage)
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="#374151", width=1.2),
                             hoverinfo="skip", showlegend=False), row=1, col=1)
    finite = np.abs(cg.profile[np.isfinite(cg.profile)])
    zmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    hover = np.array([[f"{labels[i]}<br>{cg.features[j]}" for j in range(f)] for i in range(n)], dtype=object)
    fig.add_trace(go.Heatmap(
        z=cg.profile.tolist(), x=list(range(f)), y=list(range(n)), colorscale=DIVERGING, zmid=0, zmin=-zmax, zmax=zmax,
        customdata=hover, hovertemplate=f"%{{customdata}}<br>{cg.unit} %{{z:.4f}}<extra></extra>",
        colorbar=dict(title=dict(text=f"{cg.unit}<br>(blue: towards clean,<br>red: towards corrupt)"))),
        row=1, col=2)
    rows = dict(range=[n - 0.5, -0.5], showgrid=False, zeroline=False)
    fig.update_yaxes(**rows, showticklabels=False, row=1, col=1)
    fig.update_yaxes(**rows, tickmode="array", tickvals=list(range(n)), ticktext=labels, row=1, col=2)
    top = max((v for v in xs if v is not None), default=1.0) or 1.0
    fig.update_xaxes(range=[top * 1.05, 0], title=f"{cg.spec.linkage} linkage · {cg.spec.distance}",
                     showgrid=False, zeroline=False, row=1, col=1)
    fig.update_xaxes(tickmode="array", tickvals=list(range(f)) if f <= MAX_TEXT_COLUMNS else None,
                     ticktext=list(cg.features) if f <= MAX_TEXT_COLUMNS else None, tickangle=-45,
                     showticklabels=f <= MAX_TEXT_COLUMNS, title=None if f <= MAX_TEXT_COLUMNS else
                     f"{f} profile columns (hover for each)", row=1, col=2)
    what = "each pair" if cg.spec.profile == "pairs" else "the mean over pairs"
    return base_layout(fig, title or f"Heads clustered by {cg.unit} ({what}) · {n} heads",
                       height=int(min(1600, max(380, 22 * n + 200))))


__all__ = ["clustergram_figure", "dendrogram_lines"]
