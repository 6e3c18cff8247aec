"""Figures of SAE features: the top features of a feature sweep per layer, and a feature page
(activation histogram, logit effects, per-task patching effect). Pure functions of DataFrames
(`PatchResult.to_dataframe()` of kind `feature`, `patching.inspect.features`).

>>> import pandas as pd
>>> df = pd.DataFrame({"layer": [0, 0, 1], "feature": [3, 512, 7], "feature_label": ["F3", "error", "F7"],
...                    "effect": [0.5, -2.0, 1.0], "value": [0.0, 0.0, 0.0], "normalized": [0.1, -0.4, 0.2]})
>>> top_features(df, k=2)[["layer", "rank", "feature_label"]].values.tolist()
[[0, 1, 'error'], [0, 2, 'F3'], [1, 1, 'F7']]
"""
from __future__ import annotations

import html

import pandas as pd
import plotly.graph_objects as go

from patching.figures.common import DIVERGING, base_layout, empty_figure


def top_features(df: pd.DataFrame, k: int = 10) -> pd.DataFrame:
    """The k units (features or error node) of each layer with the largest |effect|, ranked."""
    if df.empty:
        return df.assign(rank=[])
    order = df.assign(size=df["effect"].abs()).sort_values(["layer", "size"], ascending=[True, False])
    top = order.groupby("layer", sort=True).head(k).copy()
    top["rank"] = top.groupby("layer").cumcount() + 1
    return top.drop(columns="size").reset_index(drop=True)


TOP_K = 10              # units per layer a feature result shows


def result_top_features(result, k: int = TOP_K) -> pd.DataFrame:
    """A `feature` result's (sweep or attribution) k strongest units per layer, ranked: its CSV
    rows (contract columns, feature, feature_label, ...) plus `rank`; per-position results rank
    (position, unit) cells, labelled F12@5.

    >>> result_top_features(feature_result, k=3)[["layer", "rank", "feature_label"]].head(1)  # doctest: +SKIP
    """
    df = result.to_dataframe()
    if "pos" in result.axes:
        df["feature_label"] = df["feature_label"] + "@" + df["pos"].astype(str)
    top = top_features(df, k)
    first = ["layer", "rank", "feature_label", "feature"]
    return top[first + [c for c in top.columns if c not in first]]


def result_heatmap(result, k: int = TOP_K, title: str | None = None, mode: str = "raw") -> go.Figure:
    """A `feature` result as layer × rank (its k strongest units per layer), not layer × d_sae;
    coloured by effect (mode "raw") or by the effect over the clean − corrupt gap ("normalized":
    +1 = a whole gap towards clean, in both directions)."""
    top = result_top_features(result, k)
    if top.empty:
        return empty_figure("No feature changed anything between the two runs.")
    gap = float(result.clean_value - result.corrupt_value)
    if mode == "normalized" and abs(gap) > 1e-12:
        top["normalized_effect"] = top["effect"] / gap
        return top_features_heatmap(top, k, title, value="normalized_effect")
    return top_features_heatmap(top, k, title)


def top_features_heatmap(df: pd.DataFrame, k: int = 10, title: str | None = None,
                         value: str = "effect") -> go.Figure:
    """Layer (rows) × rank (columns): each cell is one of the layer's k strongest units (by
    |effect|), coloured by `value` ("effect", or "normalized_effect": effect over the clean −
    corrupt gap; blue = towards clean, red = away, white = none), labelled F<index> or error."""
    top = top_features(df, k)
    if top.empty:
        return empty_figure("No feature changed anything between the two runs.")
    layers = sorted(top["layer"].unique())
    ranks = list(range(1, int(top["rank"].max()) + 1))
    grid = top.pivot(index="layer", columns="rank", values="effect").reindex(index=layers, columns=ranks)
    colour = top.pivot(index="layer", columns="rank", values=value).reindex(index=layers, columns=ranks)
    labels = top.pivot(index="layer", columns="rank", values="feature_label").reindex(index=layers, columns=ranks)
    norm = top.pivot(index="layer", columns="rank", values="normalized").reindex(index=layers, columns=ranks)
    bound = float(top[value].abs().max()) or 1.0
    hover = [[(f"layer {layer} · {labels.loc[layer, r]}<br>effect {grid.loc[layer, r]:+.3f}"
               f" (normalised {norm.loc[layer, r]:.3f})") if isinstance(labels.loc[layer, r], str) else ""
              for r in ranks] for layer in layers]
    fig = go.Figure(go.Heatmap(
        z=colour.values, x=[f"#{r}" for r in ranks], y=[f"L{layer}" for layer in layers],
        text=labels.fillna("").values, texttemplate="%{text}", customdata=hover,
        hovertemplate="%{customdata}<extra></extra>", colorscale=DIVERGING,
        zmin=-bound, zmax=bound, zmid=0,
        colorbar=dict(title=dict(text=("effect / gap" if value == "normalized_effect" else "effect")
                                 + "<br>(blue: towards clean)", side="right"))))
    fig.update_yaxes(autorange="reversed", title="layer (SAE on the block input)")
    fig.update_xaxes(title=f"the layer's {k} strongest features, by |effect|", side="top")
    base_layout(fig, title or "Top SAE features per layer (exact patching)", height=150 + 48 * len(layers))
    return fig.update_layout(margin=dict(t=100))          # the title above the top axis and its title


def histogram_figure(hist: pd.DataFrame, frac_active: float, layer: int, feature: int) -> go.Figure:
    """Bars of the feature's non-zero activations; the title says on what share of tokens it fires."""
    if hist.empty:
        return empty_figure(f"L{layer} F{feature} is never active on these prompts.")
    centres = (hist["bin_low"] + hist["bin_high"]) / 2
    fig = go.Figure(go.Bar(x=centres, y=hist["count"], width=hist["bin_high"] - hist["bin_low"],
                           marker_color="#2563eb",
                           customdata=hist[["bin_low", "bin_high"]].values,
                           hovertemplate="activation %{customdata[0]:.3f}–%{customdata[1]:.3f}: "
                                         "%{y} tokens<extra></extra>"))
    fig.update_xaxes(title="activation (non-zero only)")
    fig.update_yaxes(title="tokens")
    return base_layout(fig, f"L{layer} F{feature}: active on {frac_active:.1%} of tokens", height=300)


def logit_bars(df: pd.DataFrame, layer: int, feature: int) -> go.Figure:
    """The tokens the feature's decoder direction promotes (blue) and suppresses (red) most."""
    if df.empty:
        return empty_figure("No logit effects.")
    order = pd.concat([df[df.direction == "promoted"], df[df.direction == "suppressed"].iloc[::-1]])
    colours = ["#2563eb" if d == "promoted" else "#dc2626" for d in order["direction"]]
    tokens = [html.escape(repr(t)) for t in order["token"]]
    fig = go.Figure(go.Bar(x=order["effect"], y=tokens, orientation="h", marker_color=colours,
                           hovertemplate="%{y}: %{x:+.3f} logit per unit of activation<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title=None)
    fig.update_xaxes(title="logit change per unit activation (W_U · W_dec[f])", zeroline=True)
    return base_layout(fig, f"L{layer} F{feature}: tokens it promotes and suppresses",
                       height=120 + 22 * len(order))


def task_bars(df: pd.DataFrame, layer: int, feature: int) -> go.Figure:
    """Per task: the normalised effect of patching this one feature (1 = restores clean)."""
    if df.empty:
        return empty_figure("No tasks measured.")
    colours = ["#2563eb" if v >= 0 else "#dc2626" for v in df["normalized"]]
    fig = go.Figure(go.Bar(x=df["task"], y=df["normalized"], marker_color=colours,
                           customdata=df[["effect", "n_pairs"]].values,
                           hovertemplate="%{x}: normalised %{y:.3f}, effect %{customdata[0]:+.3f} "
                                         "over %{customdata[1]} pairs<extra></extra>"))
    fig.update_yaxes(title="normalised effect (1 = as clean)", zeroline=True)
    return base_layout(fig, f"Patching L{layer} F{feature} alone, per task", height=300)


__all__ = ["TOP_K", "result_top_features", "result_heatmap", "top_features", "top_features_heatmap", "histogram_figure", "logit_bars", "task_bars"]
