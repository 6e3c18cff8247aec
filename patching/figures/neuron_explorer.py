"""Figures of the neuron explorer's dataset views (patching/inspect/datasets.py): every layer's
neurons at one token, a neuron's activation histogram, the prompts' cluster view coloured by a
neuron. Signed activations on the diverging scale centred at 0 (blue +, red −).

>>> from patching.inspect.datasets import token_activations                      # doctest: +SKIP
>>> fig = token_layers_heatmap(token_activations(acts, 0, -1))                    # doctest: +SKIP
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from patching.figures.common import DIVERGING, base_layout, empty_figure
from patching.figures.lens import token_text


def _absmax(values) -> float:
    v = np.abs(np.asarray(values, dtype=float))
    v = v[np.isfinite(v)]
    return float(v.max()) if v.size and v.max() > 0 else 1.0


def token_layers_heatmap(df: pd.DataFrame, selected: tuple[int, int] | None = None) -> go.Figure:
    """`token_activations`: layers (rows, layer 0 on top) × neurons; a click gives (layer, neuron)
    as the point's y / x; `selected` (layer, neuron) is ringed.

    >>> df = pd.DataFrame({"prompt": 0, "pos": 2, "token": " is", "layer": [0, 0, 1, 1], "neuron": [0, 1, 0, 1],
    ...                    "activation": [0.5, -1.0, 2.0, 0.0]})
    >>> token_layers_heatmap(df).data[0].z
    ([0.5, -1.0], [2.0, 0.0])
    """
    if df.empty:
        return empty_figure("No activations to show.")
    grid = df.pivot(index="layer", columns="neuron", values="activation")
    zmax = _absmax(grid.to_numpy())
    fig = go.Figure(go.Heatmap(
        z=grid.to_numpy().tolist(), x=grid.columns.tolist(), y=grid.index.tolist(), colorscale=DIVERGING, zmid=0,
        zmin=-zmax, zmax=zmax, hovertemplate="L%{y}N%{x}: activation %{z:.4f}<br>click: explore this neuron"
                                              "<extra></extra>",
        colorbar=dict(title=dict(text="activation<br>(blue +, red −)"))))
    if selected is not None:
        fig.add_trace(go.Scatter(x=[selected[1]], y=[selected[0]], mode="markers", hoverinfo="skip",
                                 marker=dict(symbol="square-open", size=14, color="#111827", line=dict(width=2)),
                                 showlegend=False))
    fig.update_yaxes(autorange="reversed", title="layer", dtick=1)
    fig.update_xaxes(title="neuron")
    r = df.iloc[0]
    return base_layout(fig, f"Every layer's neurons at token {int(r.pos)} ({token_text(r.token, 24)}) of prompt "
                            f"{int(r.prompt)}", height=int(min(700, max(260, 40 * len(grid) + 160))))


def histogram_figure(hist: pd.DataFrame, marked: float | None = None, marked_label: str = "") -> go.Figure:
    """`activation_histogram` as bars; `marked` (e.g. the selected prompt's activation) as a line.

    >>> h = pd.DataFrame({"layer": 1, "neuron": 7, "pos": pd.array([None, None], dtype="Int64"),
    ...                   "bin_low": [0.0, 1.0], "bin_high": [1.0, 2.0], "count": [3, 1]})
    >>> histogram_figure(h, 1.5).layout.shapes[0].x0
    1.5
    """
    if hist.empty:
        return empty_figure("No activations to show.")
    centres = (hist.bin_low + hist.bin_high) / 2
    fig = go.Figure(go.Bar(x=centres, y=hist["count"], width=hist.bin_high - hist.bin_low, marker_color="#2563eb",
                           customdata=hist[["bin_low", "bin_high"]].to_numpy(),
                           hovertemplate="activation %{customdata[0]:.3f} to %{customdata[1]:.3f}: "
                                         "%{y} tokens<extra></extra>"))
    if marked is not None and np.isfinite(marked):
        fig.add_vline(x=float(marked), line=dict(color="#dc2626", width=2, dash="dash"),
                      annotation_text=marked_label or f"{marked:.3f}", annotation_position="top")
    layer, neuron, pos = int(hist.layer.iloc[0]), int(hist.neuron.iloc[0]), hist["pos"].iloc[0]
    where = "every token" if pd.isna(pos) else f"position {int(pos)} of each prompt"
    fig.update_xaxes(title="activation", zeroline=True, zerolinecolor="#9ca3af")
    fig.update_yaxes(title="tokens")
    return base_layout(fig, f"L{layer}N{neuron} over {int(hist['count'].sum()):,} tokens ({where})", height=300)


def cluster_neuron_scatter(df: pd.DataFrame, selected: int | None = None) -> go.Figure:
    """`cluster_by_neuron`: prompts as points coloured by the neuron's activation (diverging,
    centred at 0); customdata[0] is the prompt (a click selects it); `selected` is ringed."""
    if df.empty:
        return empty_figure("No prompts to show.")
    zmax = _absmax(df.activation)
    text = [f"{token_text(t, 60)}" for t in df.text]
    fig = go.Figure(go.Scatter(
        x=df.x.tolist(), y=df.y.tolist(), mode="markers", showlegend=False,
        customdata=np.stack([df.prompt, df.label.astype(str), text], -1).tolist(),
        marker=dict(size=9, color=df.activation.tolist(), colorscale=DIVERGING, cmid=0, cmin=-zmax, cmax=zmax,
                    line=dict(width=0.5, color="#6b7280"),
                    colorbar=dict(title=dict(text=f"L{int(df.layer.iloc[0])}N{int(df.neuron.iloc[0])}<br>activation"))),
        hovertemplate="prompt %{customdata[0]} · %{customdata[1]}<br>%{customdata[2]}<br>activation "
                      "%{marker.color:.4f}<br>click: select this prompt<extra></extra>"))
    if selected is not None and (df.prompt == selected).any():
        r = df[df.prompt == selected].iloc[0]
        fig.add_trace(go.Scatter(x=[r.x], y=[r.y], mode="markers", hoverinfo="skip", showlegend=False,
                                 marker=dict(symbol="circle-open", size=18, color="#111827", line=dict(width=2.5))))
    method = df.method.iloc[0]
    if method == "pca":
        fig.update_xaxes(title=f"PC1 ({df.explained_x.iloc[0]:.0%} of variance)")
        fig.update_yaxes(title=f"PC2 ({df.explained_y.iloc[0]:.0%} of variance)")
    else:
        fig.update_xaxes(title="t-SNE 1 (of the PCA-50 reduction)")
        fig.update_yaxes(title="t-SNE 2")
    pos = int(df["pos"].iloc[0])
    return base_layout(fig, f"{'PCA' if method == 'pca' else 'PCA → t-SNE'} of {len(df)} prompts by layer "
                            f"{int(df.layer.iloc[0])} at position {pos}, coloured by "
                            f"L{int(df.layer.iloc[0])}N{int(df.neuron.iloc[0])}", height=440)


__all__ = ["token_layers_heatmap", "histogram_figure", "cluster_neuron_scatter"]
