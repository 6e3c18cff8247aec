"""Text highlighted by value: a prompt's tokens as coloured spans (Karpathy-style) and as bars.

Input: a DataFrame of `patching.inspect.highlight` (one row per token: pos, token, value).
Colours follow the project's convention: the diverging RdBu scale centred at 0, blue = positive,
red = negative, white = 0, symmetric around 0 (so the same shade means the same |value| on both
sides); a token without a value (NaN: e.g. after an attention row's destination) stays uncoloured.
Tokens are shown with their spaces and control characters visible (`figures.lens.token_text`:
␣ for a space, \\n, \\t), and the exact value is on hover (the HTML `title`).

`highlight_spans` is the one colouring; `highlight_html` writes it as an HTML fragment (a
notebook, the CLI's --html) and the dashboard builds Dash spans from the same list.

>>> spans = highlight_spans(pd.DataFrame({"pos": [0, 1], "token": [" a", "\\n"], "value": [2.0, -1.0]}))
>>> [(s.text, s.background) for s in spans]
[('␣a', 'rgb(5, 48, 97)'), ('\\\\n', 'rgb(229, 130, 103)')]
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from patching.figures.common import DIVERGING, base_layout, empty_figure, position_label
from patching.figures.lens import sized_by_tokens, token_axis, token_text

AXIS_TITLES = {"neuron": "activation", "head_norm": "output norm", "attention": "attention",
               "effect": "effect (patched − unpatched)"}
TOKEN_WIDTH = 40           # characters of one token shown (longer ones end with …; the hover has all)
DARK = 0.3                 # |colour position − 0.5| above which the text turns white


@dataclass(frozen=True)
class TokenSpan:
    """One token as shown: visible text, its colours, the hover text; `mark`: the chosen
    position (an attention row's destination), drawn with an outline."""
    pos: int
    text: str
    value: float | None
    background: str          # css colour ("transparent" without a value)
    colour: str              # text colour
    title: str               # hover: position, token, value
    mark: bool = False
    line_break: bool = False  # the token holds a newline: the text continues on the next line


def scale_max(values) -> float:
    """The |value| the ends of the scale stand for: the largest finite |value| (1 when all are 0).

    >>> scale_max([0.5, -2.0, float("nan")])
    2.0
    """
    v = np.abs(np.asarray(values, dtype=float))
    v = v[np.isfinite(v)]
    return float(v.max()) if len(v) and v.max() > 0 else 1.0


def colour_of(value: float, vmax: float) -> tuple[str, str]:
    """(background, text colour) of `value` on the diverging scale whose ends are ±vmax.

    >>> colour_of(0.0, 1.0), colour_of(1.0, 1.0)[1]
    (('rgb(247, 247, 247)', '#111827'), 'white')
    """
    if value is None or not math.isfinite(value):
        return "transparent", "#6b7280"
    t = min(1.0, max(0.0, 0.5 + 0.5 * value / vmax))
    return sample_colorscale(DIVERGING, [t])[0], ("white" if abs(t - 0.5) > DARK else "#111827")


def highlight_spans(df: pd.DataFrame, *, mark: int | None = None, vmax: float | None = None) -> list[TokenSpan]:
    """The tokens of a highlight frame in position order, coloured by `value` (scale ends ±vmax,
    default the largest |value|); `mark` outlines that position."""
    rows = df.sort_values("pos")
    vmax = scale_max(rows["value"]) if vmax is None else vmax
    tokens = [str(t) for t in rows["token"]]
    spans = []
    for pos, tok, value in zip(rows["pos"], tokens, rows["value"]):
        value = None if value is None or not math.isfinite(float(value)) else float(value)
        bg, fg = colour_of(value, vmax)
        shown = f"{value:.4g}" if value is not None else "no value (not attended: after the destination)"
        spans.append(TokenSpan(int(pos), token_text(tok, TOKEN_WIDTH), value, bg, fg,
                               f"{int(pos)}: {token_text(tok, TOKEN_WIDTH)} · {shown}", mark is not None and pos == mark,
                               "\n" in tok))
    return spans


SPAN_STYLE = ("display:inline-block;white-space:pre;font-family:ui-monospace,Menlo,Consolas,monospace;"
              "font-size:13px;padding:1px 3px;margin:1px 1px;border-radius:3px;")
MARK_STYLE = "outline:2px solid #111827;outline-offset:1px;"


def span_style(span: TokenSpan) -> dict:
    """A span's css as a dict (Dash's `style`).

    >>> span_style(TokenSpan(0, "a", 1.0, "red", "white", "t"))["backgroundColor"]
    'red'
    """
    style = dict(item.split(":", 1) for item in SPAN_STYLE.rstrip(";").split(";"))
    style = {_camel(k): v for k, v in style.items()}
    style.update(backgroundColor=span.background, color=span.colour)
    if span.mark:
        style.update(outline="2px solid #111827", outlineOffset="1px")
    return style


def _camel(name: str) -> str:
    head, *rest = name.split("-")
    return head + "".join(part.title() for part in rest)


def legend_text(df: pd.DataFrame, vmax: float | None = None) -> str:
    """One line under the text: what the colours mean, with the numbers the ends stand for.

    >>> legend_text(pd.DataFrame({"value": [0.5, -2.0]}))
    'blue = positive, red = negative, white = 0; the darkest shade is |value| = 2 (max 0.5, min -2)'
    """
    vmax = scale_max(df["value"]) if vmax is None else vmax
    v = df["value"].astype(float)
    return (f"blue = positive, red = negative, white = 0; the darkest shade is |value| = {vmax:.4g} "
            f"(max {np.nanmax(v):.4g}, min {np.nanmin(v):.4g})")


def highlight_html(df: pd.DataFrame, *, mark: int | None = None, title: str | None = None) -> str:
    """The highlighted text as a standalone HTML fragment (inline styles; every text escaped).

    >>> frag = highlight_html(pd.DataFrame({"pos": [0], "token": ["<b>"], "value": [1.0], "label": ["x"]}))
    >>> "&lt;b&gt;" in frag and "title=" in frag
    True
    """
    spans = highlight_spans(df, mark=mark)
    title = title if title is not None else (str(df["label"].iloc[0]) if "label" in df and len(df) else "")
    parts = []
    for s in spans:
        style = f"{SPAN_STYLE}background:{s.background};color:{s.colour};" + (MARK_STYLE if s.mark else "")
        parts.append(f'<span style="{style}" title="{html.escape(s.title)}">{html.escape(s.text)}</span>')
        if s.line_break:
            parts.append("<br>")
    return (f'<div class="patchboard-highlight"><p><b>{html.escape(title)}</b></p>'
            f'<div style="line-height:1.9">{"".join(parts)}</div>'
            f'<p style="color:#6b7280;font-size:12px">{html.escape(legend_text(df))}</p></div>')


def highlight_bars(df: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """The same values as bars by position (blue ≥ 0, red < 0), every position ticked with its token."""
    if df.empty:
        return empty_figure("No tokens to show.")
    tokens = [str(t) for t in df["token"]]
    x = [str(p) for p in df["pos"]]
    values = df["value"].astype(float).to_numpy()
    hover = [position_label(int(p), tokens) if int(p) < len(tokens) else str(p) for p in df["pos"]]
    fig = go.Figure(go.Bar(
        x=x, y=np.nan_to_num(values), marker_color=["#2563eb" if v >= 0 else "#dc2626" for v in np.nan_to_num(values)],
        customdata=[[h, "n/a" if not math.isfinite(v) else f"{v:.4g}"] for h, v in zip(hover, values)],
        hovertemplate="%{customdata[0]}<br>value %{customdata[1]}<extra></extra>"))
    token_axis(fig, x, tokens)
    fig.update_xaxes(title_text="position (token)")
    source = str(df["source"].iloc[0]) if "source" in df else ""
    fig.update_yaxes(title_text=AXIS_TITLES.get(source, "value"), zeroline=True, zerolinecolor="#9ca3af")
    title = title or (str(df["label"].iloc[0]) if "label" in df else "Highlighted values")
    return sized_by_tokens(base_layout(fig, title, 380), len(x), extra_px=160)


__all__ = ["TokenSpan", "highlight_spans", "highlight_html", "highlight_bars", "span_style", "legend_text",
           "colour_of", "scale_max"]
