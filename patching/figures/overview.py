"""The attention overview (CircuitsVis-like): every layer × head's pattern as a small panel.

Input: `patching.inspect.lens.attention_overview`'s DataFrame (one prompt, ATTENTION_COLUMNS).
Each panel is one head's dest × src pattern, destination tokens down the side of the first
column, source tokens along the bottom row, the causal upper triangle blank, and a colour bar of
its own: by default each panel's scale runs 0..its own largest weight (a diffuse head stays
visible next to a sharp one; the bar's top tick says what the darkest blue is; the first
destination is left out of that maximum, since the first token can only attend to itself, with
weight 1), or 0..1 for all (`scale="shared"`). Two layouts: "grid" (a row per layer, a column per head) and "pair" (two
layers side by side: a row per head, the first layer's heads on the left). `overview_panels`
gives the panels in trace order, so a click's curve number names the head it hit.

>>> fig = attention_overview_figure(attention_overview(model, prompts))        # doctest: +SKIP
>>> overview_panels([0, 1], 2, "pair")
[(0, 0), (1, 0), (0, 1), (1, 1)]
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from patching.core.nodes import head_label
from patching.figures.common import SEQUENTIAL, base_layout, empty_figure
from patching.figures.lens import token_text

LAYOUTS = ("grid", "pair")
SCALES = ("panel", "shared")
LABEL_PX = 10              # a tick label's height: panels thin their token labels below this spacing
BAR_PX = 58                # room right of each panel for its colour bar and its ticks
TITLE_PX = 22              # room above each panel for its title


def overview_panels(layers: list[int], n_heads: int, layout: str = "grid") -> list[tuple[int, int]]:
    """(layer, head) of each panel in trace order: grid row by row (layer-major), pair row by row
    (head-major, the two layers side by side).

    >>> overview_panels([2], 3)
    [(2, 0), (2, 1), (2, 2)]
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if layout == "pair":
        if len(layers) != 2:
            raise ValueError(f"the side-by-side layout shows two layers, not {len(layers)}: {layers}")
        return [(l, h) for h in range(n_heads) for l in layers]
    return [(l, h) for l in layers for h in range(n_heads)]


def panel_at(click: dict | None, layers: list[int], n_heads: int, layout: str = "grid") -> tuple[int, int] | None:
    """The (layer, head) a click on the overview hit (Dash clickData), None without a click.

    >>> panel_at({"points": [{"curveNumber": 5}]}, [0, 1], 4)
    (1, 1)
    """
    points = (click or {}).get("points") or []
    panels = overview_panels(layers, n_heads, layout)
    if not points or not 0 <= int(points[0].get("curveNumber", -1)) < len(panels):
        return None
    return panels[int(points[0]["curveNumber"])]


def _axis_labels(tokens: list[str]) -> list[str]:
    return [f"{p}: {token_text(t, 8)}" for p, t in enumerate(tokens)]


def _ticks(labels: list[str], panel_px: int) -> list[str]:
    """Every label when they fit the panel, else every k-th (the hover names every cell)."""
    step = max(1, int(np.ceil(len(labels) * LABEL_PX / panel_px)))
    return labels[::step]


def attention_overview_figure(df: pd.DataFrame, *, layout: str = "grid", layers: list[int] | None = None,
                              scale: str = "panel", title: str | None = None) -> go.Figure:
    """Small multiples of every (or `layers`') head's pattern; see the module docstring."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, not {scale!r}")
    if df.empty:
        return empty_figure("No attention patterns to show.")
    present = list(dict.fromkeys(int(l) for l in df["layer"]))
    layers = present if layers is None else [int(l) for l in layers]
    missing = [l for l in layers if l not in present]
    if missing:
        raise ValueError(f"layer {missing[0]} is not in these patterns (layers {', '.join(map(str, present))})")
    n_heads = int(df["head"].max()) + 1
    panels = overview_panels(layers, n_heads, layout)
    rows, cols = (len(layers), n_heads) if layout == "grid" else (n_heads, 2)
    toks = df[["dest", "dest_token"]].drop_duplicates("dest").sort_values("dest")
    tokens = [str(t) for t in toks["dest_token"]]
    n_pos = len(tokens)
    labels = _axis_labels(tokens)
    panel_px = int(min(320, max(150, LABEL_PX * n_pos)) if layout == "grid" else min(440, max(240, 14 * n_pos)))
    left, right, top, bottom = 100, 6, 100, 120
    width = left + right + cols * (panel_px + BAR_PX)
    height = top + bottom + rows * (panel_px + TITLE_PX)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[head_label(l, h) for l, h in panels],
                        horizontal_spacing=BAR_PX / (width - left - right),
                        vertical_spacing=TITLE_PX / (height - top - bottom))
    dest, src = df["dest"].to_numpy(), df["src"].to_numpy()
    hover = ("%{meta[0]}<br>dest %{y}<br>src %{x}<br>attention %{z:.3f}<extra></extra>")
    for i, (layer, head) in enumerate(panels):
        r, c = divmod(i, cols)
        sel = ((df["layer"] == layer) & (df["head"] == head)).to_numpy()
        z = np.full((n_pos, n_pos), np.nan)
        z[dest[sel], src[sel]] = df["value"].to_numpy()[sel]
        # the first token attends only to itself (always 1): a panel's scale is read from the others
        zmax = float(np.nanmax(z[1:])) if scale == "panel" and n_pos > 1 else 1.0
        zmax = zmax if zmax > 0 else 1.0
        xd, yd = fig.get_subplot(r + 1, c + 1).xaxis.domain, fig.get_subplot(r + 1, c + 1).yaxis.domain
        bar = dict(x=xd[1] + 3 / width, xanchor="left", y=(yd[0] + yd[1]) / 2, len=(yd[1] - yd[0]),
                   lenmode="fraction", thickness=7, outlinewidth=0, tickfont=dict(size=9),
                   tickvals=[0, zmax], ticktext=["0", f"{zmax:.2f}"])
        fig.add_trace(go.Heatmap(
            z=z, x=labels, y=labels, colorscale=SEQUENTIAL, zmin=0, zmax=zmax, meta=[head_label(layer, head)],
            hovertemplate=hover, hoverongaps=False, colorbar=bar,
            showscale=scale == "panel" or i == 0), r + 1, c + 1)
        fig.update_yaxes(autorange="reversed", type="category", showgrid=False, ticks="", tickfont=dict(size=9),
                         tickmode="array", tickvals=_ticks(labels, panel_px), showticklabels=(c == 0),
                         row=r + 1, col=c + 1)
        fig.update_xaxes(type="category", showgrid=False, ticks="", tickfont=dict(size=9), tickangle=-90,
                         tickmode="array", tickvals=_ticks(labels, panel_px), showticklabels=(r == rows - 1),
                         row=r + 1, col=c + 1)
    fig.update_annotations(font=dict(size=11))
    what = "every layer and head" if layout == "grid" else f"layers {layers[0]} and {layers[1]} side by side"
    colour = ("each panel on its own scale: 0..its largest weight after the first row" if scale == "panel"
              else "one scale, 0..1")
    title = title or (f"Attention overview · {what} · {df.run.iloc[0]} run · pair {int(df.pair.iloc[0])}<br>"
                      f"<sup>rows: destination, columns: source · click a panel to enlarge it</sup><br><sup>{colour}</sup>")
    fig = base_layout(fig, title, height)
    fig.update_layout(width=width, autosize=False, margin=dict(l=left, r=right, t=top, b=bottom))
    return fig


def attention_zoom(df: pd.DataFrame, layer: int, head: int) -> go.Figure:
    """One head of the overview, enlarged: the attention view's grid of that head alone (0..1,
    every token labelled).

    >>> attention_zoom(attention_overview(model, prompts), 1, 2).layout.title.text[:13]   # doctest: +SKIP
    'Attention · L1'
    """
    from patching.figures.lens import attention_grid
    one = df[(df["layer"] == layer) & (df["head"] == head)]
    if one.empty:
        return empty_figure(f"{head_label(layer, head)} is not in these patterns.")
    title = (f"Attention · {head_label(layer, head)} · {one.run.iloc[0]} run · pair {int(one.pair.iloc[0])} "
             "(rows: destination, columns: source)")
    fig = attention_grid(one, heads=[head], cols=1, title=title)
    fig.layout.annotations = ()          # the grid's "H2" panel title: the figure's title names the head
    return fig


__all__ = ["attention_overview_figure", "attention_zoom", "overview_panels", "panel_at", "LAYOUTS", "SCALES"]
