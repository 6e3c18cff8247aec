"""Pure functions from results to plotly figures: heatmaps, comparisons, attention differences.

Conventions shared by every figure here:
- layers run down the y axis (layer 0 at the top), the position axis is labelled by tokens as
  ``"3: ' Mary'"`` (index, then the token's repr, so spaces show);
- the colour is the **effect** — the change from the unpatched run (patched − corrupt when
  denoising, patched − clean when noising), in the metric's units ("raw") or as a share of the
  clean − corrupt gap ("normalized": +1 = a full gap towards clean) — on a diverging scale centred
  at 0 ("RdBu": blue towards clean / positive, red the other way) with a symmetric range, so white
  always means "patching this changed nothing", in both directions; the colour bar says so;
- every cell's hover shows the patched value, the normalized value, the effect and, for
  multi-pair runs, the 95% bootstrap interval of the paired effect;
- each cell's ``customdata`` starts with (layer, pos, head) — ``None`` where an axis does not
  apply — so click handlers read what was clicked without re-deriving the layout.

>>> fig = heatmap(result)                          # doctest: +SKIP
>>> fig.data[0].type                               # doctest: +SKIP
'heatmap'
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from patching.kinds import KINDS

if TYPE_CHECKING:         # annotations only: core.results imports the figures lazily (result.plot())
    from patching.core.results import PatchResult

from patching.figures.common import DIVERGING, MODES, SEQUENTIAL, base_layout, position_label

@dataclass(frozen=True)
class Grid:
    """A result laid out as a 2-D grid: rows (y), columns (x), and per-cell data."""
    z: np.ndarray            # [rows, cols] what is coloured: the effect (raw) or normalized effect
    raw: np.ndarray          # [rows, cols] the patched metric
    normalized: np.ndarray   # [rows, cols]
    lo: np.ndarray           # [rows, cols] interval of the effect, metric units (NaN for one pair)
    hi: np.ndarray
    x_labels: list[str]
    y_labels: list[str]
    x_title: str
    y_title: str
    cells: np.ndarray        # [rows, cols, 3] (layer, pos, head) per cell; -1 where not applicable


def grid(result: PatchResult, mode: str = "raw", with_interval: bool = True) -> Grid:
    """Lay out any result as rows x columns: layer x pos, layer x head, (layer.head) x pos, ...

    >>> g = grid(result)                               # doctest: +SKIP
    >>> g.z.shape == (len(g.y_labels), len(g.x_labels))  # doctest: +SKIP
    True
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    raw = result.values.double().numpy()
    norm = result.normalized.double().numpy()
    effect = (result.effect if mode == "raw" else result.normalized_effect).double().numpy()
    if with_interval and result.n_pairs > 1:
        lo_t, hi_t = result.bootstrap_ci()
        lo, hi = lo_t.double().numpy(), hi_t.double().numpy()
    else:
        lo = hi = np.full_like(raw, np.nan)
    axes, coords, toks = result.axes, result.coords, result.str_tokens
    layers = list(coords["layer"])
    arrays = [raw, norm, lo, hi, effect]
    if len(axes) == 2:
        other = axes[1]
        cols = list(coords[other])
        if other == "pos":
            x_labels, x_title = [position_label(p, toks) for p in cols], "position (token)"
        elif other == "head":
            x_labels, x_title = [f"H{h}" for h in cols], "head"
        else:
            x_labels, x_title = [str(c) for c in cols], other
        y_labels, y_title = [f"L{l}" for l in layers], "layer"
        cells = np.full((len(layers), len(cols), 3), -1, dtype=np.int64)
        slot = {"pos": 1, "head": 2}.get(other)
        for i, l in enumerate(layers):
            cells[i, :, 0] = l
            if slot is not None:
                cells[i, :, slot] = cols
    elif len(axes) == 3 and axes[1] == "pos":
        # (layer, pos, head): one row per layer.head, positions along x.
        last = axes[2]
        heads, positions = list(coords[last]), list(coords["pos"])
        arrays = [a.transpose(0, 2, 1).reshape(len(layers) * len(heads), len(positions)) for a in arrays]
        y_labels = [f"L{l}.H{h}" if last == "head" else f"L{l}.{last[0]}{h}" for l in layers for h in heads]
        y_title = "layer.head" if last == "head" else f"layer.{last}"
        x_labels, x_title = [position_label(p, toks) for p in positions], "position (token)"
        cells = np.full((len(y_labels), len(positions), 3), -1, dtype=np.int64)
        for i, (l, h) in enumerate((l, h) for l in layers for h in heads):
            cells[i, :, 0], cells[i, :, 1], cells[i, :, 2] = l, positions, h
    else:
        raise ValueError(f"cannot lay out axes {axes} as a heatmap")
    raw, norm, lo, hi, effect = arrays
    return Grid(effect, raw, norm, lo, hi, x_labels, y_labels, x_title, y_title, cells)


def _absmax(*arrays: np.ndarray) -> float:
    finite = [np.abs(a[np.isfinite(a)]) for a in arrays]
    m = max((float(f.max()) for f in finite if f.size), default=0.0)
    return m if m > 0 else 1.0


def _nan_to_none(a: np.ndarray) -> list:
    return [[None if not math.isfinite(v) else float(v) for v in row] for row in a]


def _customdata(g: Grid) -> list:
    """[rows][cols] -> [layer, pos, head, raw, normalized, lo, hi, effect] (None where missing)."""
    out = []
    for i in range(g.z.shape[0]):
        row = []
        for j in range(g.z.shape[1]):
            l, p, h = (int(v) if v >= 0 else None for v in g.cells[i, j])
            vals = [g.raw[i, j], g.normalized[i, j], g.lo[i, j], g.hi[i, j], g.z[i, j]]
            row.append([l, p, h] + [float(v) if math.isfinite(v) else None for v in vals])
        out.append(row)
    return out


def _hovertemplate(g: Grid, multi_pair: bool, effect_label: str = "effect") -> str:
    lines = [f"{g.y_title} %{{y}}", f"{g.x_title} %{{x}}",
             "patched %{customdata[3]:.4f} (normalized %{customdata[4]:.3f})",
             f"{effect_label} %{{customdata[7]:+.4f}}"]
    if multi_pair:
        lines.append("95% CI of the effect [%{customdata[5]:.4f}, %{customdata[6]:.4f}]")
    return "<br>".join(lines) + "<extra></extra>"


def effect_label(result: PatchResult, mode: str) -> str:
    """What the colour is, for a colour bar. Raw: the scale is centred on the unpatched run's
    value (white = no change from it), and the bar names that value.

    >>> effect_label(result, "normalized")
    'effect, normalized<br>(+1 = the clean − corrupt gap,<br>towards clean)'
    >>> effect_label(result, "raw").split("<br>")[:2]
    ['effect on logit_diff', '(patched − corrupt run)']
    """
    if mode == "normalized":
        return "effect, normalized<br>(+1 = the clean − corrupt gap,<br>towards clean)"
    base = "corrupt" if result.spec.direction == "denoise" else "clean"
    value = result.corrupt_value if base == "corrupt" else result.clean_value
    return f"effect on {result.spec.metric}<br>(patched − {base} run)<br>white = the {base} run: {value:.3g}"


def heatmap_trace(g: Grid, *, zmax: float, multi_pair: bool, coloraxis: str | None = None,
                  colorbar_title: str = "", hover_effect: str = "effect") -> go.Heatmap:
    kw = dict(coloraxis=coloraxis) if coloraxis else dict(
        colorscale=DIVERGING, zmid=0, zmin=-zmax, zmax=zmax,
        colorbar=dict(title=dict(text=colorbar_title, side="right"), thickness=14, outlinewidth=0))
    return go.Heatmap(z=_nan_to_none(g.z), x=g.x_labels, y=g.y_labels, customdata=_customdata(g),
                      hovertemplate=_hovertemplate(g, multi_pair, hover_effect), xgap=1, ygap=1,
                      hoverongaps=False, **kw)


def _title(result: PatchResult) -> str:
    spec = result.spec
    kind = KINDS[spec.kind].title if spec.kind in KINDS else spec.kind
    per_pos = " per position" if spec.per_position else ""
    pairs = f" · {result.n_pairs} pairs" if result.n_pairs > 1 else ""
    return f"{kind}{per_pos} · {spec.direction} · {spec.metric}{pairs}"


def _short_title(result: PatchResult) -> str:
    s = result.spec
    return f"{s.kind}{' per pos' if s.per_position else ''} · {s.direction}" + \
        (f" · {result.n_pairs} pairs" if result.n_pairs > 1 else "")


def _grid_height(n_rows: int) -> int:
    return int(min(1400, max(340, 24 * n_rows + 170)))


def _axis_style(fig: go.Figure, row=None, col=None, n_cols: int = 1) -> None:
    sel = dict(row=row, col=col) if row is not None else {}
    fig.update_yaxes(autorange="reversed", type="category", showgrid=False, ticks="",
                     automargin=True, **sel)
    fig.update_xaxes(type="category", showgrid=False, ticks="", automargin=True,
                     tickangle=-45 if n_cols > 8 else 0, **sel)


def heatmap(result: PatchResult, mode: str = "raw", *, zmax: float | None = None,
            title: str | None = None, head_labels: Mapping[tuple[int, int], str] | None = None) -> go.Figure:
    """One run as a heatmap of its effect (raw or normalized), on a symmetric diverging scale.

    `head_labels` ((layer, head) -> e.g. 'induction', from `figures.detectors.firing_labels`;
    default none) names the heads that fire: 'L1H2 · induction' in the cell of a layer × head
    grid, or as the row label of a (layer.head) × position grid.

    >>> heatmap(result, "normalized").layout.title.text    # doctest: +SKIP
    'Attention head output (z) · denoise · logit_diff'
    """
    g = grid(result, mode)
    zmax = zmax if zmax is not None else _absmax(g.z)
    fig = go.Figure(heatmap_trace(g, zmax=zmax, multi_pair=result.n_pairs > 1,
                                  colorbar_title=effect_label(result, mode)))
    _axis_style(fig, n_cols=len(g.x_labels))
    fig.update_xaxes(title_text=g.x_title)
    fig.update_yaxes(title_text=g.y_title)
    if head_labels and "head" in result.axes:
        _label_heads(fig, g, head_labels, rows_are_heads=len(result.axes) == 3)
    return base_layout(fig, title or _title(result), _grid_height(len(g.y_labels)))


def _label_heads(fig: go.Figure, g: Grid, head_labels: Mapping[tuple[int, int], str], rows_are_heads: bool) -> None:
    """'L1H2 · induction' on the heads in `head_labels`: row labels when rows are heads, else cell text."""
    def note(layer: int, head: int) -> str:
        return f"L{layer}H{head} · {head_labels[(layer, head)]}" if (layer, head) in head_labels else ""

    notes = [[note(int(l), int(h)) for l, _, h in row] for row in g.cells]
    if rows_are_heads:
        fig.update_yaxes(tickvals=g.y_labels, ticktext=[n or y for n, y in zip((r[0] for r in notes), g.y_labels)])
        return
    trace = fig.data[0]
    trace.update(text=notes, texttemplate="%{text}", textfont=dict(size=10),
                 hovertemplate=trace.hovertemplate.replace("<extra></extra>", "<br>%{text}<extra></extra>"))


def same_layout(a: PatchResult, b: PatchResult) -> bool:
    """Whether two results share axes and coordinates, so that a cell-wise difference exists."""
    return (tuple(a.axes) == tuple(b.axes)
            and all(tuple(a.coords[k]) == tuple(b.coords[k]) for k in a.axes))


def compare(a: PatchResult, b: PatchResult, mode: str = "raw", *, labels=("A", "B")) -> go.Figure:
    """Two runs side by side on one shared colour scale, and their difference A − B.

    The difference panel appears when both runs have the same axes and coordinates; it has its
    own symmetric scale (it is usually much smaller than either run).
    """
    ga, gb = grid(a, mode), grid(b, mode)
    shared = _absmax(ga.z, gb.z)
    with_diff = same_layout(a, b)
    n = 3 if with_diff else 2
    titles = [f"{labels[0]}: {_short_title(a)}", f"{labels[1]}: {_short_title(b)}"]
    if with_diff:
        titles.append(f"{labels[0]} − {labels[1]}")
    fig = make_subplots(rows=1, cols=n, subplot_titles=titles, horizontal_spacing=0.05)
    fig.add_trace(heatmap_trace(ga, zmax=shared, multi_pair=a.n_pairs > 1, coloraxis="coloraxis"), 1, 1)
    fig.add_trace(heatmap_trace(gb, zmax=shared, multi_pair=b.n_pairs > 1, coloraxis="coloraxis"), 1, 2)
    scale_title = effect_label(a, mode)
    # colour bars stacked at the right: the shared one on top, the difference's below
    fig.update_layout(coloraxis=dict(colorscale=DIVERGING, cmid=0, cmin=-shared, cmax=shared,
                                     colorbar=dict(title=dict(text=scale_title), thickness=12, x=1.01,
                                                   y=1.0, yanchor="top", len=0.48 if with_diff else 1.0)))
    if with_diff:
        diff = ga.z - gb.z
        gd = Grid(diff, ga.raw - gb.raw, ga.normalized - gb.normalized, np.full_like(diff, np.nan),
                  np.full_like(diff, np.nan), ga.x_labels, ga.y_labels, ga.x_title, ga.y_title, ga.cells)
        dmax = _absmax(diff)
        fig.add_trace(heatmap_trace(gd, zmax=dmax, multi_pair=False, coloraxis="coloraxis2",
                                    hover_effect=f"effect {labels[0]} − {labels[1]}"), 1, 3)
        fig.update_layout(coloraxis2=dict(colorscale=DIVERGING, cmid=0, cmin=-dmax, cmax=dmax,
                                          colorbar=dict(title=dict(text=f"{labels[0]} − {labels[1]}"),
                                                        thickness=12, x=1.01, y=0.0, yanchor="bottom",
                                                        len=0.48)))
    for c, g in zip(range(1, n + 1), (ga, gb, ga)):
        _axis_style(fig, row=1, col=c, n_cols=len(g.x_labels))
        if c > 1 and len(g.y_labels) == len(ga.y_labels):
            fig.update_yaxes(showticklabels=False, row=1, col=c)
    fig.update_annotations(font=dict(size=12))
    rows = max(len(ga.y_labels), len(gb.y_labels))
    fig = base_layout(fig, None, max(440, _grid_height(rows) + 20))
    fig.update_layout(margin=dict(t=60, r=90))
    return fig


def attention_diff(clean, corrupt, patched, str_tokens, *, title: str = "",
                   note: str | None = None, corrupt_tokens=None, patched_tokens=None,
                   direction: str = "denoise") -> go.Figure:
    """Counterfactual attention of one head: patterns (dest × src) and their differences.

    clean, corrupt, patched: [dest, src] arrays (patched may be None: shown as unavailable).
    Top row: the three patterns on one 0..1 scale, each labelled (ticks and hover) by its own
    run's tokens: `str_tokens` the clean prompt's, `corrupt_tokens` the corrupt prompt's,
    `patched_tokens` the patched run's (default: the corrupt prompt's). Bottom row: clean −
    corrupt and the patch's change — patched − corrupt (denoise) or patched − clean (noise, where
    the patched run is the clean one) — on one symmetric diverging scale centred at 0 (blue: more
    attention, as everywhere: blue = towards clean / positive), labelled "clean/corrupt" where the
    two prompts' tokens differ. Every position is ticked.

    >>> import numpy as np
    >>> m = np.eye(2)
    >>> fig = attention_diff(m, m, m, ["<s>", " Mary"], corrupt_tokens=["<s>", " Amy"])
    >>> list(fig.data[1].x)
    ["0: '<s>'", "1: ' Amy'"]
    """
    clean, corrupt = np.asarray(clean, dtype=float), np.asarray(corrupt, dtype=float)
    patched = None if patched is None else np.asarray(patched, dtype=float)
    n = clean.shape[0]
    corrupt_tokens = list(corrupt_tokens) if corrupt_tokens else list(str_tokens)
    patched_tokens = list(patched_tokens) if patched_tokens else corrupt_tokens
    labels = [position_label(i, str_tokens) for i in range(n)]
    panel_labels = [labels, [position_label(i, corrupt_tokens) for i in range(n)],
                    [position_label(i, patched_tokens) for i in range(n)]]
    both = [a if i >= len(corrupt_tokens) or i >= len(str_tokens) or str_tokens[i] == corrupt_tokens[i]
            else f"{i}: {str_tokens[i]!r}/{corrupt_tokens[i]!r}" for i, a in enumerate(labels)]
    base = "corrupt" if direction == "denoise" else "clean"
    titles = ["clean", "corrupt", "patched" if patched is not None else "patched (not available)",
              "clean − corrupt", f"patched − {base} (the patch's change)" if patched is not None else ""]
    fig = make_subplots(rows=2, cols=3, subplot_titles=titles, horizontal_spacing=0.06,
                        vertical_spacing=0.16)
    hover = "attention %{z:.3f}<br>from %{y}<br>to %{x}<extra></extra>"
    diff_hover = "%{z:+.3f} attention<br>from %{y}<br>to %{x}<extra></extra>"

    def upper_masked(m):   # causal: src > dest is always 0; show it blank
        m = m.copy()
        m[np.triu_indices(n, 1)] = np.nan
        return _nan_to_none(m)

    for col, m in enumerate((clean, corrupt, patched), start=1):
        if m is None:
            continue
        axis = panel_labels[col - 1]
        fig.add_trace(go.Heatmap(z=upper_masked(m), x=axis, y=axis, coloraxis="coloraxis",
                                 hovertemplate=hover, xgap=1, ygap=1, hoverongaps=False), 1, col)
    diffs = [clean - corrupt] + ([patched - (corrupt if base == "corrupt" else clean)] if patched is not None else [])
    dmax = _absmax(*diffs)
    for col, d in enumerate(diffs, start=1):
        fig.add_trace(go.Heatmap(z=upper_masked(d), x=both, y=both, coloraxis="coloraxis2",
                                 hovertemplate=diff_hover, xgap=1, ygap=1, hoverongaps=False), 2, col)
    fig.update_layout(
        coloraxis=dict(colorscale=SEQUENTIAL, cmin=0, cmax=1,
                       colorbar=dict(title=dict(text="attention"), thickness=12, len=0.42, y=0.79)),
        coloraxis2=dict(colorscale=DIVERGING, cmid=0, cmin=-dmax, cmax=dmax,
                        colorbar=dict(title=dict(text="difference<br>(0 = no change)"), thickness=12,
                                      len=0.42, y=0.21)))
    tick_font = dict(size=11 if n <= 24 else 9 if n <= 48 else 7)
    for r in (1, 2):
        for c in (1, 2, 3):          # every position ticked (plotly would thin a crowded axis)
            fig.update_yaxes(autorange="reversed", type="category", showgrid=False, ticks="",
                             showticklabels=(c == 1 or r == 1), tickmode="linear", dtick=1,
                             tickfont=tick_font, row=r, col=c)
            fig.update_xaxes(type="category", showgrid=False, ticks="", tickangle=-60,
                             showticklabels=True, tickmode="linear", dtick=1, tickfont=tick_font,
                             row=r, col=c)
    fig.update_xaxes(visible=False, row=2, col=3)
    fig.update_yaxes(visible=False, row=2, col=3)
    if patched is None:
        fig.update_xaxes(visible=False, row=1, col=3)
        fig.update_yaxes(visible=False, row=1, col=3)
    if note:
        fig.add_annotation(text=note, x=1.0, y=0.36, xref="paper", yref="paper", showarrow=False,
                           xanchor="right", align="right", font=dict(size=12, color="#6b7280"))
    fig.update_annotations(font=dict(size=12))
    height = int(min(1500, max(620, 2 * (26 * n + 120))))
    fig = base_layout(fig, title, height)
    fig.update_layout(margin=dict(l=110, r=30, t=70, b=110))
    return fig


def cell_outline(result: PatchResult, cell: dict | None) -> list[dict]:
    """Layout shapes outlining the heatmap cell {'layer', 'pos', 'head'} ([] when not on the grid).

    >>> cell_outline(result, {"layer": 1, "pos": None, "head": 2})[0]["x0"]     # doctest: +SKIP
    1.5
    """
    if not cell or len(result.axes) < 2:
        return []
    g = grid(result, "raw", with_interval=False)
    want = [cell.get(k) if cell.get(k) is not None else -1 for k in ("layer", "pos", "head")]
    hits = np.argwhere((g.cells == np.array(want)).all(-1))
    if not len(hits):
        return []
    i, j = (int(v) for v in hits[0])
    return [dict(type="rect", xref="x", yref="y", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5,
                 line=dict(color="#111827", width=2.5), fillcolor="rgba(0,0,0,0)")]


# -- path patching and attribution ------------------------------------------------------------
def path_title(result) -> str:
    """'Path patching · every head → q:1.0+q:1.1 · heads_frozen · denoise · logit_diff'."""
    s = result.spec
    if s.sweep == "senders":
        senders = "every head" + (" per position" if s.per_position else "") if s.senders is None \
            else ", ".join(s.senders)
        what = f"{senders} → {'+'.join(s.receivers)}"
    else:
        what = f"{s.senders[0]} → each receiver"
    pairs = f" · {result.n_pairs} pairs" if result.n_pairs > 1 else ""
    return f"Path patching · {what} · {s.mode} · {s.direction} · {s.metric}{pairs}"


def _bar_labels(result) -> list[str]:
    axis = result.axes[0]
    names = result.sender_labels if axis == "sender" else result.receiver_labels
    return [names[i] if i < len(names) else str(i) for i in result.coords[axis]]


def bars(result, mode: str = "raw", *, title: str | None = None) -> go.Figure:
    """A one-axis result (path senders or receivers) as horizontal bars, one per label, coloured on
    the diverging scale; the 95% interval as error bars for multi-pair runs. NaN cells (no path)
    are left out.

    >>> bars(path_result_over_receivers).data[0].type         # doctest: +SKIP
    'bar'
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    raw = result.values.double().numpy()
    norm = result.normalized.double().numpy()
    z = (result.effect if mode == "raw" else result.normalized_effect).double().numpy()
    labels = _bar_labels(result)
    keep = [i for i in range(len(labels)) if math.isfinite(raw[i])]
    if result.n_pairs > 1:
        lo_t, hi_t = result.bootstrap_ci()                       # of the effect, metric units
        lo, hi = lo_t.double().numpy(), hi_t.double().numpy()
        if mode == "normalized":
            gap = result.clean_value - result.corrupt_value
            lo, hi = lo / gap, hi / gap
            lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    else:
        lo = hi = np.full_like(raw, np.nan)
    zmax = _absmax(z[keep]) if keep else 1.0
    vals = [float(z[i]) if math.isfinite(z[i]) else None for i in keep]
    custom = [[float(raw[i]), float(norm[i]) if math.isfinite(norm[i]) else None,
               float(lo[i]) if math.isfinite(lo[i]) else None, float(hi[i]) if math.isfinite(hi[i]) else None]
              for i in keep]
    hover = "%{y}<br>patched %{customdata[0]:.4f} (normalized %{customdata[1]:.3f})<br>effect %{x:+.4f}"
    if result.n_pairs > 1:
        hover += "<br>95% CI of the effect [%{customdata[2]:.4f}, %{customdata[3]:.4f}]"
    error = None
    if result.n_pairs > 1:
        error = dict(type="data", symmetric=False, color="#6b7280", thickness=1,
                     array=[max(0.0, float(hi[i] - z[i])) if math.isfinite(hi[i]) else 0 for i in keep],
                     arrayminus=[max(0.0, float(z[i] - lo[i])) if math.isfinite(lo[i]) else 0 for i in keep])
    fig = go.Figure(go.Bar(
        x=vals, y=[labels[i] for i in keep], orientation="h", customdata=custom, hovertemplate=hover + "<extra></extra>",
        marker=dict(color=[v if v is not None else 0 for v in vals], colorscale=DIVERGING, cmid=0,
                    cmin=-zmax, cmax=zmax, line=dict(width=0)), error_x=error))
    fig.update_yaxes(autorange="reversed", type="category", showgrid=False, ticks="", automargin=True,
                     title_text=result.axes[0])
    fig.update_xaxes(zeroline=True, zerolinecolor="#9ca3af", gridcolor="#eef0f3",
                     title_text=effect_label(result, mode).replace("<br>", " "))
    fig = base_layout(fig, title or path_title(result), int(min(1400, max(300, 22 * len(keep) + 150))))
    if not keep:
        fig.add_annotation(text="no cell has a path (every sender writes after every receiver reads)",
                           x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False)
    return fig


def result_figure(result: PatchResult, mode: str = "raw",
                  head_labels: Mapping[tuple[int, int], str] | None = None) -> go.Figure:
    """The figure a result reads best as: bars for one-axis path results, else a heatmap (path
    and attribution results titled as such); `head_labels` as `heatmap`'s (sweeps only)."""
    if getattr(result.spec, "kind", None) == "path":
        if len(result.axes) == 1:
            return bars(result, mode)
        fig = heatmap(result, mode, title=path_title(result))
        if bool(result.values.isnan().any()):
            fig.add_annotation(text="blank: no path (the sender writes after the receivers read)",
                               x=1.0, y=1.0, xref="paper", yref="paper", xanchor="right", yanchor="bottom",
                               showarrow=False, font=dict(size=11, color="#6b7280"))
        return fig
    if "feature" in result.axes:           # layer × rank of the strongest units, not layer × d_sae
        from patching.figures.features import result_heatmap
        return result_heatmap(result, title=(attribution_title(result) if hasattr(result, "method_label")
                                             else _title(result)) + " · top units per layer", mode=mode)
    if hasattr(result, "method_label"):
        return heatmap(result, mode, title=attribution_title(result))
    return heatmap(result, mode, head_labels=head_labels)


def attribution_title(result) -> str:
    """'Attribution (plain) · Attention head output (z) · denoise · logit_diff'."""
    method = "plain" if result.method == "plain" else f"integrated gradients, {result.steps} steps"
    return f"Attribution ({method}) · {_title(result)}"
