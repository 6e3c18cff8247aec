"""What every figure shares: the font, colour scales, the base layout, the empty figure, the
dcc.Graph config (PNG / SVG export) and the token-labelled position axis.

>>> graph_config("svg")["toImageButtonOptions"]["format"]
'svg'
"""
from __future__ import annotations

import plotly.graph_objects as go

DIVERGING = "RdBu"
SEQUENTIAL = "Blues"
FONT = "Inter, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
MODES = ("raw", "normalized")


def position_label(pos: int, str_tokens) -> str:
    """'3: \\' Mary\\'' — index and token repr (spaces visible); the index keeps labels unique.

    >>> position_label(3, ["<bos>", "When", " Mary", " and"])
    "3: ' and'"
    """
    if str_tokens is not None and 0 <= pos < len(str_tokens):
        return f"{pos}: {str_tokens[pos]!r}"
    return str(pos)


def base_layout(fig: go.Figure, title: str | None = None, height: int | None = None) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.01, xanchor="left", font=dict(size=15)) if title else None,
        font=dict(family=FONT, size=12, color="#1f2937"),
        paper_bgcolor="white", plot_bgcolor="white",
        margin=dict(l=70, r=20, t=56 if title else 24, b=60),
        hoverlabel=dict(font=dict(family=FONT, size=12), bgcolor="white"),
    )
    if height:
        fig.update_layout(height=height)
    return fig


def empty_figure(message: str = "Run a sweep to see results here.", height: int = 320) -> go.Figure:
    """A blank figure with one centred message (no axes), wrapped at 80 characters a line
    (plotly does not wrap annotations: a long error would run off both sides).

    >>> empty_figure("x " * 60).layout.annotations[0].text.count("<br>")
    1
    """
    import html
    import textwrap
    fig = go.Figure()
    text = "<br>".join(html.escape(line, quote=False) for line in textwrap.wrap(str(message), 80)) or str(message)
    fig.add_annotation(text=text, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=14, color="#6b7280"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return base_layout(fig, height=height)


def graph_config(image_format: str = "png", filename: str = "patchboard") -> dict:
    """dcc.Graph config: plotly's own camera button exports PNG or SVG."""
    fmt = image_format if image_format in ("png", "svg") else "png"
    return {"displaylogo": False, "responsive": True,
            "toImageButtonOptions": {"format": fmt, "filename": filename, "scale": 2 if fmt == "png" else 1},
            "modeBarButtonsToRemove": ["lasso2d", "select2d"]}
