"""The Inspect tab: logit lens, direct logit attribution, top-k, attention and residual norms.

Reads the prompts panel (model, clean / corrupt prompts, answer / wrong tokens, BOS, uploaded
pairs) and draws one inspection view of `patching.inspect.lens` at a time, with the view's CSV for
download and PNG/SVG export from plotly's modebar camera. Everything here is plain functions:
`inspect(...)` turns selector values into (DataFrame, figure, table) and is what the callbacks
call; `register` returns the callbacks as a namespace so tests call them directly.

Mounted by `dashboard.page.TABS`:

>>> from dashboard.tabs import inspect as inspect_tab                               # doctest: +SKIP
>>> inspect_tab.register(app, ctx).show(...)                                        # doctest: +SKIP
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from types import SimpleNamespace

import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, dcc, html

from patching.inspect import lens
from patching.core.prompts import PromptSet

from dashboard.components import field, number, radio, register_view, view_body
from patching.figures import lens as figures_lens
from dashboard.forms import prompts_from_page, whole_number

from dashboard.ids import (INSPECT_ATTENTION_VIEW, INSPECT_COMPONENTS, INSPECT_DLA_BY, INSPECT_DOWNLOAD,  # noqa: F401
                           INSPECT_DOWNLOAD_BUTTON, INSPECT_GRAPH, INSPECT_HEAD, INSPECT_IMAGE_FORMAT, INSPECT_K,
                           INSPECT_LAYER, INSPECT_MODE, INSPECT_PAIR, INSPECT_PANEL, INSPECT_POS, INSPECT_RUN,
                           INSPECT_STATUS, INSPECT_TABLE, INSPECT_TABLE_BOX, INSPECT_VALUE, INSPECT_VIEW, TAB_INSPECT,
                           control_id)

VIEWS = {"lens": "Logit lens", "dla": "Direct logit attribution", "topk": "Top-k tokens",
         "attention": "Attention", "norms": "Residual norms"}
# which selectors each view uses (the others are hidden)
CONTROLS = {
    "run": ("lens", "dla", "topk", "attention"),
    "pair": ("lens", "topk", "attention", "norms"),
    "mode": ("lens",),
    "value": ("lens",),
    "components": ("lens",),
    "dla_by": ("dla",),
    "layer": ("attention",),
    "head": ("attention",),
    "attention_view": ("attention",),
    "pos": ("topk", "attention", "norms"),
    "k": ("lens", "topk"),
}
CONTROL_IDS = {name: control_id("inspect", name) for name in CONTROLS}
OPTION_IDS = (INSPECT_VIEW, INSPECT_RUN, INSPECT_PAIR, INSPECT_MODE, INSPECT_VALUE, INSPECT_COMPONENTS,
              INSPECT_DLA_BY, INSPECT_LAYER, INSPECT_HEAD, INSPECT_ATTENTION_VIEW, INSPECT_POS, INSPECT_K)
IDLE = "Choose a view; it is computed for the prompts on the left (pair 0 unless you pick another)."


# -- pure: selector values -> what to show ---------------------------------------------------------
@dataclass(frozen=True)
class InspectOptions:
    """The Inspect selectors as the page sends them (a number may arrive as None or as text)."""
    view: str = "lens"
    run: str = "clean"
    pair: int | None = 0
    mode: str = "accumulated"
    value: str = "top_prob"
    components: str = "all"
    dla_by: str = "layer"
    layer: int | None = 0
    head: int | None = None
    attention_view: str = "grid"
    pos: int | None = -1
    k: int | None = 10

    def __post_init__(self):
        if self.view not in VIEWS:
            raise ValueError(f"unknown view {self.view!r}; choose one of {', '.join(VIEWS)}")



@dataclass(frozen=True)
class InspectResult:
    frame: pd.DataFrame
    figure: go.Figure
    table: tuple[list[dict], list[dict]] | None    # (columns, records) for the top-k table
    summary: str
    filename: str


class FrameMemo:
    """The last few views' DataFrames, so that a change of colour, rows or head does not rerun
    the model. One per app (made in `register`), never module-level."""

    def __init__(self, size: int = 8):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key, compute):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        df = compute()
        with self.lock:
            self.items[key] = df
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return df


def inspect(model, prompts: PromptSet, opts: InspectOptions, memo: FrameMemo | None = None) -> InspectResult:
    """One view: the engine's DataFrame, its figure and (top-k) table; ValueError on bad input.

    `memo` keeps computed DataFrames keyed by model, prompts and the options that change the
    data (not those that only change the figure).

    >>> r = inspect(model, prompts, InspectOptions(view="topk", k=5))   # doctest: +SKIP
    >>> r.frame.columns[:4].tolist(), r.table[1][0]["rank"]             # doctest: +SKIP
    (['run', 'pair', 'pos', 'token'], 1)
    """
    pair = whole_number(opts.pair, "pair", 0)
    pos = whole_number(opts.pos, "position", -1)
    k = whole_number(opts.k, "k", 10)
    table = None

    def frame(compute, *key):
        if memo is None:
            return compute()
        return memo.get((model.name, prompts.pairs, prompts.prepend_bos, opts.view, *key), compute)

    if opts.view == "lens":
        df = frame(lambda: lens.logit_lens(model, prompts, run=opts.run, pair=pair, mode=opts.mode, k=k),
                   opts.run, pair, opts.mode, k)
        fig = figures_lens.lens_heatmap(df, opts.value,
                                        components=opts.components if opts.mode == "per_layer" else "all")
        summary = (f"Logit lens ({opts.mode.replace('_', '-')}) of the {opts.run} prompt, pair {pair}: "
                   f"cells show the top token; the CSV has the top {k} per cell.")
        name = f"lens-{opts.mode}-{opts.run}-pair{pair}"
    elif opts.view == "dla":
        df = frame(lambda: lens.direct_logit_attribution(model, prompts, run=opts.run), opts.run)
        fig = figures_lens.dla_figure(df, opts.dla_by)
        total = df[df.kind == "total"].value.item()
        summary = (f"Direct logit attribution of answer − wrong at the last position, {opts.run} run, "
                   f"mean over {prompts.n_pairs} pair{'s' if prompts.n_pairs != 1 else ''}; "
                   f"the model's logit difference is {total:.4f}.")
        name = f"dla-{opts.run}"
    elif opts.view == "topk":
        df = frame(lambda: lens.top_k(model, prompts, run=opts.run, pos=pos, k=k, pair=pair),
                   opts.run, pos, k, pair)
        fig = figures_lens.topk_bars(df)
        table = figures_lens.topk_table(df)
        summary = f"Top {k} next tokens after position {int(df.pos.iloc[0])} ({df.token.iloc[0]!r}), {opts.run} run."
        name = f"topk-{opts.run}-pair{pair}-pos{int(df.pos.iloc[0])}"
    elif opts.view == "attention":
        layer = whole_number(opts.layer, "layer", 0)
        head = whole_number(opts.head, "head", None)
        heads = None if head is None else [head]
        try:
            df = frame(lambda: lens.attention_patterns(model, prompts, layer=layer, run=opts.run, pair=pair,
                                                       heads=heads), layer, opts.run, pair, head)
        except ValueError as exc:
            raise ValueError(f"{exc}; leave the head empty for every head" if "head" in str(exc) else exc) \
                from None
        if opts.attention_view == "token":
            fig = figures_lens.attention_token_view(df, pos)
            summary = "One token's attention across heads: rows are heads, columns source positions."
        else:
            fig = figures_lens.attention_grid(df)
            summary = "Rows are destination positions, columns source positions; each row sums to 1."
        name = f"attention-L{int(df.layer.iloc[0])}-{opts.run}-pair{pair}"
    else:
        df = frame(lambda: lens.residual_norms(model, prompts, pair=pair), pair)
        fig = figures_lens.norms_figure(df, pos=pos)
        summary = f"L2 norm of the residual stream, clean vs corrupt, pair {pair}."
        name = f"norms-pair{pair}"
    return InspectResult(df, fig, table, summary, f"patchboard-{name}.csv")


# -- layout ------------------------------------------------------------------------------------
def _field(name: str, label: str, control) -> html.Div:
    return field(CONTROL_IDS[name], label, control)


def layout() -> html.Div:
    """The tab's content: view selector, the view's options, the figure, the top-k table, CSV."""
    view = radio(INSPECT_VIEW, VIEWS, "lens")
    options = html.Div([
        _field("run", "Run", radio(INSPECT_RUN, {"clean": "clean", "corrupt": "corrupt"}, "clean")),
        _field("pair", "Pair", number(INSPECT_PAIR, 0, min_=0)),
        _field("mode", "Lens", radio(INSPECT_MODE, {"accumulated": "accumulated",
                                                     "per_layer": "per component"}, "accumulated")),
        _field("value", "Colour", dcc.Dropdown(
            id=INSPECT_VALUE, value="top_prob", clearable=False, className="inspect-dropdown",
            options=[{"label": v, "value": k} for k, v in figures_lens.LENS_VALUES.items()])),
        _field("components", "Rows", radio(INSPECT_COMPONENTS, {"all": "all", "blocks": "blocks",
                                                                 "heads": "heads"}, "all")),
        _field("dla_by", "By", radio(INSPECT_DLA_BY, {"layer": "layer", "head": "head"}, "layer")),
        _field("layer", "Layer", number(INSPECT_LAYER, 0)),
        _field("head", "Head", number(INSPECT_HEAD, None, "all", min_=0)),
        _field("attention_view", "Show", radio(INSPECT_ATTENTION_VIEW, {"grid": "all heads (dest × src)",
                                                                         "token": "one token × heads"}, "grid")),
        _field("pos", "Position", number(INSPECT_POS, -1, "-1 = last")),
        _field("k", "k", number(INSPECT_K, 10, min_=1)),
    ], className="inspect-options toolbar")
    return html.Div([html.Div([view], className="toolbar inspect-views"), options,
                     *view_body("inspect", IDLE)], id=INSPECT_PANEL, className="inspect-panel")


# -- callbacks -------------------------------------------------------------------------------------
def register(app, ctx) -> SimpleNamespace:
    """Wire the tab to `app`; returns the plain functions so tests call them directly."""

    def controls(view, mode=None):
        """Show only the selectors the view uses (rows: only for the per-component lens)."""
        return [{} if view in views and (name != "components" or mode == "per_layer") else {"display": "none"}
                for name, views in CONTROLS.items()]

    app.callback([Output(CONTROL_IDS[n], "style") for n in CONTROLS], Input(INSPECT_VIEW, "value"),
                 Input(INSPECT_MODE, "value"))(controls)

    memo = FrameMemo()

    def compute(options, page):
        names = list(InspectOptions.__dataclass_fields__)      # view, run, pair, ... in selector order
        opts = InspectOptions(**{n: v for n, v in zip(names, options) if v is not None})
        model, prompts = prompts_from_page(ctx.registry, *page)
        return inspect(model, prompts, opts, memo)

    show, download = register_view(app, "inspect", TAB_INSPECT, OPTION_IDS, compute)
    return SimpleNamespace(controls=controls, show=show, download=download, memo=memo)


__all__ = ["layout", "register", "inspect", "InspectOptions", "InspectResult", "TAB_INSPECT"]
