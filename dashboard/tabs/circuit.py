"""The Circuit tab: pick components from a sweep's heatmap, ablate the rest, see faithfulness.

- **Effects from**: head_out / mlp_out / attn_out runs of the history (and the attribution run on
  the Attribution tab or computed here) colour a layer x (heads + MLP) grid; `feature` runs (SAE
  features and error nodes, exact or attribution) a layer x rank grid of each layer's strongest
  units; their prompts are the ones the circuit is measured on (the prompts panel's when no run
  is chosen).
- **Components**: typed (`L0H1, MLP0, ATTN2`, or SAE units `L1F12, L2ERR`: a feature circuit, in
  which every head and MLP runs and the units not kept are ablated), toggled by clicking grid
  cells, added by a box selection, or set to the top k by |effect|.
- **Run** (background, queued like every run): faithfulness of the kept components with the
  others mean / resample / zero ablated, and the curve as they are added in order of |effect|;
  CSV of the curve.
- **Edges**: the EAP graph of an attribution run with edges (the Attribution tab's, or computed
  here on the current prompts), thresholded by a slider (a share of the largest |score|).

Plain functions do the work (`CircuitForm`, `run_circuit`, `compute_edges`, `edge_figure`, ...);
`register` returns the callbacks as a namespace so tests call them directly.

>>> circuit.register(app, ctx).grid(...)                                            # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, dcc, html, no_update

from metrics import METRICS
from patching.core.prompts import PromptSet
from patching.methods.circuit import (ABLATIONS, RANK_KINDS, SAE_UNITS, CircuitSpec, CurveResult, all_components,
                                      component_effects, edge_graph, faithfulness, faithfulness_curve,
                                      feature_components, format_components, parse_components)
from patching.model.sae import model_saes
from patching.runs.slot import run_slot

from dashboard import ids
from patching import figures
from dashboard.actions import guarded
from dashboard.components import PROMPT_IDS, error_text, page_inputs
from patching.figures import circuit as figures_circuit
from dashboard.forms import check_model, prompts_from_page
from dashboard.server.jobs import progress_reporter
from dashboard.ids import (CIRCUIT_ABLATION, CIRCUIT_CANCEL_BUTTON, CIRCUIT_CLEAR_BUTTON,  # noqa: F401
                           CIRCUIT_COMPONENTS, CIRCUIT_CURVE, CIRCUIT_CURVE_ALL, CIRCUIT_DOWNLOAD,
                           CIRCUIT_DOWNLOAD_BUTTON, CIRCUIT_EDGE_GRAPH, CIRCUIT_EDGES_BUTTON, CIRCUIT_EDGES_RUN,
                           CIRCUIT_EDGES_STATUS, CIRCUIT_FAITHFULNESS, CIRCUIT_GRID, CIRCUIT_PANEL, CIRCUIT_PROGRESS,
                           CIRCUIT_REDUCE, CIRCUIT_RESULT, CIRCUIT_RUN_BUTTON, CIRCUIT_SEED, CIRCUIT_SOURCE,
                           CIRCUIT_STATUS, CIRCUIT_THRESHOLD, CIRCUIT_TOP_BUTTON, CIRCUIT_TOP_K, TAB_CIRCUIT)

COMPONENT_KINDS = tuple(k for k in RANK_KINDS if k != "feature")   # an attribution run's 'att:' estimates
FEATURE_CURVE_MAX = 100        # a curve over every SAE unit stops at the strongest this many
IDLE = ("Choose runs whose effects colour the grid (or type components), click or box-select cells, "
        "then Run.")


# -- pure: what the page holds -> what to compute and show -------------------------------------------
@dataclass(frozen=True)
class CircuitForm:
    """The tab's inputs as typed."""
    components: str = ""
    ablation: str = "mean"
    seed: int | str | None = 0
    sources: tuple[str, ...] = ()      # "run:<id>" (history) or "att:<id>" (attribution run)
    reduce: str = "sum"
    curve_all: bool = False            # the curve over every component ranked, not only the kept ones

    def spec(self) -> CircuitSpec:
        try:
            seed = int(float(self.seed)) if self.seed not in (None, "") else 0
        except (TypeError, ValueError):
            raise ValueError(f"seed must be a whole number, not {self.seed!r}") from None
        components = parse_components(self.components)
        if not components:
            raise ValueError("no components kept: type some (e.g. L0H1, MLP0), click grid cells or use Top k")
        return CircuitSpec(components, self.ablation or "mean", seed)


def source_options(store, attribution_ids=()) -> list[dict]:
    """History runs that can rank components (head_out, mlp_out, attn_out, feature), then attribution runs."""
    opts = [{"label": f"{info.title} · {info.kind}", "value": f"run:{info.id}"}
            for info in store.list() if info.kind in RANK_KINDS]
    for att in dict.fromkeys(a for a in attribution_ids if a):
        try:
            kinds = {r.spec.kind for r in store.get_attribution(att).results}
        except ValueError:          # deleted meanwhile
            continue
        if kinds & set(COMPONENT_KINDS):
            opts.append({"label": f"Attribution #{att} (head_out / mlp_out / attn_out estimates)",
                         "value": f"att:{att}"})
        if "feature" in kinds:
            opts.append({"label": f"Attribution #{att} (SAE feature estimates)", "value": f"attf:{att}"})
    return opts


@dataclass(frozen=True)
class Sources:
    results: tuple            # PatchResults (attribution results included)
    pairs: tuple              # the first source's prompt pairs
    model: str | None
    label: str


def load_sources(store, values) -> Sources:
    """The chosen runs' results of ranking kinds, their pairs and model (the first one's);
    ValueError when they were measured on different prompts or models."""
    results, pairs, model, labels = [], None, None, []
    for v in values or ():
        what, _, num = str(v).partition(":")
        if what == "run":
            run = store.get(int(num))
            found, run_pairs, run_model = [run.result], tuple(run.pairs), run.info.model
        elif what in ("att", "attf"):      # an attribution run's component (att) or feature (attf) estimates
            att = store.get_attribution(int(num))
            wanted = ("feature",) if what == "attf" else COMPONENT_KINDS
            found = [r for r in att.results if r.spec.kind in wanted]
            run_pairs, run_model = tuple(att.pairs), (att.results[0].model_name or att.results[0].spec.model)
            if not found:
                raise ValueError(f"attribution run {num} has no {', '.join(wanted)} estimates")
        else:
            raise ValueError(f"unknown source {v!r}")
        if pairs is None:
            pairs, model = run_pairs, run_model
        elif run_pairs != pairs or run_model != model:
            raise ValueError(f"{v} was measured on other prompts or another model than {values[0]}; "
                             "choose runs of the same prompts")
        results += found
        labels.append(f"#{num}" if what == "run" else f"attribution #{num}")
    if len({r.spec.kind == "feature" for r in results}) > 1:
        raise ValueError("choose runs of heads / MLPs or runs of SAE features, not both: a circuit holds one "
                         "or the other")
    return Sources(tuple(results), pairs or (), model, ", ".join(labels))


def effects_of(results, reduce: str = "sum") -> dict:
    """{Component: effect} merged over the results (later ones win on overlap)."""
    out = {}
    for r in results:
        out.update(component_effects(r, reduce or "sum"))
    return out


def model_and_prompts(registry, sources: Sources, page: tuple):
    """The first source run's model and pairs (BOS as on the page), else the prompts panel's."""
    if sources.pairs:
        m = registry.get(check_model(registry, sources.model))
        bos = "bos" in (page[5] or [])
        return m, PromptSet.from_pairs(m, list(sources.pairs), prepend_bos=bos), f"the prompts of {sources.label}"
    m, prompts = prompts_from_page(registry, *page)
    return m, prompts, "the prompts panel's prompts"


def run_circuit(registry, store, form: CircuitForm, page: tuple, metric: str | None = None) -> dict:
    """The Run button's work: faithfulness of the circuit and its curve (components by |effect|
    when the sources give effects, else in the typed order). The metric is the first source
    run's (else `metric`, the page's, else logit_diff). Returns a JSON-able dict."""
    spec = form.spec()
    sources = load_sources(store, form.sources)
    model, prompts, where = model_and_prompts(registry, sources, page)
    spec.validate(model)
    metric = sources.results[0].spec.metric if sources.results else (metric or "logit_diff")
    if metric not in METRICS:        # no 'pkg.mod:fn' from a web page: that would import code
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    effects = effects_of(sources.results, form.reduce)
    if form.curve_all and not effects:
        raise ValueError("a curve over every component needs runs to rank them: choose them under 'Effects from'")
    every = feature_components(model_saes(model)) if spec.features else all_components(model)
    ranked = list(every if form.curve_all else spec.components)
    if effects:          # by |effect|; components without one (e.g. MLPs of a head_out run) last
        def order(c):
            v = effects.get(c)
            return 1.0 if v is None or v != v else -abs(v)
        ranked.sort(key=order)
    capped = spec.features and form.curve_all and len(ranked) > FEATURE_CURVE_MAX
    ranked = ranked[:FEATURE_CURVE_MAX] if capped else ranked
    pairs = [(c, effects.get(c, float("nan"))) for c in ranked] if effects else ranked
    result = faithfulness(model, prompts, spec, metric=metric)
    curve = faithfulness_curve(model, prompts, pairs, ablation=spec.ablation, seed=spec.seed, metric=metric)
    return {"circuit": result.to_dict(), "curve": curve.to_json(), "where": where,
            "ranked_by": (f"|effect| in {sources.label}" if effects else "the order typed")
            + ((f" (the {FEATURE_CURVE_MAX} strongest SAE units)" if capped else " (every component)")
               if form.curve_all else "")}


def faithfulness_text(payload: dict | None):
    """The faithfulness number and what it is made of."""
    if not payload:
        return ""
    c = payload["circuit"]
    f = c["faithfulness"]
    number = "undefined (full and ablated runs agree)" if f != f else f"{f:.3f}"
    return html.Div([
        html.Span("Faithfulness ", className="field-label"),
        html.Span(number, className="circuit-number", id=ids.CIRCUIT_FAITHFULNESS_VALUE,
                  style={"fontSize": "26px", "fontWeight": 600, "marginLeft": "6px"}),
        html.Div(f"{c['n_components']} component{'s' if c['n_components'] != 1 else ''}, {c['ablation']} ablation, "
                 f"{c['n_pairs']} pair{'s' if c['n_pairs'] != 1 else ''} of "
                 f"{payload['where']}: {c['metric']} {c['m_circuit']:.4f} with the circuit, {c['m_full']:.4f} "
                 f"full model, {c['m_empty']:.4f} all ablated; curve ordered by {payload['ranked_by']}.",
                 className="hint")])


def top_k(effects: dict, k) -> str:
    """The k components with the largest |effect|, as text for the components box."""
    try:
        k = int(float(k))
    except (TypeError, ValueError):
        raise ValueError(f"k must be a whole number, not {k!r}") from None
    if k < 0:
        raise ValueError(f"k must be >= 0, not {k}")
    ranked = sorted(effects.items(), key=lambda ce: -abs(ce[1]) if ce[1] == ce[1] else 0.0)
    return format_components(c for c, _ in ranked[:k])


def toggle(text: str | None, name: str) -> str:
    """Add the component to the list, or remove it when it is there (a click on a cell)."""
    current = list(parse_components(text or ""))
    c = parse_components(name)[0]
    current = [x for x in current if x != c] if c in current else current + [c]
    return format_components(current)


def add_selected(text: str | None, selected_data: dict | None) -> str:
    """Add every cell of a box selection (points of the grid's marker trace)."""
    names = [p.get("customdata") for p in (selected_data or {}).get("points", []) if p.get("customdata")]
    return format_components(parse_components(list(parse_components(text or "")) + list(parse_components(names))))


def compute_edges(registry, store, page: tuple, data_dir) -> int:
    """EAP edges (plus head_out / mlp_out estimates) on the prompts panel's prompts, saved as an
    attribution run; returns its id."""
    from patching.methods.attribution import edge_attribution, run_attribution
    model, prompts = prompts_from_page(registry, *page)
    with run_slot(data_dir):
        edges = edge_attribution(model, prompts)
        results = run_attribution(model, prompts, kinds=["head_out", "mlp_out"])
    pairs = [(p.clean, p.corrupt, p.answer, p.wrong) for p in prompts.pairs]
    return store.save_attribution(results, pairs, label="circuit tab · EAP edges", edges=edges)


def edge_figure(store, att_id, share) -> tuple:
    """(figure, status) for the attribution run's edges above share x the largest |score|."""
    if not att_id:
        return figures_circuit.edge_graph_figure(None), ""
    run = store.get_attribution(att_id)
    if run.edges is None:
        return (figures.empty_figure(f"Attribution run #{att_id} has no edge scores; tick 'edges' on the "
                                     "Attribution tab or compute them here."), "")
    share = 0.2 if share is None else float(share)
    biggest = float(run.edges.scores.abs().nan_to_num(0.0).max())
    graph = edge_graph(run.edges, share * biggest,
                       n_heads=sum(1 for u in run.edges.upstream if u.startswith("head:0.")))
    status = (f"Attribution run #{att_id}: {len(graph.edges)} of {graph.n_edges_total} edges with |score| ≥ "
              f"{graph.threshold:.4g} ({share:.0%} of the largest).")
    return figures_circuit.edge_graph_figure(graph), status


# -- layout ---------------------------------------------------------------------------------------------
def layout() -> html.Div:
    return html.Div([
        html.Div([
            html.Div([dbc.Label("Effects from", html_for=CIRCUIT_SOURCE, className="field-label"),
                      dcc.Dropdown(id=CIRCUIT_SOURCE, options=[], value=[], multi=True,
                                   placeholder="head_out / mlp_out / feature runs from the history (optional)")],
                     className="circuit-source"),
            html.Div([dbc.Label("Per-position effects", html_for=CIRCUIT_REDUCE, className="field-label"),
                      dbc.RadioItems(id=CIRCUIT_REDUCE, value="sum", inline=True,
                                     options=[{"label": "sum", "value": "sum"}, {"label": "max |·|", "value": "max"}])]),
        ], className="toolbar"),
        dcc.Graph(id=CIRCUIT_GRID, figure=figures.empty_figure(IDLE, height=260),
                  config={**figures.graph_config("png", "patchboard-circuit-grid"), "modeBarButtonsToRemove": ["lasso2d"]},
                  className="graph"),
        html.Div([
            dbc.Label("Components", html_for=CIRCUIT_COMPONENTS, className="field-label"),
            dbc.Input(id=CIRCUIT_COMPONENTS, type="text", value="", debounce=True, size="sm",
                      placeholder="e.g. L0H1, L2H3, MLP0, ATTN1 — or SAE units L1F12, L2ERR",
                      className="circuit-components",
                      style={"flex": "1", "minWidth": "260px"}),
            dbc.Input(id=CIRCUIT_TOP_K, type="number", value=5, min=0, step=1, size="sm", className="inspect-number",
                      style={"width": "80px"}),
            dbc.Button("Top k", id=CIRCUIT_TOP_BUTTON, size="sm", color="secondary", outline=True, n_clicks=0),
            dbc.Button("Clear", id=CIRCUIT_CLEAR_BUTTON, size="sm", color="secondary", outline=True, n_clicks=0),
        ], className="toolbar"),
        html.Div([
            html.Div([dbc.Label("Ablate the rest", html_for=CIRCUIT_ABLATION, className="field-label"),
                      dbc.RadioItems(id=CIRCUIT_ABLATION, value="mean", inline=True,
                                     options=[{"label": {"mean": "mean (corrupt set)", "resample": "resample",
                                                         "zero": "zero", "corrupt": "own corrupt"}[a], "value": a}
                                              for a in ABLATIONS])]),
            html.Div([dbc.Label("Seed", html_for=CIRCUIT_SEED, className="field-label"),
                      dbc.Input(id=CIRCUIT_SEED, type="number", value=0, step=1, size="sm", className="inspect-number",
                                style={"width": "90px"})]),
            dbc.Checklist(id=CIRCUIT_CURVE_ALL, value=[], switch=True,
                          options=[{"label": "curve over every component", "value": "all"}]),
            dbc.Button("Run", id=CIRCUIT_RUN_BUTTON, color="primary", size="sm", n_clicks=0),
            dbc.Button("Cancel", id=CIRCUIT_CANCEL_BUTTON, color="secondary", outline=True, size="sm",
                       disabled=True, n_clicks=0),
            dbc.Button("Download CSV", id=CIRCUIT_DOWNLOAD_BUTTON, color="primary", outline=True, size="sm",
                       disabled=True, n_clicks=0),
            dcc.Download(id=CIRCUIT_DOWNLOAD),
        ], className="toolbar"),
        html.Div("", id=CIRCUIT_PROGRESS, className="hint", style={"display": "none"}),
        html.Div("", id=CIRCUIT_STATUS, className="hint", role="status"),
        html.Div("", id=CIRCUIT_FAITHFULNESS, className="circuit-faithfulness"),
        dcc.Graph(id=CIRCUIT_CURVE, figure=figures_circuit.curve_figure(None),
                  config=figures.graph_config("png", "patchboard-circuit-curve"), className="graph"),
        dcc.Store(id=CIRCUIT_RESULT),
        dcc.Store(id=CIRCUIT_EDGES_RUN, storage_type="session"),
        html.H6("Edge graph (EAP)", className="section-title"),
        html.Div([
            dbc.Button("Compute edges on these prompts", id=CIRCUIT_EDGES_BUTTON, size="sm", color="primary",
                       outline=True, n_clicks=0),
            html.Div([dbc.Label("Threshold (share of the largest |score|)", html_for=CIRCUIT_THRESHOLD,
                                className="field-label"),
                      dcc.Slider(id=CIRCUIT_THRESHOLD, min=0, max=1, step=0.01, value=0.2,
                                 marks={0: "0", 0.25: "25%", 0.5: "50%", 0.75: "75%", 1: "100%"})],
                     className="circuit-threshold", style={"minWidth": "320px", "flex": "1"}),
        ], className="toolbar"),
        html.Div("", id=CIRCUIT_EDGES_STATUS, className="hint", role="status"),
        dcc.Graph(id=CIRCUIT_EDGE_GRAPH, figure=figures_circuit.edge_graph_figure(None),
                  config=figures.graph_config("png", "patchboard-eap-graph"), className="graph"),
    ], id=CIRCUIT_PANEL, className="tab-panel circuit-panel")


# -- callbacks -------------------------------------------------------------------------------------------
def _page_states() -> list[State]:
    return page_inputs(PROMPT_IDS, State)


def _triggered() -> str | None:
    try:
        return dash.ctx.triggered_id
    except Exception:         # called outside a request (tests)
        return None


def register(app, ctx) -> SimpleNamespace:
    """Wire the tab to `app`; returns the plain functions so tests call them directly."""
    return SimpleNamespace(**vars(_register_components(app, ctx)), **vars(_register_run(app, ctx)),
                           **vars(_register_edges(app, ctx)))


def _register_components(app, ctx) -> SimpleNamespace:
    """Effects from, the component grid and the kept-components box."""
    registry, store = ctx.registry, ctx.store

    def sources(_version, _tab, att_id, edges_id):
        """The 'effects from' options: ranking runs of the history and attribution runs on screen."""
        return source_options(store, (att_id, edges_id))

    app.callback(Output(CIRCUIT_SOURCE, "options"), Input(ids.HISTORY_VERSION, "data"),
                 Input(ids.TABS, "active_tab"), Input(ids.ATTR_RUN, "data"), Input(CIRCUIT_EDGES_RUN, "data"))(sources)

    def grid(values, reduce, components, model):
        """The component grid: the sources' effects (or blank cells) with the kept ones outlined."""
        try:
            src = load_sources(store, values)
            m = registry.get(check_model(registry, src.model or model))
            kept = parse_components(components or "")
        except ValueError as exc:
            return figures.empty_figure(str(exc), height=260), error_text(str(exc))
        effects = effects_of(src.results, reduce)
        title = f"Effects from {src.label} (click or box-select cells)" if effects else \
            "Components (click or box-select cells; choose runs above to colour them by effect)"
        if any(c.kind in SAE_UNITS for c in effects):
            fig = figures_circuit.feature_grid(effects, selected=kept, title=f"SAE units' effects from {src.label}: "
                                               "each layer's 10 strongest (click or box-select cells)")
        else:
            fig = figures_circuit.component_grid(effects, n_layers=m.n_layers, n_heads=m.n_heads, selected=kept,
                                                 title=title)
        return fig, no_update

    app.callback(Output(CIRCUIT_GRID, "figure"), Output(CIRCUIT_STATUS, "children", allow_duplicate=True),
                 Input(CIRCUIT_SOURCE, "value"), Input(CIRCUIT_REDUCE, "value"), Input(CIRCUIT_COMPONENTS, "value"),
                 Input(ids.MODEL_SELECT, "value"), prevent_initial_call="initial_duplicate")(grid)

    def select(click, selected, _top, _clear, text, k, values, reduce, trig=None):
        """A click toggles a cell's component, a box selection adds its cells, Top k sets the list
        to the largest |effect|, Clear empties it."""
        trig = trig or _triggered()
        try:
            if trig == CIRCUIT_CLEAR_BUTTON:
                return "", ""
            if trig == CIRCUIT_TOP_BUTTON:
                effects = effects_of(load_sources(store, values).results, reduce)
                if not effects:
                    return no_update, html.Span("Top k needs runs to rank by: choose them under 'Effects from'.",
                                                className="error-text")
                return top_k(effects, k), ""
            if trig == CIRCUIT_GRID and click:               # clickData: the cell's name is its customdata
                names = [p["customdata"] for p in click.get("points") or [] if isinstance(p.get("customdata"), str)]
                return (toggle(text, names[0]), "") if names else (no_update, no_update)
            if selected is not None and selected.get("points"):
                return add_selected(text, selected), ""
        except ValueError as exc:
            return no_update, error_text(str(exc))
        return no_update, no_update

    def select_callback(click, selected, top, clear, text, k, values, reduce):
        trig = _triggered()
        if trig == CIRCUIT_GRID:       # which property of the grid fired
            props = [t["prop_id"] for t in dash.ctx.triggered]
            if any(p.endswith(".selectedData") for p in props):
                click = None
        return select(click, selected if trig == CIRCUIT_GRID else None, top, clear, text, k, values, reduce, trig)

    app.callback(Output(CIRCUIT_COMPONENTS, "value"), Output(CIRCUIT_STATUS, "children", allow_duplicate=True),
                 Input(CIRCUIT_GRID, "clickData"), Input(CIRCUIT_GRID, "selectedData"),
                 Input(CIRCUIT_TOP_BUTTON, "n_clicks"), Input(CIRCUIT_CLEAR_BUTTON, "n_clicks"),
                 State(CIRCUIT_COMPONENTS, "value"), State(CIRCUIT_TOP_K, "value"), State(CIRCUIT_SOURCE, "value"),
                 State(CIRCUIT_REDUCE, "value"), prevent_initial_call=True)(select_callback)

    return SimpleNamespace(sources=sources, grid=grid, select=select)


def _register_run(app, ctx) -> SimpleNamespace:
    """Run (background, queued), the faithfulness number and curve, the curve's CSV."""
    registry, store, data_dir = ctx.registry, ctx.store, ctx.data_dir

    def run(set_progress, n_clicks, components, ablation, seed, values, reduce, curve_all, metric, *page):
        """Run: faithfulness + curve (queued behind other runs), stored for the figure and the CSV."""
        if not n_clicks:
            return no_update, no_update
        form = CircuitForm(components or "", ablation or "mean", seed, tuple(values or ()), reduce or "sum",
                           "all" in (curve_all or []))

        def compute():
            form.spec()
            report = progress_reporter(set_progress)     # best-effort: a lost write never fails the run
            with run_slot(data_dir, lambda s: report(f"queued behind another run ({s:.0f} s)…")):
                report("running the circuit and its curve…")
                return run_circuit(registry, store, form, page, metric)

        payload, error = guarded("circuit run", compute)     # an internal error is said, the page lives
        if error:
            return no_update, error_text(error)
        seconds = payload["circuit"]["seconds"] + payload["curve"]["seconds"]
        return payload, f"Done in {seconds:.2f} s."

    app.callback(
        Output(CIRCUIT_RESULT, "data"), Output(CIRCUIT_STATUS, "children", allow_duplicate=True),
        Input(CIRCUIT_RUN_BUTTON, "n_clicks"),
        State(CIRCUIT_COMPONENTS, "value"), State(CIRCUIT_ABLATION, "value"), State(CIRCUIT_SEED, "value"),
        State(CIRCUIT_SOURCE, "value"), State(CIRCUIT_REDUCE, "value"), State(CIRCUIT_CURVE_ALL, "value"),
        State(ids.METRIC_SELECT, "value"),
        *_page_states(), background=True, interval=400,
        running=[(Output(CIRCUIT_RUN_BUTTON, "disabled"), True, False),
                 (Output(CIRCUIT_RUN_BUTTON, "children"), "Running…", "Run"),
                 (Output(CIRCUIT_CANCEL_BUTTON, "disabled"), False, True),
                 (Output(CIRCUIT_PROGRESS, "style"), {}, {"display": "none"})],
        cancel=[Input(CIRCUIT_CANCEL_BUTTON, "n_clicks")],
        progress=Output(CIRCUIT_PROGRESS, "children"), progress_default="",
        prevent_initial_call=True)(run)

    def show(payload):
        """The stored run -> the faithfulness number, the curve and the CSV button."""
        if not payload:
            return "", figures_circuit.curve_figure(None), True
        return faithfulness_text(payload), figures_circuit.curve_figure(CurveResult.from_json(payload["curve"])), False

    app.callback(Output(CIRCUIT_FAITHFULNESS, "children"), Output(CIRCUIT_CURVE, "figure"),
                 Output(CIRCUIT_DOWNLOAD_BUTTON, "disabled"), Input(CIRCUIT_RESULT, "data"))(show)

    def download(n_clicks, payload):
        """The curve as CSV: k, added, circuit, effect, value, faithfulness, m_full, m_empty, ..."""
        if not n_clicks or not payload:
            return no_update
        curve = CurveResult.from_json(payload["curve"])
        return dcc.send_string(curve.to_csv(), f"patchboard-circuit-{curve.ablation}.csv")

    app.callback(Output(CIRCUIT_DOWNLOAD, "data"), Input(CIRCUIT_DOWNLOAD_BUTTON, "n_clicks"),
                 State(CIRCUIT_RESULT, "data"), prevent_initial_call=True)(download)

    return SimpleNamespace(run=run, show=show, download=download)


def _register_edges(app, ctx) -> SimpleNamespace:
    """The EAP edge graph: computed here or followed from the Attribution tab, thresholded."""
    registry, store, data_dir = ctx.registry, ctx.store, ctx.data_dir

    def edges(n_clicks, *page):
        """Compute EAP edges on the prompts panel's prompts (background, queued)."""
        if not n_clicks:
            return no_update, no_update
        att_id, error = guarded("edge attribution", lambda: compute_edges(registry, store, page, data_dir))
        if error:
            return no_update, error_text(error)
        return att_id, f"Edges computed: attribution run #{att_id}."

    app.callback(Output(CIRCUIT_EDGES_RUN, "data"), Output(CIRCUIT_EDGES_STATUS, "children", allow_duplicate=True),
                 Input(CIRCUIT_EDGES_BUTTON, "n_clicks"), *_page_states(), background=True, interval=400,
                 running=[(Output(CIRCUIT_EDGES_BUTTON, "disabled"), True, False)],
                 prevent_initial_call=True)(edges)

    def follow_attribution(att_id):
        """An attribution run made on the Attribution tab becomes the graph's source."""
        return att_id if att_id else no_update

    app.callback(Output(CIRCUIT_EDGES_RUN, "data", allow_duplicate=True), Input(ids.ATTR_RUN, "data"),
                 prevent_initial_call=True)(follow_attribution)

    def graph(att_id, share):
        try:
            return edge_figure(store, att_id, share)
        except ValueError as exc:
            return figures.empty_figure(str(exc)), error_text(str(exc))

    app.callback(Output(CIRCUIT_EDGE_GRAPH, "figure"), Output(CIRCUIT_EDGES_STATUS, "children", allow_duplicate=True),
                 Input(CIRCUIT_EDGES_RUN, "data"), Input(CIRCUIT_THRESHOLD, "value"),
                 prevent_initial_call="initial_duplicate")(graph)

    return SimpleNamespace(edges=edges, follow_attribution=follow_attribution, graph=graph)


__all__ = ["layout", "register", "TAB_CIRCUIT", "CircuitForm", "run_circuit", "compute_edges",
           "edge_figure", "source_options", "load_sources", "effects_of", "top_k", "toggle", "add_selected"]
