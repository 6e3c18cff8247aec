"""HTML for notebooks: what a result shows when it is the last line of a Jupyter cell.

A compact summary (model, kind, metric, direction, baselines, the cells with the largest
effect) above the figure the dashboard draws. The figure's HTML embeds plotly.js itself
(`include_plotlyjs=True`, about 4.8 MB per displayed result): it renders with no network (no
CDN) in JupyterLab, Notebook 7, VS Code and an exported HTML file alike, where "cdn" needs the
internet and "require" needs require.js, which JupyterLab does not load. `result.plot()` returns
the bare plotly figure instead (drawn by plotly's own notebook renderer, nothing embedded), and
`result.to_html(include_plotlyjs="cdn")` makes a light page where the network is there.

This module draws nothing itself: the callers pass their figure in (`patching.figures` makes it).

>>> table_html([("kind", "head_out"), ("metric", "<b>")])
'<table class="patchboard-summary"><tr><th>kind</th><td>head_out</td></tr><tr><th>metric</th><td>&lt;b&gt;</td></tr></table>'
"""
from __future__ import annotations

import html

import pandas as pd
import torch

PLOTLYJS = True            # embed plotly.js: offline in every notebook front end (see above)
TOP_CELLS = 5
CELL_COLUMNS = ("layer", "pos", "head", "neuron", "token", "sender", "receiver", "value", "normalized", "effect")


def table_html(rows: list[tuple[str, str]]) -> str:
    """(label, value) rows as a two-column HTML table, every text escaped."""
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="patchboard-summary">{body}</table>'


def figure_html(fig, include_plotlyjs: bool | str = PLOTLYJS, config: dict | None = None) -> str:
    """A plotly figure as an HTML fragment (a <div> and its script).

    >>> import plotly.graph_objects as go
    >>> figure_html(go.Figure(), include_plotlyjs=False).startswith("<div")
    True
    """
    return fig.to_html(full_html=False, include_plotlyjs=include_plotlyjs, config=config or {})


def top_cells(result, n: int = TOP_CELLS) -> pd.DataFrame:
    """The `n` cells with the largest |effect| (patched − unpatched), from `to_dataframe`.

    >>> list(top_cells(result, 2).columns)           # doctest: +SKIP
    ['layer', 'head', 'value', 'normalized', 'effect']
    """
    df = result.to_dataframe()
    df = df[df["effect"].notna()]
    df = df.reindex(df["effect"].abs().sort_values(ascending=False).index[:n])
    keep = [c for c in CELL_COLUMNS if c in df.columns and df[c].notna().any()]
    return df[keep].reset_index(drop=True)


def _number(x: float) -> str:
    return f"{x:.4g}" if torch.isfinite(torch.tensor(x)) else "n/a"


def result_rows(result) -> list[tuple[str, str]]:
    """What a result was: model, kind, metric, direction, pairs, baselines, seconds.

    >>> [label for label, _ in result_rows(result)][:4]
    ['model', 'kind', 'metric', 'direction']
    """
    s = result.spec
    gap = result.clean_value - result.corrupt_value
    kind = s.kind + (" per position" if getattr(s, "per_position", False) else "")
    method = getattr(result, "method_label", None)
    return [("model", result.model_name or str(getattr(s, "model", "") or "?")),
            ("kind", kind + (f" ({method})" if method else "")),
            ("metric", f"{s.metric} (clean is {result.metric_clean_is})"),
            ("direction", s.direction + (" (corrupt run, clean activations patched in)" if s.direction == "denoise"
                                         else " (clean run, corrupt activations patched in)")),
            ("pairs", str(result.n_pairs)),
            ("baselines", f"clean {_number(result.clean_value)} · corrupt {_number(result.corrupt_value)} · "
                          f"gap {_number(gap)}"),
            ("seconds", f"{result.seconds:.2f}")]


def result_html(result, fig, include_plotlyjs: bool | str = PLOTLYJS, config: dict | None = None) -> str:
    """Summary table, top cells by |effect|, then the figure.

    >>> result_html(result, result.plot(), include_plotlyjs=False).count("<table")
    2
    """
    cells = top_cells(result)
    top = cells.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0,
                        classes="patchboard-top") if len(cells) else "<p>no cell was computed</p>"
    return (f'<div class="patchboard-result">{table_html(result_rows(result))}'
            f"<p><b>top cells by |effect|</b></p>{top}{figure_html(fig, include_plotlyjs, config)}</div>")


def attention_html(diff, fig, include_plotlyjs: bool | str = PLOTLYJS, config: dict | None = None) -> str:
    """Counterfactual attention: which head, pair and patch, the largest changes, then the figure.

    >>> diff = counterfactual_attention(model, prompts, 1, 0)            # doctest: +SKIP
    >>> "L1H0" in attention_html(diff, diff.plot(), include_plotlyjs=False)   # doctest: +SKIP
    True
    """
    moved = float((diff.patched - diff.corrupt).abs().max()) if diff.patched is not None else float("nan")
    rows = [("head", f"L{diff.layer}H{diff.head}"), ("pair", str(diff.pair)), ("patched", diff.patch_label),
            ("direction", diff.direction),
            ("max |clean − corrupt|", _number(float((diff.clean - diff.corrupt).abs().max()))),
            ("max |patched − corrupt|", _number(moved))]
    return f'<div class="patchboard-result">{table_html(rows)}{figure_html(fig, include_plotlyjs, config)}</div>'
