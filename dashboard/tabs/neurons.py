"""The Neurons & weights tab: the neuron explorer and the weight-based circuit views.

Neuron views read a set of prompts: the factual-recall task (cities -> countries, labelled by
country; the default) or the prompts panel on the left (its clean or corrupt prompts, labelled
by answer). Weight views and the head detectors (seeded repeated random token sequences) read
the model only; the rank-k view and the neuron shortlist patch, so
they need prompt pairs (the panel's, or the task's largest same-length group). Every view has
its DataFrame as CSV and PNG/SVG export from plotly's modebar camera.

Everything here is plain functions: `explore(...)` turns selector values into (DataFrame,
figure, table) and is what the callbacks call; `register` returns the callbacks as a
namespace so tests call them directly.

Mounted by `dashboard.page.TABS`:

>>> from dashboard.tabs import neurons                                                   # doctest: +SKIP
>>> neurons.register(app, ctx).show(...)                                                  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from types import SimpleNamespace

import dash_bootstrap_components as dbc
import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, State, dcc, html, no_update

from patching.core.spec import check_index
from patching.inspect import detectors as D
from patching.inspect import neurons as N
from patching.inspect import weights as W

from dashboard.components import field, number, radio, register_view, view_body
from patching.figures import detectors as figures_detectors
from patching.figures import neurons as figures_neurons
from dashboard.forms import prompts_from_page, whole_number
from dashboard.tabs import neuron_explorer
from dashboard.tabs.inspect import FrameMemo

from dashboard.ids import (NEURONS_CIRCUIT, NEURONS_COMPOSITION, NEURONS_DOWNLOAD, NEURONS_DOWNLOAD_BUTTON,  # noqa: F401
                           NEURONS_GRAPH, NEURONS_HEAD, NEURONS_IMAGE_FORMAT, NEURONS_K, NEURONS_LAYER,
                           NEURONS_HALF_LENGTH, NEURONS_METHOD, NEURONS_NEURON, NEURONS_PANEL, NEURONS_POS,
                           NEURONS_RANK, NEURONS_RUN, NEURONS_SEED, NEURONS_SEQUENCES, NEURONS_SOURCE, NEURONS_STATUS,
                           NEURONS_TABLE, NEURONS_TABLE_BOX, NEURONS_TASK_N,
                           NEURONS_VIEW, TAB_NEURONS, control_id)

VIEWS = {
    "top": "Top neurons", "profile": "Neuron across prompts", "top_activating": "Top-activating tokens",
    "cluster": "Prompt clusters", "shortlist": "Neuron shortlist (patching)",
    "composition": "Composition scores", "svd": "OV / QK singular values", "svd_tokens": "Singular directions → tokens",
    "rank_k": "Rank-k head", "rank_k_pattern": "Rank-k pattern", "detectors": "Head detectors",
}
NEURON_VIEWS = ("top", "profile", "top_activating", "cluster", "shortlist")
# which selectors each view uses (the others are hidden)
CONTROLS = {
    "source": ("top", "profile", "top_activating", "cluster", "shortlist", "rank_k", "rank_k_pattern"),
    "task_n": ("top", "profile", "top_activating", "cluster", "shortlist", "rank_k", "rank_k_pattern"),
    "run": ("top", "profile", "top_activating", "cluster", "rank_k", "rank_k_pattern"),
    "layer": ("top", "profile", "top_activating", "cluster", "shortlist", "svd", "svd_tokens", "rank_k",
              "rank_k_pattern"),
    "pos": ("top", "top_activating", "cluster", "shortlist"),
    "neuron": ("profile", "top_activating"),
    "k": ("top", "top_activating", "shortlist", "svd_tokens"),
    "method": ("cluster",),
    "composition": ("composition",),
    "circuit": ("svd", "svd_tokens"),
    "head": ("svd", "svd_tokens", "rank_k", "rank_k_pattern"),
    "rank": ("rank_k_pattern",),
    "sequences": ("detectors",),
    "half_length": ("detectors",),
    "seed": ("detectors",),
}
CONTROL_IDS = {name: control_id("neurons", name) for name in CONTROLS}
IDLE = "Choose a view. Neuron views use the factual-recall prompts (cities → countries) unless you pick the prompts panel."
TASK = "factual"


# -- pure: selector values -> what to show ---------------------------------------------------------
@dataclass(frozen=True)
class NeuronOptions:
    """The neuron and weight views' selectors, as typed; validated here, numbers read by `explore`."""
    view: str = "top"
    source: str = "task"
    task_n: int | None = 32
    run: str = "clean"
    layer: int | None = -1
    pos: int | str | None = -1          # None / "" = every token
    neuron: int | None = 0
    k: int | None = 20
    method: str = "pca"
    composition: str = "all"
    circuit: str = "ov"
    head: int | None = 0
    rank: int | None = 1
    sequences: int | None = D.DetectorSpec.n_sequences
    half_length: int | None = D.DetectorSpec.half_length
    seed: int | None = D.DetectorSpec.seed

    def __post_init__(self):
        if self.view not in VIEWS:
            raise ValueError(f"unknown view {self.view!r}; choose one of {', '.join(VIEWS)}")
        if self.source not in ("task", "page"):
            raise ValueError(f"source must be 'task' or 'page', not {self.source!r}")


@dataclass(frozen=True)
class NeuronResult:
    frame: pd.DataFrame
    figure: go.Figure
    table: tuple[list[dict], list[dict]] | None
    summary: str
    filename: str


def explore(model, page_prompts, opts: NeuronOptions, memo: FrameMemo | None = None) -> NeuronResult:
    """One view: the engine's DataFrame, its figure and (some views) a table; ValueError on bad input.

    page_prompts: the prompts panel's PromptSet (or None, or a callable returning it, called
    only when the view needs it). `memo` keeps activations and DataFrames keyed by model,
    prompts and the options that change the data.

    >>> r = explore(model, None, NeuronOptions(view="top", layer=1, task_n=20))   # doctest: +SKIP
    >>> r.frame.columns[:4].tolist()                                                 # doctest: +SKIP
    ['layer', 'pos', 'rank', 'neuron']
    """
    layer = whole_number(opts.layer, "layer", -1)
    pos = whole_number(opts.pos, "position", None)
    neuron = whole_number(opts.neuron, "neuron", 0)
    k = whole_number(opts.k, "k", 20)
    head = whole_number(opts.head, "head", 0)
    n = whole_number(opts.task_n, "number of task prompts", 32)
    if not 1 <= n <= 500:
        raise ValueError(f"number of task prompts must be from 1 to 500, not {n}")

    def cached(compute, *key):
        return compute() if memo is None else memo.get((model.name, *key), compute)

    def page():
        p = page_prompts() if callable(page_prompts) else page_prompts
        if p is None:
            raise ValueError("enter prompts on the left (or choose the factual task as the source)")
        return p

    def prompt_key():
        if opts.source == "task":
            return ("task", TASK, n)
        p = page()
        return ("page", p.pairs, p.prepend_bos)

    def acts():
        key = prompt_key()
        if opts.source == "task":
            return cached(lambda: N.collect_activations(model, N.task_texts(model, TASK, n)), "acts", *key)
        return cached(lambda: N.collect_activations(model, N.texts_from_prompts(page(), model, opts.run)),
                      "acts", *key, opts.run)

    def pairs():
        if opts.source == "task":
            return cached(lambda: N.task_prompt_set(model, TASK, n), "pairs", TASK, n)
        return page()

    x = SimpleNamespace(model=model, opts=opts, layer=layer, pos=pos, neuron=neuron, k=k, head=head,
                        acts=acts, pairs=pairs, cached=cached, prompt_key=prompt_key,
                        src=(f"{n} factual-recall prompts" if opts.source == "task"
                             else f"the prompts panel's {opts.run} prompts"))
    df, fig, table, summary, name = (_neuron_view if opts.view in NEURON_VIEWS else _weight_view)(x)
    return NeuronResult(df, fig, table, summary, f"patchboard-{name}.csv")


def _neuron_view(x) -> tuple:
    """(frame, figure, table, summary, file stem) of a neuron view (`x`: explore's parsed inputs)."""
    layer, pos, neuron, k, table, v = x.layer, x.pos, x.neuron, x.k, None, x.opts.view
    if v == "top":
        a = x.acts()
        df = N.top_neurons(a, x.layer, pos, k=k)
        fig = figures_neurons.top_neurons_bars(df)
        summary = f"The {len(df)} neurons of layer {int(df.layer.iloc[0])} most active on {x.src}; click a bar to pick it."
        name = f"top-neurons-L{int(df.layer.iloc[0])}"
    elif v == "profile":
        a = x.acts()
        df = N.neuron_profile(a, x.layer, neuron)
        fig = figures_neurons.neuron_profile_heatmap(df)
        summary = f"Neuron L{int(df.layer.iloc[0])}N{neuron} on every token of {x.src}."
        name = f"neuron-L{int(df.layer.iloc[0])}N{neuron}-profile"
    elif v == "top_activating":
        a = x.acts()
        df = N.top_activating(a, x.layer, neuron, k=k, pos=pos)
        fig = figures_neurons.neuron_profile_heatmap(N.neuron_profile(a, x.layer, neuron))
        table = figures_neurons.top_activating_table(df)
        summary = f"Where neuron L{int(df.layer.iloc[0])}N{neuron} fires most in {x.src} (token in bold)."
        name = f"neuron-L{int(df.layer.iloc[0])}N{neuron}-top"
    elif v == "cluster":
        a = x.acts()
        if pos is None:
            raise ValueError("clustering needs one position (e.g. -1, each prompt's last token)")
        df = x.cached(lambda: N.cluster_prompts(a, x.layer, pos, method=x.opts.method), "cluster", *x.prompt_key(),
                    x.opts.run, layer, pos, x.opts.method)
        fig = figures_neurons.cluster_scatter(df)
        summary = f"{x.opts.method.upper() if x.opts.method == 'pca' else 't-SNE'} of {x.src} by layer {int(df.layer.iloc[0])}'s neurons, coloured by label."
        name = f"clusters-{x.opts.method}-L{int(df.layer.iloc[0])}"
    elif v == "shortlist":
        p = x.pairs()
        if pos is not None and not -p.n_pos <= pos < p.n_pos:
            raise ValueError(f"position {pos} is out of range: the pairs have {p.n_pos} tokens "
                             f"(0..{p.n_pos - 1}, or -1 for the last); leave it empty for every position")
        positions = None if pos is None else [pos % p.n_pos]
        df = x.cached(lambda: N.neuron_shortlist(x.model, p, layers=[layer], positions=positions, top=k),
                    "shortlist", *x.prompt_key(), x.opts.layer, pos, k)
        fig = figures_neurons.shortlist_figure(df)
        summary = (f"Attribution scores for every neuron, then exact patching (denoise, logit_diff) of the top "
                   f"{len(df)} on {p.n_pairs} pairs" + ("" if positions is None else f", at position {positions[0]}") + ".")
        name = "neuron-shortlist"
    return df, fig, table, summary, name


def _weight_view(x) -> tuple:
    """(frame, figure, table, summary, file stem) of a weight view (`x`: explore's parsed inputs)."""
    layer, k, head, table, v = x.layer, x.k, x.head, None, x.opts.view
    if v == "composition":
        df = x.cached(lambda: W.composition_scores(x.model), "composition")
        fig = figures_neurons.composition_heatmap(df, x.opts.composition)
        if x.opts.composition != "all":
            df = df[df.composition == x.opts.composition]
        summary = "Composition of each earlier head's output (OV) with each later head's query, key or value input."
        name = f"composition-{x.opts.composition}"
    elif v == "svd":
        df = x.cached(lambda: W.singular_values(x.model, x.opts.circuit), "svd", x.opts.circuit)
        lay = check_index(layer, x.model.n_layers, "layer", f"the model has {x.model.n_layers} layers")
        fig = figures_neurons.singular_values_figure(df, lay, head)
        summary = (f"Singular values of layer {lay}'s heads' {x.opts.circuit.upper()} circuits (head {head} "
                   "highlighted); the CSV has every layer.")
        name = f"singular-values-{x.opts.circuit}"
    elif v == "svd_tokens":
        df = W.singular_tokens(x.model, layer, head, x.opts.circuit, n_dirs=min(3, x.model.arch.d_head if x.model.arch else 3),
                               k=min(k, 30))
        fig = figures_neurons.singular_tokens_figure(df)
        table = figures_neurons.singular_tokens_table(df)
        summary = (f"Top singular directions of {df.label.iloc[0]}'s {x.opts.circuit.upper()} circuit as tokens "
                   "(writing side through the unembedding, reading sides through the embedding).")
        name = f"svd-tokens-{df.label.iloc[0]}-{x.opts.circuit}"
    elif v == "detectors":
        spec = detector_spec(x.opts.sequences, x.opts.half_length, x.opts.seed)
        df = x.cached(lambda: D.head_scores(x.model, spec), "detectors", spec)
        fig = figures_detectors.detector_heatmaps(df, f"Head detectors · {spec.n_sequences} repeated random "
                                                  f"sequences of 2 × {spec.half_length} tokens · seed {spec.seed}")
        floor = " / ".join(f"{figures_detectors.uniform_score(n, spec.half_length):.2f}" for n in spec.detectors)
        summary = ("Each head's mean attention (0..1) to the previous token, to the token's earlier copy and to "
                   "the token after it (induction), on seeded repeated random token sequences; a head attending "
                   f"evenly to all earlier tokens would score {floor}.")
        name = f"head-detectors-n{spec.n_sequences}-half{spec.half_length}-seed{spec.seed}"
    elif v == "rank_k":
        p = x.pairs()
        df = x.cached(lambda: W.rank_k_head(x.model, p, layer, head, run=x.opts.run), "rank_k", *x.prompt_key(),
                    layer, head, x.opts.run)
        fig = figures_neurons.rank_k_figure(df)
        summary = f"{df.label.iloc[0]} with its QK circuit truncated to rank k, on {p.n_pairs} pairs."
        name = f"rank-k-{df.label.iloc[0]}"
    else:
        p = x.pairs()
        rank = whole_number(x.opts.rank, "rank", 1)
        df = W.rank_k_pattern(x.model, p, layer, head, rank, run=x.opts.run)
        fig = figures_neurons.rank_k_pattern_figure(df)
        summary = f"Pair 0's pattern of L{int(df.layer.iloc[0])}H{head}, original vs rank {rank}."
        name = f"rank-k-pattern-L{int(df.layer.iloc[0])}H{head}-r{rank}"
    return df, fig, table, summary, name


MAX_DETECTOR_SEQUENCES = 256       # the dashboard's bound (the engine's is higher): seconds, not minutes


def detector_spec(sequences, half_length, seed) -> D.DetectorSpec:
    """The head-detector selectors (text, numbers or empty = the default) as a DetectorSpec;
    ValueError naming the selector and the accepted range.

    >>> detector_spec("8", 10, None).n_sequences
    8
    >>> detector_spec(0, 10, 0)
    Traceback (most recent call last):
    ...
    ValueError: sequences must be a whole number from 1 to 256, not 0
    """
    default = D.DetectorSpec()
    return D.DetectorSpec(
        n_sequences=whole_number(sequences, "sequences", default.n_sequences, 1, MAX_DETECTOR_SEQUENCES),
        half_length=whole_number(half_length, "half length", default.half_length, 2, 4096),
        seed=whole_number(seed, "seed", default.seed, 0, 2**31 - 1))


# -- layout ------------------------------------------------------------------------------------
def _field(name: str, label: str, control) -> html.Div:
    return field(CONTROL_IDS[name], label, control)


def layout() -> html.Div:
    """The tab's content: view selector, the view's options, the figure, a table, CSV."""
    view = dcc.Dropdown(id=NEURONS_VIEW, value="top", clearable=False, className="inspect-dropdown",
                        options=[{"label": v, "value": k} for k, v in VIEWS.items()])
    options = html.Div([
        _field("source", "Prompts", radio(NEURONS_SOURCE, {"task": "factual task", "page": "prompts panel"}, "task")),
        _field("task_n", "Task prompts", number(NEURONS_TASK_N, 32, min_=1)),
        _field("run", "Run", radio(NEURONS_RUN, {"clean": "clean", "corrupt": "corrupt"}, "clean")),
        _field("layer", "Layer", number(NEURONS_LAYER, -1, "-1 = last")),
        _field("pos", "Position", number(NEURONS_POS, -1, "empty = every token")),
        _field("neuron", "Neuron", number(NEURONS_NEURON, 0, min_=0)),
        _field("k", "k", number(NEURONS_K, 20, min_=1)),
        _field("method", "Method", radio(NEURONS_METHOD, {"pca": "PCA", "tsne": "t-SNE"}, "pca")),
        _field("composition", "Composition", radio(NEURONS_COMPOSITION, {"all": "Q, K, V", "q": "Q", "k": "K",
                                                                          "v": "V"}, "all")),
        _field("circuit", "Circuit", radio(NEURONS_CIRCUIT, {"ov": "OV", "qk": "QK"}, "ov")),
        _field("head", "Head", number(NEURONS_HEAD, 0, min_=0)),
        _field("rank", "Rank", number(NEURONS_RANK, 1, min_=0)),
        # no browser min on the detector options: a bad value reaches `detector_spec`, which names it inline
        _field("sequences", "Sequences", number(NEURONS_SEQUENCES, D.DetectorSpec.n_sequences)),
        _field("half_length", "Half length", number(NEURONS_HALF_LENGTH, D.DetectorSpec.half_length)),
        _field("seed", "Seed", number(NEURONS_SEED, D.DetectorSpec.seed)),
    ], className="inspect-options toolbar")
    return html.Div([
        html.Div([dbc.Label("View", html_for=NEURONS_VIEW, className="field-label"), view],
                 className="toolbar inspect-views"),
        options, *view_body("neurons", IDLE, text_left=True, loading=True),
        neuron_explorer.section(),
    ], id=NEURONS_PANEL, className="inspect-panel")


# -- callbacks -------------------------------------------------------------------------------------
OPTION_IDS = (NEURONS_VIEW, NEURONS_SOURCE, NEURONS_TASK_N, NEURONS_RUN, NEURONS_LAYER, NEURONS_POS,
              NEURONS_NEURON, NEURONS_K, NEURONS_METHOD, NEURONS_COMPOSITION, NEURONS_CIRCUIT,
              NEURONS_HEAD, NEURONS_RANK, NEURONS_SEQUENCES, NEURONS_HALF_LENGTH, NEURONS_SEED)


def register(app, ctx) -> SimpleNamespace:
    """Wire the tab to `app`; returns the plain functions so tests call them directly."""

    def controls(view):
        return [{} if view in views else {"display": "none"} for views in CONTROLS.values()]

    app.callback([Output(CONTROL_IDS[n], "style") for n in CONTROLS], Input(NEURONS_VIEW, "value"))(controls)

    memo = FrameMemo(size=16)

    def compute(options, page):
        names = [f.name for f in fields(NeuronOptions)]          # view, source, ... in selector order
        opts = NeuronOptions(**{n: v for n, v in zip(names, options) if v is not None or n == "pos"})
        model = ctx.model(page[0])

        def page_prompts():
            return prompts_from_page(ctx.registry, *page)[1]

        return explore(model, page_prompts, opts, memo)

    show, download = register_view(app, "neurons", TAB_NEURONS, OPTION_IDS, compute)

    def pick_neuron(click, view):
        """A click on a top-neurons bar ('N17') picks that neuron."""
        if view != "top" or not click or not click.get("points"):
            return no_update
        label = str(click["points"][0].get("y", ""))
        return int(label[1:]) if label.startswith("N") and label[1:].isdigit() else no_update

    app.callback(Output(NEURONS_NEURON, "value"), Input(NEURONS_GRAPH, "clickData"),
                 State(NEURONS_VIEW, "value"), prevent_initial_call=True)(pick_neuron)

    return SimpleNamespace(controls=controls, show=show, download=download, pick_neuron=pick_neuron, memo=memo,
                           explorer=neuron_explorer.register(app, ctx))


__all__ = ["layout", "register", "explore", "NeuronOptions", "NeuronResult", "TAB_NEURONS", "VIEWS"]
