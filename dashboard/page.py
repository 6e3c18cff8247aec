"""The page: the left panel (`dashboard.panel`) and the tabs (`TABS`, one module each under
`dashboard/tabs/`), with the stores they share. Bootstrap's CSS is served from `assets/` (no CDN),
and `assets/style.css` holds the few rules of our own.

A new tab is one module with `layout()` and `register(app, ctx)` and one `Tab` row here.

Lazy tabs (`Tab.lazy`): the page loads with an empty body for them, filled with the tab's
`layout()` the first time it is opened and kept from then on (`open_lazy_tabs`), so the first
load carries a smaller layout, mounts fewer graphs and fires none of their callbacks (issue #17,
item 15: time to an enabled Run button). A tab is lazy only when nothing outside it writes into
it: its callbacks' inputs all live in it, in the left panel or in the page's stores, so opening
it later computes what opening it on load would have.

>>> [t.tab_id for t in TABS][:2]
['tab-results', 'tab-history']
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType, SimpleNamespace

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, dcc, html

from dashboard import ids, panel, share
from dashboard.tabs import attribution, circuit, features, history, inspect, neurons, path, results


@dataclass(frozen=True)
class Tab:
    label: str
    tab_id: str
    module: ModuleType                 # layout() and register(app, ctx)
    namespace: str | None = None       # its callbacks on `app.patchboard_<namespace>`; None: on `app.patchboard`
    lazy: bool = False                 # rendered when first opened (module doc)


TABS = (
    Tab("Results", ids.TAB_RESULTS, results),
    Tab("History & compare", ids.TAB_HISTORY, history),
    Tab("Path patching", ids.TAB_PATH, path),
    Tab("Attribution", ids.TAB_ATTRIBUTION, attribution),
    Tab("Inspect", ids.TAB_INSPECT, inspect, "inspect", lazy=True),
    Tab("Neurons & weights", ids.TAB_NEURONS, neurons, "neurons", lazy=True),
    Tab("Circuit", ids.TAB_CIRCUIT, circuit, "circuit"),       # the Attribution tab's edges reach its store
    Tab("Features", ids.TAB_FEATURES, features, "features", lazy=True),
)
LAZY = tuple(t for t in TABS if t.lazy)


def page(registry, model: str) -> html.Div:
    navbar = html.Header([
        html.Div([html.Span("Patchboard", className="brand"),
                  html.Span("activation patching", className="brand-sub")], className="brand-box"),
    ], className="topbar")
    return html.Div([
        navbar,
        share.location(),
        dcc.Store(id=ids.SESSION_ID, data=None),          # set in the browser on load (panel/run_card.py)
        dcc.Store(id=ids.CURRENT_RUN, storage_type="session"),
        dcc.Store(id=ids.PAIRS_STORE, data=None, storage_type="session"),
        dcc.Store(id=ids.HISTORY_VERSION, data=0),
        dcc.Store(id=ids.ATTENTION_CELL, data=None),
        dcc.Store(id=ids.PATH_RUN, storage_type="session"),
        dcc.Store(id=ids.ATTR_RUN, storage_type="session"),
        # one screen at desktop sizes (assets/style.css): the left column scrolls its prompts
        # while the run card stays at its foot, and the tab body scrolls inside its card, so the
        # Run button, the result and the error of what was done are on screen together
        html.Div([
            html.Aside(panel.layout(registry, model), className="left-col"),
            html.Main(dbc.Card(dbc.CardBody(dbc.Tabs(id=ids.TABS, active_tab=ids.TAB_RESULTS, children=[
                dbc.Tab(html.Div(id=ids.tab_body(t.tab_id)) if t.lazy else t.module.layout(),
                        label=t.label, tab_id=t.tab_id) for t in TABS
            ])), className="panel-card results-card"), className="right-col"),
        ], className="main"),
    ], className="app")


def register(app, ctx) -> dict[str, SimpleNamespace]:
    """Wire the panel, every tab and the share callbacks: {namespace: callbacks} ("" for the
    panel, share and the tabs without a namespace of their own), so tests call them directly."""
    main = [panel.register(app, ctx), share.register(app, ctx.registry, ctx.store), register_lazy_tabs(app)]
    own = {}
    for t in TABS:
        ns = t.module.register(app, ctx)
        if t.namespace:
            own[t.namespace] = ns
        else:
            main.append(ns)
    merged = {}
    for ns in main:
        for name, fn in vars(ns).items():
            if name in merged:
                raise RuntimeError(f"two callbacks named {name!r}: give one a namespace of its own")
            merged[name] = fn
    return {"": SimpleNamespace(**merged), **own}


def open_lazy_tabs(active_tab, *bodies):
    """The lazy tabs' bodies: the opened tab's `layout()` the first time (its body still empty),
    otherwise unchanged.

    >>> opened = open_lazy_tabs(ids.TAB_INSPECT, *[None] * len(LAZY))
    >>> [body is not dash.no_update for body in opened] == [t.tab_id == ids.TAB_INSPECT for t in LAZY]
    True
    >>> open_lazy_tabs(ids.TAB_INSPECT, *opened)[0] is dash.no_update
    True
    """
    return tuple(t.module.layout() if t.tab_id == active_tab and not body else dash.no_update
                 for t, body in zip(LAZY, bodies))


def register_lazy_tabs(app) -> SimpleNamespace:
    app.callback(*[Output(ids.tab_body(t.tab_id), "children") for t in LAZY], Input(ids.TABS, "active_tab"),
                 *[State(ids.tab_body(t.tab_id), "children") for t in LAZY])(open_lazy_tabs)
    return SimpleNamespace(open_lazy_tabs=open_lazy_tabs)
