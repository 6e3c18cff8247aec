"""Pure plotly figures for the inspection views (the DataFrames of `patching.inspect.lens`).

Same conventions as `figures.py`: layers run down the y axis (embedding at the top), positions
are labelled ``"3: ' Mary'"``, probabilities use a sequential 0..1 scale, signed effects the
diverging scale centred at 0. Every function takes a lens DataFrame and returns a `go.Figure`
(or, for the top-k table, plain rows for a `dash_table.DataTable`).

>>> fig = lens_heatmap(logit_lens(model, prompts), value="top_prob")   # doctest: +SKIP
>>> fig.data[0].text[0][0]               # the top token of a cell   # doctest: +SKIP
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from patching.figures.common import DIVERGING, SEQUENTIAL, base_layout, empty_figure, position_label

LENS_VALUES = {
    "top_prob": "top token's probability",
    "answer_prob": "answer's probability",
    "answer_logit": "answer's logit",
    "answer_rank": "answer's rank",
}
COMPONENTS = ("all", "blocks", "heads")
PX_PER_TOKEN = 58          # a lens column's width once the prompt is long: fits 8 characters at 10 px
FIT_TOKENS = 16            # up to this many positions the figure fills the panel (no fixed width)
MIN_TEXT_ROW_PX = 15       # rows lower than this drop their cell text (hover keeps it)
RUN_COLOURS = {"clean": "#2563eb", "corrupt": "#dc2626"}


def token_text(tok: str, width: int = 8) -> str:
    """A token as cell text: spaces visible (␣), escapes shown, cut to `width` characters.

    >>> token_text(" Mary"), token_text("\\n"), token_text(" international", 6)
    ('␣Mary', '\\\\n', '␣inte…')
    """
    shown = repr(str(tok))[1:-1].replace(" ", "␣") or "∅"
    return shown if len(shown) <= width else shown[:width - 1] + "…"


def _pos_labels(df: pd.DataFrame, pos_col: str = "pos", tok_col: str = "token") -> list[str]:
    pairs = df[[pos_col, tok_col]].drop_duplicates(pos_col).sort_values(pos_col)
    toks = dict(zip(pairs[pos_col], pairs[tok_col]))
    n = int(pairs[pos_col].max()) + 1 if len(pairs) else 0
    return [position_label(p, [toks.get(i, "") for i in range(n)]) for p in range(n)]


def _row_order(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["label"]))      # the engine's order: embed, L0 ..., L1 ...


def select_components(df: pd.DataFrame, components: str = "all") -> pd.DataFrame:
    """Rows of a per-layer lens: "blocks" (embed, attn, mlp), "heads", or "all".

    >>> select_components(df, "heads").component.unique()       # doctest: +SKIP
    array(['head'], dtype=object)
    """
    if components not in COMPONENTS:
        raise ValueError(f"components must be one of {', '.join(COMPONENTS)}, not {components!r}")
    if components == "blocks":
        return df[df.component != "head"]
    if components == "heads":
        return df[df.component == "head"]
    return df


def _height(n_rows: int) -> int:
    return int(min(1600, max(320, 26 * n_rows + 170)))


def token_axis(fig: go.Figure, x_values: list, tokens, **where) -> None:
    """Tick every position of a category axis (values `x_values`, one per token) as 'index: token'
    with odd characters made visible (␣ for spaces, \\n, \\r): plotly would thin a crowded axis.
    Ticks turn vertical once there are many.

    >>> f = go.Figure(go.Heatmap(z=[[0, 1]], x=["0", "1"])); token_axis(f, ["0", "1"], [" Mary", chr(13)])
    >>> f.layout.xaxis.ticktext
    ('0: ␣Mary', '1: \\\\r')
    """
    n = len(x_values)
    labels = [f"{p}: {token_text(tokens[p], 16)}" if p < len(tokens) else str(p) for p in range(n)]
    fig.update_xaxes(type="category", tickmode="array", tickvals=list(x_values), ticktext=labels,
                     tickangle=-90 if n > FIT_TOKENS else -45 if n > 8 else 0, **where)


def sized_by_tokens(fig: go.Figure, n_pos: int, extra_px: int = 300) -> go.Figure:
    """Give a long prompt's figure a fixed width (PX_PER_TOKEN per position) so its panel scrolls
    sideways instead of squeezing the cells; short prompts keep filling the panel.

    >>> sized_by_tokens(go.Figure(), 60).layout.width
    3780
    """
    if n_pos > FIT_TOKENS:
        fig.update_layout(width=n_pos * PX_PER_TOKEN + extra_px, autosize=False)
        # the colour bar at the top left, where it is on screen before any scrolling
        fig.update_traces(colorbar=dict(orientation="h", x=0, xanchor="left", y=1.0, yanchor="bottom",
                                        lenmode="pixels", len=320, thickness=10,
                                        title=dict(side="top")), selector=dict(type="heatmap"))
        fig.update_layout(margin=dict(t=110))
    return fig


def lens_heatmap(df: pd.DataFrame, value: str = "top_prob", *, components: str = "all",
                 title: str | None = None) -> go.Figure:
    """Logit lens as a (layer / component) × position heatmap; cell text = the top token.

    value: top_prob | answer_prob (0..1 scale), answer_logit (diverging, centred at 0) or
    answer_rank (log scale, rank 1 darkest). Hover shows the top token, its probability and the
    answer's logit, probability and rank. Only top_rank == 1 rows are drawn. Long prompts stay
    readable: past FIT_TOKENS positions each column is PX_PER_TOKEN wide (the panel scrolls),
    every position is ticked, and cell text is dropped only when rows are too low for it (the
    hover still has it).
    """
    if value not in LENS_VALUES:
        raise ValueError(f"value must be one of {', '.join(LENS_VALUES)}, not {value!r}")
    df = select_components(df[df.top_rank == 1], components)
    if df.empty:
        return empty_figure("No rows to show for this selection.")
    rows, x_labels = _row_order(df), _pos_labels(df)
    tokens = df[["pos", "token"]].drop_duplicates("pos").sort_values("pos")
    tokens = dict(zip(tokens.pos, tokens.token))
    tokens = [tokens.get(i, "") for i in range(len(x_labels))]
    grid = df.pivot(index="label", columns="pos").reindex(rows)
    n_pos = len(x_labels)
    cols = list(range(n_pos))

    def take(col):
        return grid[col].reindex(columns=cols).to_numpy()

    z = take(value).astype(float)
    text = [[token_text(t) if isinstance(t, str) else "" for t in r] for r in take("top_token")]
    custom = np.stack([take("top_token"), take("top_prob"), take("answer_logit"), take("answer_prob"),
                       take("answer_rank")], axis=-1)
    custom = [[[repr(c[0]) if isinstance(c[0], str) else "", *(float(v) for v in c[1:])] for c in r]
              for r in custom]
    answer = df.answer.iloc[0]
    kw: dict = dict(colorscale=SEQUENTIAL, zmin=0, zmax=1)
    colour_title = LENS_VALUES[value]
    if value == "answer_logit":
        m = float(np.nanmax(np.abs(z))) or 1.0
        kw = dict(colorscale=DIVERGING, zmid=0, zmin=-m, zmax=m)
    elif value == "answer_rank":
        z = np.log10(z)
        top = max(float(np.nanmax(z)), 1.0)
        ticks = [v for v in (0, 1, 2, 3, 4, 5) if v <= top]
        kw = dict(colorscale=SEQUENTIAL, reversescale=True, zmin=0, zmax=top,
                  colorbar_tickvals=ticks, colorbar_ticktext=[f"{10 ** v:g}" for v in ticks])
    custom = [[[*c, position_label(j, tokens)] for j, c in enumerate(r)] for r in custom]
    hover = ("%{y} at %{customdata[5]}<br>top token %{customdata[0]} (p %{customdata[1]:.3f})<br>"
             f"answer {answer!r}: logit %{{customdata[2]:.3f}} · p %{{customdata[3]:.3f}} · "
             "rank %{customdata[4]:.0f}<extra></extra>")
    row_px = (_height(len(rows)) - 170) / max(len(rows), 1)
    text_kw = dict(text=text, texttemplate="%{text}", textfont=dict(size=10)) \
        if row_px >= MIN_TEXT_ROW_PX else {}     # else: hover only
    fig = go.Figure(go.Heatmap(
        z=z, x=x_labels, y=rows, **text_kw,
        customdata=custom, hovertemplate=hover, xgap=1, ygap=1, hoverongaps=False,
        colorbar=dict(title=dict(text=colour_title, side="right"), thickness=14, outlinewidth=0), **kw))
    fig.update_yaxes(autorange="reversed", type="category", showgrid=False, ticks="", automargin=True,
                     title_text="layer" if df["mode"].iloc[0] == "accumulated" else "component")
    fig.update_xaxes(showgrid=False, ticks="", automargin=True, title_text="position (token)")
    token_axis(fig, x_labels, tokens)
    mode = "residual stream after each layer" if df["mode"].iloc[0] == "accumulated" else \
        "direct contribution of each component"
    title = title or f"Logit lens · {mode} · {df.run.iloc[0]} run · colour: {colour_title}"
    return sized_by_tokens(base_layout(fig, title, _height(len(rows))), n_pos)


def dla_figure(df: pd.DataFrame, by: str = "layer", *, title: str | None = None) -> go.Figure:
    """Direct logit attribution: bars per block (by="layer") or a layer × head heatmap (by="head").

    Bars run embed, L0 attn, L0 mlp, ..., final bias, with the total (the model's logit
    difference) as the last, darker bar.
    """
    if by not in ("layer", "head"):
        raise ValueError(f"by must be 'layer' or 'head', not {by!r}")
    pairs = int(df.n_pairs.iloc[0])
    what = f"mean over {pairs} pairs" if df.pair.isna().all() and pairs > 1 else f"pair {df.pair.iloc[0]}" \
        if not df.pair.isna().all() else "1 pair"
    title = title or f"Direct logit attribution (answer − wrong) · {df.run.iloc[0]} run · {what}"
    if by == "layer":
        bars = df[df.kind != "head"]
        colours = ["#374151" if k == "total" else ("#2563eb" if v >= 0 else "#dc2626")
                   for k, v in zip(bars.kind, bars.value)]
        fig = go.Figure(go.Bar(x=list(bars.label), y=list(bars.value), marker_color=colours,
                               hovertemplate="%{x}<br>%{y:.4f}<extra></extra>"))
        fig.update_xaxes(type="category", title_text="component")
        fig.update_yaxes(title_text="logit difference", zeroline=True, zerolinecolor="#9ca3af")
        return base_layout(fig, title, 380)
    heads = df[df.kind == "head"]
    z = heads.pivot(index="layer", columns="head", values="value").sort_index()
    m = float(np.nanmax(np.abs(z.to_numpy()))) or 1.0
    fig = go.Figure(go.Heatmap(
        z=z.to_numpy(), x=[f"H{h}" for h in z.columns], y=[f"L{l}" for l in z.index],
        colorscale=DIVERGING, zmid=0, zmin=-m, zmax=m, xgap=1, ygap=1,
        hovertemplate="%{y} %{x}<br>%{z:.4f}<extra></extra>",
        colorbar=dict(title=dict(text="logit difference", side="right"), thickness=14, outlinewidth=0)))
    fig.update_yaxes(autorange="reversed", type="category", title_text="layer", showgrid=False)
    fig.update_xaxes(type="category", title_text="head", showgrid=False)
    return base_layout(fig, title, _height(len(z.index)))


TOPK_TABLE_COLUMNS = ("rank", "pred_token", "pred_id", "logit", "logprob", "prob")


def topk_table(df: pd.DataFrame) -> tuple[list[dict], list[dict]]:
    """Top-k rows for a `dash_table.DataTable`: (columns, records); tokens shown as repr.

    >>> columns, data = topk_table(top_k(model, prompts, k=3))     # doctest: +SKIP
    >>> data[0]["pred_token"]                                      # doctest: +SKIP
    "' Mary'"
    """
    columns = [{"name": {"pred_token": "token", "pred_id": "id"}.get(c, c), "id": c,
                "type": "text" if c == "pred_token" else "numeric"} for c in TOPK_TABLE_COLUMNS]
    data = [{"rank": int(r.rank), "pred_token": repr(r.pred_token), "pred_id": int(r.pred_id),
             "logit": round(float(r.logit), 4), "logprob": round(float(r.logprob), 4),
             "prob": round(float(r.prob), 4)} for r in df.itertuples()]
    return columns, data


def topk_bars(df: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """The top-k tokens' probabilities as horizontal bars (most likely on top)."""
    if df.empty:
        return empty_figure("No tokens.")
    labels = [f"{r}. {t!r}" for r, t in zip(df["rank"], df.pred_token)]
    fig = go.Figure(go.Bar(x=list(df.prob), y=labels, orientation="h", marker_color="#2563eb",
                           customdata=np.stack([df.logit, df.logprob], -1),
                           hovertemplate="%{y}<br>p=%{x:.4f}<br>logit %{customdata[0]:.3f}<br>"
                                         "logprob %{customdata[1]:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(title_text="probability", rangemode="tozero")
    pos, tok = int(df.pos.iloc[0]), df.token.iloc[0]
    title = title or f"Top {len(df)} next tokens after {pos}: {tok!r} · {df.run.iloc[0]} run"
    return base_layout(fig, title, int(max(260, 24 * len(df) + 120)))


def _matrix(df: pd.DataFrame, n_pos: int) -> np.ndarray:
    """One head's rows -> [dest, src] with the causal upper triangle as NaN."""
    m = np.full((n_pos, n_pos), np.nan)
    m[df.dest.to_numpy(), df.src.to_numpy()] = df.value.to_numpy()
    return m


def attention_grid(df: pd.DataFrame, *, heads: list[int] | None = None, cols: int = 4,
                   title: str | None = None) -> go.Figure:
    """All heads of one layer (or `heads`) as a grid of dest × src heatmaps with token labels.

    One shared 0..1 colour scale; entries above the diagonal (masked by causality) are blank.
    """
    all_heads = sorted(int(h) for h in df["head"].unique())
    heads = all_heads if heads is None else [h for h in heads if h in all_heads]
    if not heads:
        return empty_figure("No heads to show.")
    labels = _pos_labels(df, "dest", "dest_token")
    n_pos = len(labels)
    cols = max(1, min(cols, len(heads)))
    rows = math.ceil(len(heads) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"H{h}" for h in heads],
                        horizontal_spacing=0.03 + 0.02 / cols, vertical_spacing=min(0.12, 0.3 / rows))
    hover = "H%{meta}<br>dest %{y}<br>src %{x}<br>%{z:.3f}<extra></extra>"
    for i, h in enumerate(heads):
        r, c = divmod(i, cols)
        m = _matrix(df[df["head"] == h], n_pos)
        fig.add_trace(go.Heatmap(z=m, x=labels, y=labels, coloraxis="coloraxis", meta=h,
                                 hovertemplate=hover, xgap=1, ygap=1, hoverongaps=False), r + 1, c + 1)
        fig.update_yaxes(autorange="reversed", type="category", showgrid=False, ticks="",
                         showticklabels=(c == 0), row=r + 1, col=c + 1)
        fig.update_xaxes(type="category", showgrid=False, ticks="", tickangle=-60,
                         showticklabels=(r == rows - 1 or i + cols >= len(heads)), row=r + 1, col=c + 1)
    fig.update_layout(coloraxis=dict(colorscale=SEQUENTIAL, cmin=0, cmax=1,
                                     colorbar=dict(title=dict(text="attention"), thickness=12)))
    fig.update_annotations(font=dict(size=12))
    layer = int(df.layer.iloc[0])
    title = title or f"Attention · layer {layer} · {df.run.iloc[0]} run (rows: destination, columns: source)"
    per_row = max(220, min(420, 18 * n_pos + 80))
    fig = base_layout(fig, title, int(min(2400, rows * per_row + 200)))
    fig.update_layout(margin=dict(l=110, r=30, t=70, b=110))
    return fig


def attention_token_view(df: pd.DataFrame, dest: int, *, title: str | None = None) -> go.Figure:
    """One destination token's attention across heads: head × source position.

    dest may be negative (-1 = the last position).
    """
    labels = _pos_labels(df, "dest", "dest_token")
    n_pos = len(labels)
    if not -n_pos <= dest < n_pos:
        raise ValueError(f"dest {dest} is out of range: the prompt has {n_pos} tokens "
                         f"(0..{n_pos - 1}, or -1 for the last)")
    dest %= n_pos
    rows = df[df.dest == dest]
    heads = sorted(int(h) for h in df["head"].unique())
    z = np.full((len(heads), n_pos), np.nan)
    for i, h in enumerate(heads):
        sel = rows[rows["head"] == h]
        z[i, sel.src.to_numpy()] = sel.value.to_numpy()
    fig = go.Figure(go.Heatmap(
        z=z[:, :dest + 1], x=labels[:dest + 1], y=[f"H{h}" for h in heads], colorscale=SEQUENTIAL,
        zmin=0, zmax=1, xgap=1, ygap=1, hovertemplate="%{y}<br>src %{x}<br>%{z:.3f}<extra></extra>",
        colorbar=dict(title=dict(text="attention", side="right"), thickness=14, outlinewidth=0)))
    fig.update_yaxes(autorange="reversed", type="category", title_text="head", showgrid=False)
    fig.update_xaxes(type="category", title_text="source position (token)", showgrid=False,
                     tickangle=-45 if dest > 8 else 0)
    layer = int(df.layer.iloc[0])
    title = title or f"Attention from {labels[dest]} · layer {layer} · {df.run.iloc[0]} run"
    return base_layout(fig, title, _height(len(heads)))


def _norm_axes(df: pd.DataFrame, pos: int, depth: int | None):
    """Checked (pos, depth, depth labels, position labels) of a norms frame (one pair's or a band's)."""
    n_pos = int(df.pos.max()) + 1
    if not -n_pos <= pos < n_pos:
        raise ValueError(f"pos {pos} is out of range: the prompt has {n_pos} tokens "
                         f"(0..{n_pos - 1}, or -1 for the last)")
    pos %= n_pos
    depths = df[["depth", "label"]].drop_duplicates("depth").sort_values("depth")
    depth = int(depths.depth.max()) if depth is None else depth
    if depth not in set(depths.depth):
        raise ValueError(f"depth {depth} is out of range (0..{int(depths.depth.max())})")
    return pos, depth, dict(zip(depths.depth, depths.label)), _pos_labels(df[df.run == "clean"])


def _band_rgba(hex_colour: str, alpha: float = 0.18) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def norms_figure(df: pd.DataFrame, *, pos: int = -1, depth: int | None = None,
                 title: str | None = None) -> go.Figure:
    """Residual stream norms, clean vs corrupt: by depth at one position, and by position at one
    depth (default: the last, the stream the unembedding reads). Several pairs are averaged; a
    `residual_norm_bands` frame (columns mean, std) draws the mean with a ± 1 std band (cut at 0:
    a norm is never negative; the hover gives the std itself)."""
    band = "mean" in df.columns
    pos, depth, depth_label, x_pos = _norm_axes(df, pos, depth)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08, subplot_titles=[
        f"by depth at {x_pos[pos]}", f"by position at {depth_label[depth]}"])
    if band:
        mean = df.rename(columns={"mean": "norm"})
    else:
        mean = df.groupby(["run", "depth", "pos"], as_index=False).norm.mean()
    for run in ("clean", "corrupt"):
        r = mean[mean.run == run]
        style = dict(color=RUN_COLOURS[run], dash="solid" if run == "clean" else "dash")
        for col, cut, x_of in ((1, r[r.pos == pos].sort_values("depth"), lambda t: [depth_label[d] for d in t.depth]),
                               (2, r[r.depth == depth].sort_values("pos"), lambda t: [x_pos[p] for p in t.pos])):
            x = x_of(cut)
            if band:
                std = cut["std"].fillna(0).to_numpy()
                low = np.clip(cut.norm.to_numpy() - std, 0, None)       # a norm is never negative
                fig.add_trace(go.Scatter(x=x + x[::-1], y=list(cut.norm + std) + list(low[::-1]), mode="lines",
                                         fill="toself", fillcolor=_band_rgba(RUN_COLOURS[run]), line=dict(width=0),
                                         hoverinfo="skip", legendgroup=run, showlegend=False), 1, col)
            hover = (f"{run}<br>%{{x}}<br>mean %{{y:.3f}} ± %{{customdata[0]:.3f}} (std, "
                     f"%{{customdata[1]}} pairs)<extra></extra>" if band
                     else f"{run}<br>%{{x}}<br>norm %{{y:.3f}}<extra></extra>")
            extra = dict(customdata=np.stack([cut["std"].to_numpy(), cut.n_pairs.to_numpy()], -1)) if band else {}
            fig.add_trace(go.Scatter(x=x, y=cut.norm, mode="lines+markers", line=style, legendgroup=run,
                                     name=run + (" (mean ± std)" if band else ""), showlegend=col == 1,
                                     hovertemplate=hover, **extra), 1, col)
    fig.update_xaxes(type="category", tickangle=-45)
    fig.update_yaxes(title_text="L2 norm", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(rangemode="tozero", row=1, col=2)
    if band:
        n = int(df.n_pairs.max())
        title = title or (f"Residual stream norm · clean vs corrupt · mean ± std over {n} pair{'s' if n != 1 else ''}"
                          + ("" if n > 1 else " (one pair: no band)"))
    title = title or "Residual stream norm · clean vs corrupt"
    return base_layout(fig, title, 420)


__all__ = ["lens_heatmap", "dla_figure", "topk_table", "topk_bars", "attention_grid",
           "attention_token_view", "norms_figure", "select_components", "token_text", "LENS_VALUES"]
