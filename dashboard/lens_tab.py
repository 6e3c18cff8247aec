"""The Inspect tab: logit lens, direct logit attribution, top-k, attention and residual norms.

Reads the prompts panel (model, clean / corrupt prompts, answer / wrong tokens, BOS, uploaded
pairs) and draws one inspection view of `patching.inspect.lens` at a time, with the view's CSV for
download and PNG/SVG export from plotly's modebar camera. Everything here is plain functions:
`inspect(...)` turns selector values into (DataFrame, figure, table) and is what the callbacks
call; `register_callbacks` returns the callbacks as a namespace so tests call them directly.

Mounting (dashboard/layout.py and dashboard/__init__.py):

>>> from dashboard import lens_tab                                                # doctest: +SKIP
>>> dbc.Tab(lens_tab.layout(), label="Inspect", tab_id=lens_tab.TAB_INSPECT)     # doctest: +SKIP
>>> lens_tab.register_callbacks(app, registry)                                     # doctest: +SKIP
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from types import SimpleNamespace

import dash_bootstrap_components as dbc
import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, State, dash_table, dcc, html, no_update

from patching.inspect import lens
from patching.core.prompts import PromptSet
from patching.core.results import write_csv

from dashboard.tab_controls import field, number, radio, whole_number
from dashboard import figures, handlers, ids
from dashboard.figures import lens as figures_lens

# -- ids of this tab (DESIGN: every id in one place; these are the Inspect tab's) ---------------
TAB_INSPECT = "tab-inspect"
INSPECT_PANEL = "inspect-panel"
INSPECT_VIEW = "inspect-view"                # lens | dla | topk | attention | norms
INSPECT_RUN = "inspect-run"                  # clean | corrupt
INSPECT_PAIR = "inspect-pair"
INSPECT_MODE = "inspect-mode"                # accumulated | per_layer
INSPECT_VALUE = "inspect-value"              # lens colour: top_prob | answer_prob | answer_logit | answer_rank
INSPECT_COMPONENTS = "inspect-components"    # per-layer lens rows: all | blocks | heads
INSPECT_DLA_BY = "inspect-dla-by"            # layer | head
INSPECT_LAYER = "inspect-layer"
INSPECT_HEAD = "inspect-head"                # empty = every head
INSPECT_ATTENTION_VIEW = "inspect-attention-view"   # grid | token
INSPECT_POS = "inspect-pos"                  # top-k position, attention destination, norms position
INSPECT_K = "inspect-k"
INSPECT_IMAGE_FORMAT = "inspect-image-format"
INSPECT_GRAPH = "inspect-graph"
INSPECT_TABLE = "inspect-table"              # the top-k DataTable (sortable)
INSPECT_TABLE_BOX = "inspect-table-box"
INSPECT_STATUS = "inspect-status"
INSPECT_DOWNLOAD_BUTTON = "inspect-download-button"
INSPECT_DOWNLOAD = "inspect-download"

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
CONTROL_IDS = {name: f"inspect-ctl-{name.replace('_', '-')}" for name in CONTROLS}
IDLE = "Choose a view; it is computed for the prompts on the left (pair 0 unless you pick another)."


# -- pure: selector values -> what to show ---------------------------------------------------------
@dataclass(frozen=True)
class InspectOptions:
    """The tab's selectors, as typed (numbers may arrive as None or text from the page)."""
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
    the model. One per app (made in `register_callbacks`), never module-level."""

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


def prompts_from_page(registry, model, clean, corrupt, answer, wrong, bos, pairs):
    """The prompts panel's values -> (Model, PromptSet); ValueError with the message to show."""
    m = registry.get(handlers.check_model(registry, model))
    form = handlers.Form.from_values(model=model, clean=clean, corrupt=corrupt, answer=answer,
                                     wrong=wrong, prepend_bos="bos" in (bos or []), pairs=pairs)
    return m, PromptSet.from_pairs(m, form.prompt_pairs(), prepend_bos=form.prepend_bos)


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
    return html.Div([
        html.Div([view], className="toolbar inspect-views"),
        options,
        html.Div([
            html.Div([html.Span("Image export", className="toolbar-label"),
                      radio(INSPECT_IMAGE_FORMAT, {"png": "PNG", "svg": "SVG"}, "png")],
                     className="toolbar-group"),
            dbc.Button("Download CSV", id=INSPECT_DOWNLOAD_BUTTON, color="primary", outline=True,
                       size="sm", disabled=True, n_clicks=0),
            dcc.Download(id=INSPECT_DOWNLOAD),
        ], className="toolbar"),
        html.Div(IDLE, id=INSPECT_STATUS, className="hint", role="status"),
        dcc.Graph(id=INSPECT_GRAPH, figure=figures.empty_figure(IDLE),
                  config=figures.graph_config("png", "patchboard-inspect"), className="graph"),
        html.Div(dash_table.DataTable(id=INSPECT_TABLE, columns=[], data=[], sort_action="native",
                                      style_table={"overflowX": "auto"},
                                      style_cell={"fontFamily": figures.FONT, "fontSize": 13,
                                                  "padding": "4px 8px"},
                                      style_header={"fontWeight": 600}),
                 id=INSPECT_TABLE_BOX, style={"display": "none"}),
    ], id=INSPECT_PANEL, className="inspect-panel")


# -- callbacks -------------------------------------------------------------------------------------
PAGE_STATES = (ids.MODEL_SELECT, ids.CLEAN_PROMPT, ids.CORRUPT_PROMPT, ids.ANSWER_TOKEN, ids.WRONG_TOKEN)


def register_callbacks(app, registry) -> SimpleNamespace:
    """Wire the tab to `app`; returns the plain functions so tests call them directly."""
    option_inputs = (INSPECT_VIEW, INSPECT_RUN, INSPECT_PAIR, INSPECT_MODE, INSPECT_VALUE,
                     INSPECT_COMPONENTS, INSPECT_DLA_BY, INSPECT_LAYER, INSPECT_HEAD,
                     INSPECT_ATTENTION_VIEW, INSPECT_POS, INSPECT_K)

    def controls(view, mode=None):
        """Show only the selectors the view uses (rows: only for the per-component lens)."""
        return [{} if view in views and (name != "components" or mode == "per_layer") else {"display": "none"}
                for name, views in CONTROLS.items()]

    app.callback([Output(CONTROL_IDS[n], "style") for n in CONTROLS], Input(INSPECT_VIEW, "value"),
                 Input(INSPECT_MODE, "value"))(controls)

    memo = FrameMemo()

    def _compute(options, page):
        names = list(InspectOptions.__dataclass_fields__)      # view, run, pair, ... in selector order
        opts = InspectOptions(**{n: v for n, v in zip(names, options) if v is not None})
        model, prompts = prompts_from_page(registry, *page)
        return inspect(model, prompts, opts, memo)

    def show(view, run, pair, mode, value, components, dla_by, layer, head, attention_view, pos, k,
             image_format, active_tab, model, clean, corrupt, answer, wrong, bos, pairs):
        """Selectors + prompts -> figure, config, status, table columns/data/visibility, CSV button."""
        if active_tab not in (None, TAB_INSPECT):         # computed when the tab is open
            return (no_update,) * 7
        config = figures.graph_config(image_format or "png", f"patchboard-{view or 'inspect'}")
        hidden = {"display": "none"}
        try:
            r = _compute((view, run, pair, mode, value, components, dla_by, layer, head, attention_view,
                          pos, k), (model, clean, corrupt, answer, wrong, bos, pairs))
        except ValueError as exc:
            return (figures.empty_figure(str(exc)), config, html.Span(str(exc), className="error-text"),
                    [], [], hidden, True)
        columns, data = r.table if r.table else ([], [])
        return r.figure, config, r.summary, columns, data, ({} if r.table else hidden), False

    app.callback(
        Output(INSPECT_GRAPH, "figure"), Output(INSPECT_GRAPH, "config"), Output(INSPECT_STATUS, "children"),
        Output(INSPECT_TABLE, "columns"), Output(INSPECT_TABLE, "data"), Output(INSPECT_TABLE_BOX, "style"),
        Output(INSPECT_DOWNLOAD_BUTTON, "disabled"),
        *[Input(i, "value") for i in option_inputs], Input(INSPECT_IMAGE_FORMAT, "value"),
        Input(ids.TABS, "active_tab"),
        *[Input(i, "value") for i in PAGE_STATES], Input(ids.PREPEND_BOS, "value"),
        Input(ids.PAIRS_STORE, "data"))(show)

    def download(n_clicks, view, run, pair, mode, value, components, dla_by, layer, head, attention_view,
                 pos, k, model, clean, corrupt, answer, wrong, bos, pairs):
        """The view on screen as CSV (formula-neutralised cells)."""
        if not n_clicks:
            return no_update
        try:
            r = _compute((view, run, pair, mode, value, components, dla_by, layer, head, attention_view,
                          pos, k), (model, clean, corrupt, answer, wrong, bos, pairs))
        except ValueError:
            return no_update
        return dcc.send_string(write_csv(r.frame), r.filename)

    app.callback(
        Output(INSPECT_DOWNLOAD, "data"), Input(INSPECT_DOWNLOAD_BUTTON, "n_clicks"),
        *[State(i, "value") for i in option_inputs],
        *[State(i, "value") for i in PAGE_STATES], State(ids.PREPEND_BOS, "value"),
        State(ids.PAIRS_STORE, "data"), prevent_initial_call=True)(download)

    return SimpleNamespace(controls=controls, show=show, download=download, memo=memo)


__all__ = ["layout", "register_callbacks", "inspect", "InspectOptions", "InspectResult", "TAB_INSPECT",
           "prompts_from_page"]
