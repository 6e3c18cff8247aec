"""Pure figures of head-detector scores (`patching.inspect.detectors.head_scores`).

One layer × head heatmap per detector, side by side, each on the same 0..1 sequential scale with
its own colour bar saying what the number is; hover reads "L1H2 · induction 0.83". And the
labels of the heads that fire (score >= a threshold), for other head heatmaps to show.

>>> import pandas as pd
>>> df = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "detector": ["induction"] * 4,
...                    "score": [0.1, 0.2, 0.9, 0.3]})
>>> firing_labels(df)
{(1, 0): 'induction'}
>>> [t.name for t in detector_heatmaps(df).data]
['induction']
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from patching.figures.common import SEQUENTIAL, base_layout, empty_figure

# what each detector's score is (the colour bar and the subplot title say it)
MEANINGS = {
    "previous_token": "mean attention to the previous token",
    "duplicate_token": "mean attention to the token's earlier copy",
    "induction": "mean attention to the token after its earlier copy",
}
TITLES = {"previous_token": "Previous-token", "duplicate_token": "Duplicate-token", "induction": "Induction"}
SHORT = {"previous_token": "previous-token", "duplicate_token": "duplicate", "induction": "induction"}
FIRES = 0.4                       # a head "is" a detector's kind from this score up
MAX_TEXT_CELLS = 16 * 16          # beyond this many heads per map, no score in the cells (hover keeps it)


def head_name(layer: int, head: int) -> str:
    """'L1H2'.

    >>> head_name(1, 2)
    'L1H2'
    """
    return f"L{int(layer)}H{int(head)}"


def firing_labels(df: pd.DataFrame, threshold: float = FIRES) -> dict[tuple[int, int], str]:
    """(layer, head) -> the detectors it scores >= threshold on, best first ('induction',
    'previous-token / induction'); heads that fire on none are absent.

    >>> import pandas as pd
    >>> firing_labels(pd.DataFrame({"layer": [0, 0], "head": [1, 1], "detector": ["induction", "previous_token"],
    ...                             "score": [0.5, 0.7]}))
    {(0, 1): 'previous-token / induction'}
    """
    hits = df[df.score >= threshold].sort_values("score", ascending=False, kind="stable")
    out: dict[tuple[int, int], list[str]] = {}
    for row in hits.itertuples(index=False):
        out.setdefault((int(row.layer), int(row.head)), []).append(SHORT.get(row.detector, str(row.detector)))
    return {key: " / ".join(names) for key, names in sorted(out.items())}


def uniform_score(name: str, half_length: int) -> float:
    """What a head attending evenly to every earlier position (BOS included) would score: the
    mean of 1 / (dest + 1) over the detector's destinations — the floor to read a score against.

    >>> round(uniform_score("previous_token", 20), 3), round(uniform_score("induction", 20), 3)
    (0.083, 0.033)
    """
    dests = range(1, 2 * half_length + 1) if name == "previous_token" else range(half_length + 1, 2 * half_length + 1)
    return sum(1 / (d + 1) for d in dests) / len(dests)


def _matrix(d: pd.DataFrame, layers: list[int], heads: list[int]) -> np.ndarray:
    table = d.pivot_table(index="layer", columns="head", values="score", aggfunc="mean")
    return table.reindex(index=layers, columns=heads).to_numpy(dtype=float)


GAP = 0.12                        # between panels: room for a colour bar and its two-line title


def _colorbar(i: int, n: int, name: str) -> dict:
    """A thin colour bar just right of subplot i (of n), titled with what the score means
    (broken after 'attention to', so it fits beside a short map)."""
    width = (1 - GAP * (n - 1)) / n
    text = MEANINGS.get(name, name).replace("attention to ", "attention to<br>", 1)
    return dict(title=dict(text=text, side="right", font=dict(size=11)),
                x=i * (width + GAP) + width + 0.01, xanchor="left", thickness=10, len=1,
                outlinewidth=0, tickvals=[0, 0.5, 1])


def _panel_title(name: str, d: pd.DataFrame) -> str:
    """'Induction · best L1H2 0.83' (the best head of one detector's scores)."""
    best = d.loc[d.score.idxmax()]
    return f"{TITLES.get(name, name)} · best {head_name(best.layer, best['head'])} {best.score:.2f}"


def detector_heatmaps(df: pd.DataFrame, title: str | None = None) -> go.Figure:
    """One layer × head heatmap per detector in `df` (columns layer, head, detector, score), side
    by side, 0..1 on the sequential scale, layer 0 at the top; hover 'L1H2 · induction 0.83'.

    >>> import pandas as pd
    >>> df = pd.DataFrame({"layer": [0, 1], "head": [0, 0], "detector": ["induction"] * 2, "score": [0.2, 0.8]})
    >>> detector_heatmaps(df).data[0].text[1][0]
    'L1H0 · induction 0.80'
    """
    if df.empty:
        return empty_figure("No detector scores to show.")
    names = list(dict.fromkeys(df.detector))
    layers, heads = sorted(int(v) for v in df.layer.unique()), sorted(int(v) for v in df["head"].unique())
    fig = make_subplots(rows=1, cols=len(names), horizontal_spacing=GAP, shared_yaxes=True,
                        subplot_titles=[_panel_title(n, df[df.detector == n]) for n in names])
    show_scores = len(layers) * len(heads) <= MAX_TEXT_CELLS
    for i, name in enumerate(names):
        z = _matrix(df[df.detector == name], layers, heads)
        text = [[f"{head_name(l, h)} · {SHORT.get(name, name)} {z[r, c]:.2f}" for c, h in enumerate(heads)]
                for r, l in enumerate(layers)]
        fig.add_trace(go.Heatmap(
            z=z, x=[f"H{h}" for h in heads], y=[f"L{l}" for l in layers], name=name, text=text,
            hovertemplate="%{text}<extra></extra>", zmin=0, zmax=1, colorscale=SEQUENTIAL,
            colorbar=_colorbar(i, len(names), name), xgap=1, ygap=1,
            texttemplate="%{z:.2f}" if show_scores else None, textfont=dict(size=11)), row=1, col=i + 1)
    fig.update_yaxes(autorange="reversed", type="category", showgrid=False, ticks="")
    fig.update_xaxes(type="category", showgrid=False, ticks="", title_text="head")
    fig.update_yaxes(title_text="layer", row=1, col=1)
    height = int(min(900, max(420, 34 * len(layers) + 200)))
    fig = base_layout(fig, title, height)
    fig.update_layout(margin=dict(r=90))
    fig.update_annotations(font=dict(size=13))          # room for the last colour bar and its title
    return fig


__all__ = ["detector_heatmaps", "firing_labels", "head_name", "uniform_score", "MEANINGS", "FIRES"]
