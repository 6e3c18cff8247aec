"""Pure plotly figures for the neuron explorer and the weight-based views.

Each function takes a DataFrame of `patching.inspect.neurons` / `patching.inspect.weights` and returns a
`go.Figure` (or, for tables, DataTable columns and records). Same conventions as `figures.py`:
signed values on the diverging scale centred at 0, magnitudes on the sequential scale.

>>> fig = composition_heatmap(composition_scores(model), "k")          # doctest: +SKIP
>>> fig = neuron_profile_heatmap(neuron_profile(acts, 2, 17))           # doctest: +SKIP
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from patching.figures.common import DIVERGING, SEQUENTIAL, base_layout, empty_figure
from patching.figures.lens import token_text

MAX_TEXT_CELLS = 40 * 40       # beyond this many cells, no cell text (hover keeps it)


def _absmax(values) -> float:
    v = np.abs(np.asarray(values, dtype=float))
    v = v[np.isfinite(v)]
    return float(v.max()) if v.size and v.max() > 0 else 1.0


# -- neurons ----------------------------------------------------------------------------------------
def top_neurons_bars(df: pd.DataFrame, value: str = "mean") -> go.Figure:
    """Horizontal bars of `top_neurons`: one bar per neuron (rank 1 on top), error bar = std.

    >>> top_neurons_bars(top_neurons(acts, 1, -1, k=10)).data[0].y[0]    # doctest: +SKIP
    'N17'
    """
    if df.empty:
        return empty_figure("No neurons to show.")
    d = df.sort_values("rank")
    labels = [f"N{n}" for n in d.neuron]
    err = d["std"].fillna(0).to_numpy() if value == "mean" else None
    fig = go.Figure(go.Bar(
        x=d[value], y=labels, orientation="h", marker_color="#2563eb",
        error_x=dict(type="data", array=err, visible=err is not None, color="#9ca3af"),
        customdata=np.stack([d["mean"], d["max"], d["frac_active"]], -1),
        hovertemplate="%{y}<br>mean %{customdata[0]:.4f}<br>max %{customdata[1]:.4f}"
                      "<br>active on %{customdata[2]:.0%}<extra></extra>"))
    layer, pos = int(d.layer.iloc[0]), d["pos"].iloc[0]
    where = "every token" if pd.isna(pos) else (f"position {int(pos)}" if pos >= 0 else
                                                 f"position {int(pos)} (from each prompt's end)")
    fig.update_yaxes(autorange="reversed", title=None)
    fig.update_xaxes(title=f"activation ({value.replace('_', ' ')} over {int(d.n_rows.iloc[0])} rows)",
                     zeroline=True, zerolinecolor="#9ca3af")
    return base_layout(fig, f"Top neurons · layer {layer} · {where}", height=max(320, 24 * len(d) + 140))


def neuron_profile_heatmap(df: pd.DataFrame) -> go.Figure:
    """`neuron_profile` as a prompt × position heatmap (prompts of different lengths end-aligned
    is not assumed: columns are absolute positions, blank past a prompt's end); cell text = token.
    """
    if df.empty:
        return empty_figure("No activations to show.")
    n_prompts, n_pos = int(df.prompt.max()) + 1, int(df.pos.max()) + 1
    z = np.full((n_prompts, n_pos), np.nan)
    text = np.full((n_prompts, n_pos), "", dtype=object)
    z[df.prompt, df.pos] = df.activation
    text[df.prompt, df.pos] = [token_text(t, 6) for t in df.token]
    hover = np.full((n_prompts, n_pos), "", dtype=object)
    hover[df.prompt, df.pos] = [f"{int(p)}: {token_text(t, 24)}" for p, t in zip(df.pos, df.token)]
    labels = (df.drop_duplicates("prompt").sort_values("prompt")
              .apply(lambda r: f"{int(r.prompt)}" + (f" ({r.label})" if r.label else ""), axis=1).tolist())
    zmax = _absmax(df.activation)
    show_text = n_prompts * n_pos <= MAX_TEXT_CELLS
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(n_pos)), y=labels, text=text, texttemplate="%{text}" if show_text else None,
        textfont=dict(size=10), colorscale=DIVERGING, zmid=0, zmin=-zmax, zmax=zmax,
        customdata=hover, hovertemplate="activation %{z:.4f}<br>prompt %{y} · %{customdata}<extra></extra>",
        colorbar=dict(title=dict(text="activation<br>(blue +, red −,<br>white 0)"))))
    fig.update_yaxes(autorange="reversed", title="prompt", type="category")
    fig.update_xaxes(title="position", dtick=1 if n_pos <= 40 else None)
    layer, neuron = int(df.layer.iloc[0]), int(df.neuron.iloc[0])
    return base_layout(fig, f"Neuron L{layer}N{neuron} on every token",
                        height=int(min(1400, max(320, 26 * n_prompts + 160))))


def top_activating_table(df: pd.DataFrame) -> tuple[list[dict], list[dict]]:
    """(columns, records) for a DataTable; the token is bold in its context (markdown).

    >>> top_activating_table(top_activating(acts, 1, 7))[1][0]["context"]    # doctest: +SKIP
    'Paris is a city in the **␣country**'
    """
    def md(s: str) -> str:
        return "".join("\\" + c if c in "\\`*_{}[]()#+-.!|<>~" else c for c in s)

    records = [{"rank": int(r.rank), "prompt": int(r.prompt), "label": r.label, "pos": int(r.pos),
                "token": r.token, "activation": round(float(r.activation), 4),
                "context": f"{md(r.left)}**{md(token_text(r.token, 24))}**{md(r.right)}"}
               for r in df.itertuples()]
    columns = [{"name": "rank", "id": "rank"}, {"name": "activation", "id": "activation"},
               {"name": "context (token in bold)", "id": "context", "presentation": "markdown"},
               {"name": "label", "id": "label"}, {"name": "prompt", "id": "prompt"},
               {"name": "pos", "id": "pos"}]
    return columns, records


def cluster_scatter(df: pd.DataFrame) -> go.Figure:
    """`cluster_prompts` as a scatter coloured by label; hover shows the prompt."""
    if df.empty:
        return empty_figure("No prompts to show.")
    method = df.method.iloc[0]
    fig = px.scatter(df, x="x", y="y", color="label", custom_data=["prompt", "label", "token", "text"],
                     color_discrete_sequence=px.colors.qualitative.Dark24)
    fig.update_traces(hovertemplate="prompt %{customdata[0]} · %{customdata[1]}<br>"
                                    "token %{customdata[2]} of: %{customdata[3]}<extra></extra>")
    fig.update_traces(marker=dict(size=9, line=dict(width=0.5, color="white")))
    if method == "pca":
        fig.update_xaxes(title=f"PC1 ({df.explained_x.iloc[0]:.0%} of variance)")
        fig.update_yaxes(title=f"PC2 ({df.explained_y.iloc[0]:.0%} of variance)")
    else:
        fig.update_xaxes(title="t-SNE 1")
        fig.update_yaxes(title="t-SNE 2")
    pos = int(df["pos"].iloc[0])
    return base_layout(fig, f"{'PCA' if method == 'pca' else 't-SNE'} of {len(df)} prompts · layer "
                             f"{int(df.layer.iloc[0])} neurons at position {pos}", height=520)


def shortlist_figure(df: pd.DataFrame) -> go.Figure:
    """`neuron_shortlist`: attribution estimate vs exact patching per neuron (normalized when the
    baselines differ), one pair of bars per neuron in attribution-rank order."""
    if df.empty:
        return empty_figure("No neurons to show.")
    d = df.sort_values("attribution_rank")
    labels = [f"L{l}N{n}" for l, n in zip(d.layer, d.neuron)]
    gap = d.clean_baseline.iloc[0] - d.corrupt_baseline.iloc[0]
    norm = abs(gap) > 1e-12
    att = (d.attribution - d.corrupt_baseline) / gap if norm else d.attribution
    exact = d.exact_normalized if norm else d.exact
    fig = go.Figure([
        go.Bar(x=labels, y=att, name="attribution (estimate)", marker_color="#93c5fd"),
        go.Bar(x=labels, y=exact, name="exact patching", marker_color="#1d4ed8"),
    ])
    fig.update_layout(barmode="group", legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0))
    fig.update_yaxes(title="normalized (1 = as clean)" if norm else d.metric.iloc[0], zeroline=True,
                     zerolinecolor="#9ca3af")
    fig.update_xaxes(title="neuron (by attribution rank)", type="category")
    return base_layout(fig, f"Neuron shortlist · {d.direction.iloc[0]} · {d.metric.iloc[0]} · "
                             f"{int(d.n_pairs.iloc[0])} pairs", height=420)


# -- weights ----------------------------------------------------------------------------------------
def composition_heatmap(df: pd.DataFrame, composition: str = "all") -> go.Figure:
    """Composition scores as source-head × destination-head heatmaps (one panel per kind)."""
    kinds = ["q", "k", "v"] if composition == "all" else [composition]
    d = df[df.composition.isin(kinds)]
    if d.empty:
        return empty_figure("No composition: the model needs at least two layers.")
    src = list(dict.fromkeys(d.sort_values(["src_layer", "src_head"]).src_label))
    dst = list(dict.fromkeys(d.sort_values(["dst_layer", "dst_head"]).dst_label))
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=[f"{k.upper()}-composition" for k in kinds],
                        shared_yaxes=True, horizontal_spacing=0.04)
    zmax = float(d.score.max())
    for i, k in enumerate(kinds, 1):
        grid = d[d.composition == k].pivot(index="src_label", columns="dst_label", values="score")
        grid = grid.reindex(index=src, columns=dst)
        fig.add_trace(go.Heatmap(z=grid.to_numpy(), x=dst, y=src, coloraxis="coloraxis",
                                 hovertemplate=f"{k.upper()}: %{{y}} → %{{x}}<br>score %{{z:.4f}}<extra></extra>"),
                      row=1, col=i)
    fig.update_layout(coloraxis=dict(colorscale=SEQUENTIAL, cmin=0, cmax=zmax, colorbar=dict(title="score")))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_yaxes(title="source head (writes)", row=1, col=1)
    fig.update_xaxes(type="category", title="destination head (reads)")
    return base_layout(fig, "Composition scores (Elhage et al. 2021)",
                        height=int(min(1400, max(360, 16 * len(src) + 200))))


def singular_values_figure(df: pd.DataFrame, layer: int | None = None, head: int | None = None) -> go.Figure:
    """Singular values per head: one line per head (a layer's heads, or one head highlighted)."""
    if df.empty:
        return empty_figure("No singular values.")
    d = df if layer is None else df[df.layer == layer]
    fig = go.Figure()
    for label, g in d.groupby("label", sort=False):
        chosen = head is not None and int(g["head"].iloc[0]) == head and (layer is None or int(g.layer.iloc[0]) == layer)
        fig.add_trace(go.Scatter(
            x=g["index"], y=g["value"], mode="lines+markers", name=label,
            line=dict(width=3 if chosen else 1.2), opacity=1 if chosen or head is None else 0.35,
            customdata=g[["energy", "cumulative"]].to_numpy(),
            hovertemplate=f"{label} σ%{{x}} = %{{y:.4f}}<br>energy %{{customdata[0]:.1%}}, "
                          f"cumulative %{{customdata[1]:.1%}}<extra></extra>"))
    fig.update_xaxes(title="singular value index", dtick=1 if d["index"].max() <= 32 else None)
    fig.update_yaxes(title="singular value", rangemode="tozero")
    circuit = df.circuit.iloc[0].upper()
    where = "every layer" if layer is None else f"layer {layer}"
    return base_layout(fig, f"{circuit} circuit singular values · {where}", height=420)


def singular_tokens_table(df: pd.DataFrame) -> tuple[list[dict], list[dict]]:
    """(columns, records): one row per direction and side, the top tokens joined."""
    records = []
    for (direction, side), g in df.groupby(["direction", "side"], sort=True):
        g = g.sort_values("rank")
        records.append({"direction": int(direction), "singular_value": round(float(g.singular_value.iloc[0]), 4),
                        "side": side, "matrix": g.matrix.iloc[0],
                        "tokens": "  ".join(token_text(t, 16) for t in g.token)})
    columns = [{"name": n, "id": n} for n in ("direction", "singular_value", "side", "matrix", "tokens")]
    return columns, records


def bar_token_labels(tokens, token_ids) -> list[str]:
    """One category label per bar: the token's text, with its id where two texts would merge (plotly
    draws one bar per distinct category).

    >>> bar_token_labels([" a", "<0xE2>", " a"], [5, 7, 9])
    ['␣a #5', '<0xE2>', '␣a #9']
    """
    shown = [token_text(t, 14) for t in tokens]
    counts = pd.Series(shown).value_counts()
    return [f"{s} #{int(i)}" if counts[s] > 1 else s for s, i in zip(shown, token_ids)]


def singular_tokens_figure(df: pd.DataFrame) -> go.Figure:
    """Top tokens of each singular direction: one bar panel per (direction, side)."""
    if df.empty:
        return empty_figure("No directions.")
    keys = list(df.groupby(["direction", "side"], sort=True).groups)
    fig = make_subplots(rows=len({k[0] for k in keys}), cols=2, horizontal_spacing=0.18, vertical_spacing=0.08,
                        subplot_titles=[f"σ{d} {s}" for d, s in keys])
    sides = sorted({k[1] for k in keys}, key=lambda s: ["input", "query", "output", "key"].index(s))
    for d, s in keys:
        g = df[(df.direction == d) & (df.side == s)].sort_values("rank")
        fig.add_trace(go.Bar(x=g.score, y=bar_token_labels(g.token, g.token_id), orientation="h",
                             marker_color="#2563eb" if s in ("output", "key") else "#059669", showlegend=False,
                             customdata=g.token_id,
                             hovertemplate=f"σ{d} {s}: %{{y}} (token id %{{customdata}})<br>"
                                           "score %{x:.4f}<extra></extra>"),
                      row=int(d) + 1, col=sides.index(s) + 1)
    fig.update_yaxes(autorange="reversed", type="category")
    label = df.label.iloc[0]
    return base_layout(fig, f"{label} {df.circuit.iloc[0].upper()} circuit: top tokens per singular direction",
                        height=max(360, 230 * len({k[0] for k in keys}) + 80))


def rank_k_figure(df: pd.DataFrame) -> go.Figure:
    """`rank_k_head`: metric change and pattern change (total variation) against the rank."""
    if df.empty:
        return empty_figure("No ranks.")
    d = df.sort_values("rank")
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=d["rank"], y=d.change, mode="lines+markers", name=f"Δ {d.metric.iloc[0]}",
                             line=dict(color="#dc2626")), secondary_y=False)
    fig.add_trace(go.Scatter(x=d["rank"], y=d.pattern_tv, mode="lines+markers", name="pattern change (TV)",
                             line=dict(color="#2563eb")), secondary_y=True)
    fig.add_trace(go.Scatter(x=d["rank"], y=d.energy_kept, mode="lines", name="QK energy kept",
                             line=dict(color="#9ca3af", dash="dot")), secondary_y=True)
    fig.update_xaxes(title="rank k of the QK circuit", dtick=1 if d["rank"].max() <= 32 else None)
    fig.update_yaxes(title=f"Δ {d.metric.iloc[0]} (vs the model)", secondary_y=False, zeroline=True)
    fig.update_yaxes(title="pattern TV / energy kept", secondary_y=True, range=[0, 1.05])
    fig.update_layout(legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0))
    return base_layout(fig, f"{d.label.iloc[0]} with a rank-k QK circuit · {d.run.iloc[0]} prompts, "
                             f"{int(d.n_pairs.iloc[0])} pairs", height=420)


def rank_k_pattern_figure(df: pd.DataFrame) -> go.Figure:
    """`rank_k_pattern`: original, rank-k and difference patterns side by side (dest × src)."""
    if df.empty:
        return empty_figure("No pattern.")
    T = int(df.dest.max()) + 1
    toks = df.drop_duplicates("dest").sort_values("dest").dest_token.tolist()
    labels = [f"{i}: {token_text(t, 10)}" for i, t in enumerate(toks)]

    def grid(col):
        z = np.full((T, T), np.nan)
        z[df.dest, df.src] = df[col]
        return z

    rank = int(df["rank"].iloc[0])
    fig = make_subplots(rows=1, cols=3, shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=["original", f"rank {rank}", "difference"])
    for i, col in enumerate(("original", "approx"), 1):
        fig.add_trace(go.Heatmap(z=grid(col), x=labels, y=labels, coloraxis="coloraxis",
                                 hovertemplate="attention %{z:.3f}<br>from %{y}<br>to %{x}<extra></extra>"), row=1, col=i)
    dmax = _absmax(df["diff"])
    fig.add_trace(go.Heatmap(z=grid("diff"), x=labels, y=labels, coloraxis="coloraxis2",
                             hovertemplate=f"rank {rank} − original %{{z:+.3f}}<br>from %{{y}}<br>to %{{x}}"
                                           "<extra></extra>"), row=1, col=3)
    fig.update_layout(coloraxis=dict(colorscale=SEQUENTIAL, cmin=0, cmax=1,
                                     colorbar=dict(title=dict(text="attention"), len=0.48, y=1, yanchor="top")),
                      coloraxis2=dict(colorscale=DIVERGING, cmid=0, cmin=-dmax, cmax=dmax,
                                      colorbar=dict(title=dict(text=f"rank {rank} − original<br>(0 = same)"),
                                                    len=0.48, y=0, yanchor="bottom")))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category", showticklabels=T <= 30)
    return base_layout(fig, f"L{int(df.layer.iloc[0])}H{int(df['head'].iloc[0])} pattern, pair "
                             f"{int(df.pair.iloc[0])}: original vs rank {rank}", height=max(380, 18 * T + 160))


__all__ = ["top_neurons_bars", "neuron_profile_heatmap", "top_activating_table", "cluster_scatter",
           "shortlist_figure", "composition_heatmap", "singular_values_figure", "singular_tokens_table",
           "singular_tokens_figure", "rank_k_figure", "rank_k_pattern_figure"]
