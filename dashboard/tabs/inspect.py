"""The Inspect tab: logit lens, direct logit attribution, top-k, attention, the attention overview
(every layer × head, click one to enlarge), highlighted text and residual norms (one pair, or
mean ± std over all pairs).

Reads the prompts panel (model, clean / corrupt prompts, answer / wrong tokens, BOS, uploaded
pairs) and draws one inspection view of `patching.inspect` at a time, with the view's CSV for
download and PNG/SVG export from plotly's modebar camera. Above the figure, `detail` shows the
highlighted tokens (HTML spans, the value on hover) and the overview's enlarged head. Everything here is plain functions:
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

import dash
import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, State, dcc, html

from patching.inspect import highlight as highlight_engine
from patching.inspect import lens
from patching.core.prompts import PromptSet
from patching.core.spec import check_index

from dashboard.components import field, number, page_inputs, radio, register_view, view_body, PROMPT_IDS
from patching.figures import highlight as figures_highlight
from patching.figures import lens as figures_lens
from patching.figures import overview as figures_overview
from patching.figures.common import graph_config
from dashboard.forms import check_model, prompts_from_page, whole_number

from dashboard.ids import (INSPECT_ATTENTION_VIEW, INSPECT_BAND, INSPECT_COMPONENTS, INSPECT_DETAIL,  # noqa: F401
                           INSPECT_DLA_BY, INSPECT_DOWNLOAD, INSPECT_DOWNLOAD_BUTTON, INSPECT_FOCUS, INSPECT_GRAPH,
                           INSPECT_HEAD, INSPECT_IMAGE_FORMAT, INSPECT_K, INSPECT_LAYER, INSPECT_LAYER_B, INSPECT_MODE,
                           INSPECT_NEURON, INSPECT_OVERVIEW, INSPECT_PAIR, INSPECT_PANEL, INSPECT_POS, INSPECT_RUN,
                           INSPECT_RUN_ID, INSPECT_SOURCE, INSPECT_STATUS, INSPECT_TABLE, INSPECT_TABLE_BOX,
                           INSPECT_TOKENS, INSPECT_VALUE, INSPECT_VIEW, INSPECT_ZOOM, TAB_INSPECT, TABS, CURRENT_RUN,
                           MODEL_SELECT, control_id)

VIEWS = {"lens": "Logit lens", "dla": "Direct logit attribution", "topk": "Top-k tokens",
         "attention": "Attention", "overview": "Attention overview", "highlight": "Highlighted text",
         "norms": "Residual norms"}
# which selectors each view uses (the others are hidden); `shown` adds the per-choice rules
CONTROLS = {
    "run": ("lens", "dla", "topk", "attention", "overview", "highlight"),
    "pair": ("lens", "topk", "attention", "overview", "highlight", "norms"),
    "mode": ("lens",),
    "value": ("lens",),
    "components": ("lens",),
    "dla_by": ("dla",),
    "overview": ("overview",),
    "source": ("highlight",),
    "run_id": ("highlight",),
    "layer": ("attention", "overview", "highlight"),
    "layer_b": ("overview",),
    "head": ("attention", "highlight"),
    "neuron": ("highlight",),
    "attention_view": ("attention",),
    "pos": ("topk", "attention", "overview", "highlight", "norms"),
    "k": ("lens", "topk"),
    "band": ("norms",),
}
CONTROL_IDS = {name: control_id("inspect", name) for name in CONTROLS}
OPTION_IDS = (INSPECT_VIEW, INSPECT_RUN, INSPECT_PAIR, INSPECT_MODE, INSPECT_VALUE, INSPECT_COMPONENTS,
              INSPECT_DLA_BY, INSPECT_LAYER, INSPECT_HEAD, INSPECT_ATTENTION_VIEW, INSPECT_POS, INSPECT_K,
              INSPECT_OVERVIEW, INSPECT_LAYER_B, INSPECT_SOURCE, INSPECT_NEURON, INSPECT_RUN_ID, INSPECT_BAND)
DYNAMIC_IDS = (INSPECT_TOKENS, INSPECT_ZOOM)      # made inside inspect-detail when a view shows them
IDLE = "Choose a view; it is computed for the prompts on the left (pair 0 unless you pick another)."
SOURCES = {"neuron": "neuron", "head_norm": "head output norm", "attention": "attention row",
           "effect": "patching effect (a run)"}


def shown(name: str, view: str, mode: str | None = None, overview: str | None = None,
          source: str | None = None, band: str | None = None) -> bool:
    """Whether selector `name` is shown for these choices.

    >>> shown("layer", "overview", overview="grid"), shown("neuron", "highlight", source="neuron")
    (False, True)
    """
    if view not in CONTROLS[name]:
        return False
    if name == "components":
        return mode == "per_layer"
    if view == "overview" and name == "layer":
        return overview == "pair"
    if view == "highlight":
        effect = source == "effect"
        return {"run": not effect, "pair": not effect, "run_id": effect, "neuron": source == "neuron",
                "head": source != "neuron", "pos": source == "attention"}.get(name, True)
    if name == "layer_b":
        return overview == "pair"
    if view == "norms" and name == "pair":
        return band != "all"
    return True


# -- pure: selector values -> what to show ---------------------------------------------------------
@dataclass(frozen=True)
class InspectOptions:
    """The Inspect selectors as the page sends them (a number may arrive as None or as text), in
    OPTION_IDS order."""
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
    overview: str = "grid"          # grid: every layer × head; pair: `layer` and `layer_b` side by side
    layer_b: int | None = -1
    source: str = "neuron"          # highlighted text: neuron | head_norm | attention | effect
    neuron: int | None = 0
    run_id: int | None = None       # highlight by effect: the run (the one on screen when opened)
    band: str = "one"               # residual norms: one pair, or all pairs' mean ± std

    def __post_init__(self):
        if self.view not in VIEWS:
            raise ValueError(f"unknown view {self.view!r}; choose one of {', '.join(VIEWS)}")
        if self.overview not in figures_overview.LAYOUTS:
            raise ValueError(f"overview layout must be one of {', '.join(figures_overview.LAYOUTS)}, "
                             f"not {self.overview!r}")
        if self.source not in SOURCES:
            raise ValueError(f"unknown source {self.source!r}; choose one of {', '.join(SOURCES)}")
        if self.band not in ("one", "all"):
            raise ValueError(f"band must be 'one' or 'all', not {self.band!r}")


@dataclass(frozen=True)
class InspectResult:
    frame: pd.DataFrame
    figure: go.Figure
    table: tuple[list[dict], list[dict]] | None    # (columns, records) for the top-k table
    summary: str
    filename: str


class FrameMemo:
    """The last few views' DataFrames, so that a change of colour, rows or head does not rerun
    the model. One per app (made in `register`), never module-level. Two callbacks asking for
    the same key at once (the figure and the detail above it) compute it once."""

    def __init__(self, size: int = 8):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()
        self.pending: dict = {}

    def get(self, key, compute):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
            busy = self.pending.setdefault(key, threading.Lock())
        with busy:
            with self.lock:
                if key in self.items:
                    return self.items[key]
            df = compute()
            with self.lock:
                self.items[key] = df
                self.pending.pop(key, None)
                while len(self.items) > self.size:
                    self.items.popitem(last=False)
        return df


def overview_layers(n_layers: int, opts: InspectOptions) -> list[int] | None:
    """None (every layer) for the grid; the two checked layers for the side-by-side layout.

    >>> overview_layers(4, InspectOptions(overview="pair", layer=1, layer_b=-1))
    [1, 3]
    """
    if opts.overview == "grid":
        return None
    what = f"the model has {n_layers} layers"
    a = check_index(whole_number(opts.layer, "layer", 0), n_layers, "layer", what) % n_layers
    b = check_index(whole_number(opts.layer_b, "second layer", -1), n_layers, "second layer", what) % n_layers
    if a == b:
        raise ValueError(f"side by side needs two different layers, not layer {a} twice; "
                         f"choose another (0..{n_layers - 1})")
    return [a, b]


@dataclass(frozen=True)
class _Call:
    """What every view function gets: the model, prompts, options, the memo'd frame reader, the run store."""
    model: object
    prompts: PromptSet
    opts: InspectOptions
    frame: object                   # frame(compute, *key) -> DataFrame (memoised)
    store: object = None

    def number(self, name: str, what: str, default):
        return whole_number(getattr(self.opts, name), what, default)


def _lens_view(c: _Call) -> InspectResult:
    o, pair, k = c.opts, c.number("pair", "pair", 0), c.number("k", "k", 10)
    df = c.frame(lambda: lens.logit_lens(c.model, c.prompts, run=o.run, pair=pair, mode=o.mode, k=k),
                 o.run, pair, o.mode, k)
    fig = figures_lens.lens_heatmap(df, o.value, components=o.components if o.mode == "per_layer" else "all")
    summary = (f"Logit lens ({o.mode.replace('_', '-')}) of the {o.run} prompt, pair {pair}: "
               f"cells show the top token; the CSV has the top {k} per cell.")
    return InspectResult(df, fig, None, summary, f"patchboard-lens-{o.mode}-{o.run}-pair{pair}.csv")


def _dla_view(c: _Call) -> InspectResult:
    o, n = c.opts, c.prompts.n_pairs
    df = c.frame(lambda: lens.direct_logit_attribution(c.model, c.prompts, run=o.run), o.run)
    total = df[df.kind == "total"].value.item()
    summary = (f"Direct logit attribution of answer − wrong at the last position, {o.run} run, "
               f"mean over {n} pair{'s' if n != 1 else ''}; the model's logit difference is {total:.4f}.")
    return InspectResult(df, figures_lens.dla_figure(df, o.dla_by), None, summary, f"patchboard-dla-{o.run}.csv")


def _topk_view(c: _Call) -> InspectResult:
    o, pair, pos, k = c.opts, c.number("pair", "pair", 0), c.number("pos", "position", -1), c.number("k", "k", 10)
    df = c.frame(lambda: lens.top_k(c.model, c.prompts, run=o.run, pos=pos, k=k, pair=pair), o.run, pos, k, pair)
    at = int(df.pos.iloc[0])
    summary = f"Top {k} next tokens after position {at} ({df.token.iloc[0]!r}), {o.run} run."
    return InspectResult(df, figures_lens.topk_bars(df), figures_lens.topk_table(df), summary,
                         f"patchboard-topk-{o.run}-pair{pair}-pos{at}.csv")


def _attention_view(c: _Call) -> InspectResult:
    o, pair, pos = c.opts, c.number("pair", "pair", 0), c.number("pos", "position", -1)
    layer, head = c.number("layer", "layer", 0), c.number("head", "head", None)
    try:
        df = c.frame(lambda: lens.attention_patterns(c.model, c.prompts, layer=layer, run=o.run, pair=pair,
                                                     heads=None if head is None else [head]),
                     layer, o.run, pair, head)
    except ValueError as exc:
        raise ValueError(f"{exc}; leave the head empty for every head" if "head" in str(exc) else exc) from None
    if o.attention_view == "token":
        fig = figures_lens.attention_token_view(df, pos)
        summary = "One token's attention across heads: rows are heads, columns source positions."
    else:
        fig = figures_lens.attention_grid(df)
        summary = "Rows are destination positions, columns source positions; each row sums to 1."
    return InspectResult(df, fig, None, summary, f"patchboard-attention-L{int(df.layer.iloc[0])}-{o.run}-pair{pair}.csv")


def _overview_frame(c: _Call) -> tuple[pd.DataFrame, list[int] | None]:
    o, pair = c.opts, c.number("pair", "pair", 0)
    layers = overview_layers(c.model.n_layers, o)
    df = c.frame(lambda: lens.attention_overview(c.model, c.prompts, run=o.run, pair=pair, layers=layers),
                 o.run, pair, tuple(layers or ()))
    return df, layers


def _overview_view(c: _Call) -> InspectResult:
    o = c.opts
    df, layers = _overview_frame(c)
    fig = figures_overview.attention_overview_figure(df, layout=o.overview, layers=layers)
    pair = int(df.pair.iloc[0])
    where = "" if layers is None else f"-L{layers[0]}-L{layers[1]}"
    summary = ("Every head's pattern (rows: destination, columns: source). Click a panel to enlarge it; the "
               "tokens above it are coloured by that head's attention from the Position you choose.")
    return InspectResult(df, fig, None, summary, f"patchboard-attention-overview{where}-{o.run}-pair{pair}.csv")


def _highlight_frame(c: _Call) -> pd.DataFrame:
    o, layer = c.opts, c.number("layer", "layer", 0)
    if o.source == "effect":
        run_id = c.number("run_id", "run", None)
        if run_id is None or c.store is None:
            raise ValueError("highlight by a patching effect reads a run: run a per-position sweep (e.g. "
                             "resid_pre) or open one from the History tab, or type its run number")
        head = c.number("head", "head", None)
        return c.frame(lambda: highlight_engine.effect_values(c.store.get(run_id).result, layer=layer, head=head),
                       "effect", run_id, layer, head)
    spec = highlight_engine.HighlightSpec(o.source, layer=layer, neuron=c.number("neuron", "neuron", 0),
                                          head=c.number("head", "head", 0) if o.source != "neuron" else 0,
                                          dest=c.number("pos", "position", -1), run=o.run,
                                          pair=c.number("pair", "pair", 0))
    return c.frame(lambda: highlight_engine.highlight_values(c.model, c.prompts, spec), spec)


def _highlight_view(c: _Call) -> InspectResult:
    df = _highlight_frame(c)
    label = str(df.label.iloc[0])
    where = f"run {c.opts.run_id}" if c.opts.source == "effect" else f"the {c.opts.run} prompt, pair {int(df.pair.iloc[0])}"
    summary = f"{label} on every token of {where}: the text above is coloured by it (hover a token), the bars below."
    name = label.split(" ·")[0].replace(" ", "-").replace(":", "").replace("'", "")
    return InspectResult(df, figures_highlight.highlight_bars(df), None, summary,
                         f"patchboard-highlight-{''.join(ch for ch in name if ch.isalnum() or ch in '-_')}.csv")


def _norms_view(c: _Call) -> InspectResult:
    pos = c.number("pos", "position", -1)
    if c.opts.band == "all":
        df = c.frame(lambda: lens.residual_norm_bands(c.model, c.prompts), "all")
        n = int(df.n_pairs.max())
        summary = (f"L2 norm of the residual stream, mean ± std over {n} pair{'s' if n != 1 else ''}, clean vs "
                   "corrupt" + (" (pairs of mixed lengths: by role)." if c.prompts.is_mixed else "."))
        return InspectResult(df, figures_lens.norms_figure(df, pos=pos), None, summary, "patchboard-norms-all-pairs.csv")
    pair = c.number("pair", "pair", 0)
    df = c.frame(lambda: lens.residual_norms(c.model, c.prompts, pair=pair), pair)
    return InspectResult(df, figures_lens.norms_figure(df, pos=pos), None,
                         f"L2 norm of the residual stream, clean vs corrupt, pair {pair}.", f"patchboard-norms-pair{pair}.csv")


VIEW_FUNCTIONS = {"lens": _lens_view, "dla": _dla_view, "topk": _topk_view, "attention": _attention_view,
                  "overview": _overview_view, "highlight": _highlight_view, "norms": _norms_view}


def _call(model, prompts: PromptSet, opts: InspectOptions, memo: FrameMemo | None, store) -> _Call:
    def frame(compute, *key):
        if memo is None:
            return compute()
        return memo.get((model.name, prompts.pairs, prompts.prepend_bos, opts.view, *key), compute)
    return _Call(model, prompts, opts, frame, store)


def inspect(model, prompts: PromptSet, opts: InspectOptions, memo: FrameMemo | None = None,
            store=None) -> InspectResult:
    """One view: the engine's DataFrame, its figure and (top-k) table; ValueError on bad input.

    `memo` keeps computed DataFrames keyed by model, prompts and the options that change the
    data (not those that only change the figure); `store` (the run store) gives the highlight
    by a run's effect its run.

    >>> r = inspect(model, prompts, InspectOptions(view="topk", k=5))   # doctest: +SKIP
    >>> r.frame.columns[:4].tolist(), r.table[1][0]["rank"]             # doctest: +SKIP
    (['run', 'pair', 'pos', 'token'], 1)
    """
    return VIEW_FUNCTIONS[opts.view](_call(model, prompts, opts, memo, store))


def token_spans(df: pd.DataFrame, mark: int | None = None) -> html.Div:
    """The highlighted tokens as Dash spans (`figures.highlight.highlight_spans`), the value on hover."""
    children = []
    for s in figures_highlight.highlight_spans(df, mark=mark):
        children.append(html.Span(s.text, title=s.title, style=figures_highlight.span_style(s),
                                  className="token-span" + (" token-mark" if s.mark else ""),
                                  **{"data-value": "" if s.value is None else repr(s.value), "data-pos": str(s.pos)}))
        if s.line_break:
            children.append(html.Br())
    return html.Div(children, id=INSPECT_TOKENS, className="token-spans")


def detail(model, prompts: PromptSet, opts: InspectOptions, focus: dict | None, memo: FrameMemo | None = None,
           store=None) -> list:
    """What goes above the figure: the highlighted text (highlight), or the enlarged head and the
    tokens coloured by its attention from the chosen position (overview); [] for other views.

    >>> detail(model, prompts, InspectOptions(view="lens"), None)          # doctest: +SKIP
    []
    """
    c = _call(model, prompts, opts, memo, store)
    if opts.view == "highlight":
        df = _highlight_frame(c)
        return [html.Div(str(df.label.iloc[0]), className="detail-title"), token_spans(df),
                html.Div(figures_highlight.legend_text(df), className="hint")]
    if opts.view != "overview":
        return []
    df, layers = _overview_frame(c)
    heads = sorted(set(zip(df["layer"].tolist(), df["head"].tolist())))
    first = figures_overview.overview_panels(layers or sorted({l for l, _ in heads}), model.n_heads, opts.overview)[0]
    want = (int(focus["layer"]), int(focus["head"])) if focus else first
    layer, head = want if want in heads else first
    dest = c.number("pos", "position", -1)
    row = highlight_engine.attention_row(df, layer=layer, head=head, dest=dest)
    mark = int(row.pos.iloc[dest])
    zoom = figures_overview.attention_zoom(df, layer, head)
    hint = "" if focus and want in heads else " (click a panel below to enlarge another head)"
    return [html.Div(f"{row.label.iloc[0]}{hint}", className="detail-title"), token_spans(row, mark),
            html.Div(figures_highlight.legend_text(row) + "; outlined: the destination", className="hint"),
            dcc.Graph(id=INSPECT_ZOOM, figure=zoom, className="graph",
                      config=graph_config("png", f"patchboard-attention-L{layer}H{head}"))]


# -- layout ------------------------------------------------------------------------------------
def _field(name: str, label: str, control) -> html.Div:
    return field(CONTROL_IDS[name], label, control)


def layout() -> html.Div:
    """The tab's content: view selector, the view's options, the detail (highlighted text, the
    overview's enlarged head), the figure, the top-k table, CSV."""
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
        _field("overview", "Show", radio(INSPECT_OVERVIEW, {"grid": "every layer × head",
                                                             "pair": "two layers side by side"}, "grid")),
        _field("source", "Colour by", radio(INSPECT_SOURCE, SOURCES, "neuron")),
        _field("run_id", "Run #", number(INSPECT_RUN_ID, None, "a run", min_=1)),
        _field("layer", "Layer", number(INSPECT_LAYER, 0)),
        _field("layer_b", "and layer", number(INSPECT_LAYER_B, -1, "-1 = last")),
        _field("head", "Head", number(INSPECT_HEAD, None, "all", min_=0)),
        _field("neuron", "Neuron", number(INSPECT_NEURON, 0, min_=0)),
        _field("attention_view", "Show", radio(INSPECT_ATTENTION_VIEW, {"grid": "all heads (dest × src)",
                                                                         "token": "one token × heads"}, "grid")),
        _field("pos", "Position", number(INSPECT_POS, -1, "-1 = last")),
        _field("k", "k", number(INSPECT_K, 10, min_=1)),
        _field("band", "Pairs", radio(INSPECT_BAND, {"one": "one pair", "all": "all pairs (mean ± std)"}, "one")),
    ], className="inspect-options toolbar")
    body = view_body("inspect", IDLE)
    body.insert(2, html.Div(id=INSPECT_DETAIL, className="inspect-detail", style={"display": "none"}))
    return html.Div([html.Div([view], className="toolbar inspect-views"), options, dcc.Store(id=INSPECT_FOCUS),
                     *body], id=INSPECT_PANEL, className="inspect-panel")


# -- callbacks -------------------------------------------------------------------------------------
def _options(values) -> InspectOptions:
    names = list(InspectOptions.__dataclass_fields__)      # view, run, pair, ... in OPTION_IDS order
    return InspectOptions(**{n: v for n, v in zip(names, values) if v is not None})


def register(app, ctx) -> SimpleNamespace:
    """Wire the tab to `app`; returns the plain functions so tests call them directly."""

    def controls(view, mode=None, overview=None, source=None, band=None):
        """Show only the selectors the view (and its choices) use."""
        return [{} if shown(name, view, mode, overview, source, band) else {"display": "none"} for name in CONTROLS]

    app.callback([Output(CONTROL_IDS[n], "style") for n in CONTROLS], Input(INSPECT_VIEW, "value"),
                 Input(INSPECT_MODE, "value"), Input(INSPECT_OVERVIEW, "value"),
                 Input(INSPECT_SOURCE, "value"), Input(INSPECT_BAND, "value"))(controls)

    memo = FrameMemo()

    def compute(options, page):
        model, prompts = prompts_from_page(ctx.registry, *page)
        return inspect(model, prompts, _options(options), memo, ctx.store)

    show, download = register_view(app, "inspect", TAB_INSPECT, OPTION_IDS, compute)

    def show_detail(focus, *values):
        """The detail above the figure (the view's own errors are shown by `show`)."""
        n = len(OPTION_IDS)
        options, active_tab, page = values[:n], values[n], values[n + 1:]
        if active_tab not in (None, TAB_INSPECT) or options[0] not in ("overview", "highlight"):
            return [], {"display": "none"}
        try:
            model, prompts = prompts_from_page(ctx.registry, *page)
            children = detail(model, prompts, _options(options), focus, memo, ctx.store)
        except ValueError:
            return [], {"display": "none"}
        return children, {}

    app.callback(Output(INSPECT_DETAIL, "children"), Output(INSPECT_DETAIL, "style"), Input(INSPECT_FOCUS, "data"),
                 *[Input(i, "value") for i in OPTION_IDS], Input(TABS, "active_tab"),
                 *page_inputs(PROMPT_IDS))(show_detail)

    def focus_head(click, view, overview, layer, layer_b, model_name):
        """A click on an overview panel -> {"layer", "head"} of the panel it hit."""
        if view != "overview" or not click:
            return dash.no_update
        try:
            model = ctx.registry.get(check_model(ctx.registry, model_name))
            opts = InspectOptions(view="overview", overview=overview or "grid", layer=layer, layer_b=layer_b)
            layers = overview_layers(model.n_layers, opts) or list(range(model.n_layers))
        except ValueError:
            return dash.no_update
        hit = figures_overview.panel_at(click, layers, model.n_heads, opts.overview)
        return dash.no_update if hit is None else {"layer": hit[0], "head": hit[1]}

    app.callback(Output(INSPECT_FOCUS, "data"), Input(INSPECT_GRAPH, "clickData"), State(INSPECT_VIEW, "value"),
                 State(INSPECT_OVERVIEW, "value"), State(INSPECT_LAYER, "value"), State(INSPECT_LAYER_B, "value"),
                 State(MODEL_SELECT, "value"), prevent_initial_call=True)(focus_head)

    # the enlarged head is above the grid: bring it on screen after a click further down
    app.clientside_callback(
        "function(focus) { const e = document.getElementById('" + INSPECT_DETAIL + "');"
        " if (focus && e) { e.scrollIntoView({block: 'start'}); } return window.dash_clientside.no_update; }",
        Output(INSPECT_DETAIL, "title"), Input(INSPECT_FOCUS, "data"), prevent_initial_call=True)

    def follow_run(run_id):
        """The highlight's run number follows the run on screen (typing another one still works)."""
        return run_id if run_id else dash.no_update

    app.callback(Output(INSPECT_RUN_ID, "value"), Input(CURRENT_RUN, "data"))(follow_run)
    return SimpleNamespace(controls=controls, show=show, download=download, memo=memo, show_detail=show_detail,
                           focus_head=focus_head, follow_run=follow_run)


__all__ = ["layout", "register", "inspect", "detail", "InspectOptions", "InspectResult", "TAB_INSPECT"]
