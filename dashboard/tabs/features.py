"""The Features tab: the model's sparse-autoencoder features (kind `feature`).

Views: **top features** — an exact feature sweep of the prompts on the left (every SAE feature
and error node of every layer), each layer's strongest shown by effect; **contexts** — one
feature's top-activating tokens over a task's prompts (the token between its left and right
context) with its activation histogram; **logit effects** — the tokens its decoder direction
promotes and suppresses; **tasks** — the exact effect of patching that feature alone on each
task. Every view has its CSV. The computation is `patching.inspect.features` and `sweep`; the
figures `patching.figures.features`.

>>> from dashboard.tabs import features as features_tab                             # doctest: +SKIP
>>> features_tab.register(app, ctx).show(...)                                       # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, dcc, html

from patching.core.prompts import PromptSet
from patching.figures import features as figures_features
from patching.inspect import features
from patching.inspect.neurons import task_texts
from patching.tasks.families import TASKS

from dashboard.components import field, number, radio, register_view, view_body
from dashboard.forms import prompts_from_page, whole_number
from dashboard.ids import (FEATURES_FEATURE, FEATURES_K, FEATURES_LAYER, FEATURES_N, FEATURES_PANEL,  # noqa: F401
                           FEATURES_TASK, FEATURES_VIEW, TAB_FEATURES, control_id)
from dashboard.tabs.inspect import FrameMemo

VIEWS = {"top": "Top features (these prompts)", "contexts": "Contexts", "logits": "Logit effects",
         "tasks": "Tasks"}
CONTROLS = {"k": ("top", "contexts"), "layer": ("contexts", "logits", "tasks"),
            "feature": ("contexts", "logits", "tasks"), "task": ("contexts",), "n": ("contexts", "tasks")}
CONTROL_IDS = {name: control_id("features", name) for name in CONTROLS}
OPTION_IDS = (FEATURES_VIEW, FEATURES_K, FEATURES_LAYER, FEATURES_FEATURE, FEATURES_TASK, FEATURES_N)
IDLE = ("Features of the model's sparse autoencoders (one per block input; the last unit of each "
        "layer is the SAE's error). Choose a view.")


@dataclass(frozen=True)
class FeatureOptions:
    """The tab's selectors as the page sends them."""
    view: str = "top"
    k: int | None = 10
    layer: int | None = 0
    feature: int | None = 0
    task: str = "ioi"
    n: int | None = 32

    def __post_init__(self):
        if self.view not in VIEWS:
            raise ValueError(f"unknown view {self.view!r}; choose one of {', '.join(VIEWS)}")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")


@dataclass(frozen=True)
class FeatureView:
    frame: pd.DataFrame
    figure: go.Figure
    table: tuple[list[dict], list[dict]] | None
    summary: str
    filename: str


def _table(df: pd.DataFrame, columns: list[str]) -> tuple[list[dict], list[dict]]:
    shown = df[columns].copy()
    for c in shown.columns:
        if shown[c].dtype.kind == "f":
            shown[c] = shown[c].round(4)
    return [{"name": c, "id": c} for c in columns], shown.to_dict("records")


def feature_view(model, prompts: PromptSet, opts: FeatureOptions, memo: FrameMemo | None = None) -> FeatureView:
    """One view of the tab: (DataFrame, figure, table, summary, CSV name); ValueError on bad input.

    >>> feature_view(model, prompts, FeatureOptions(view="logits", layer=1, feature=3)).frame.shape[1]  # doctest: +SKIP
    5
    """
    k = whole_number(opts.k, "k", 10)
    layer = whole_number(opts.layer, "layer", 0)
    feature = whole_number(opts.feature, "feature", 0)
    n = whole_number(opts.n, "prompts", 32)

    def memo_get(compute, *key):
        return compute() if memo is None else memo.get((model.name, "features", *key), compute)

    if opts.view == "top":
        from patching.core.spec import PatchSpec
        from patching.methods.sweep import sweep
        df = memo_get(lambda: sweep(model, prompts, PatchSpec(kind="feature", model=model.name,
                                                               prepend_bos=prompts.prepend_bos)).to_dataframe(),
                      "top", prompts.pairs, prompts.prepend_bos)
        top = figures_features.top_features(df, k)
        n_pairs = prompts.n_pairs
        return FeatureView(df, figures_features.top_features_heatmap(df, k),
                           _table(top, ["layer", "rank", "feature_label", "effect", "normalized", "value"]),
                           f"Exact patching of every SAE feature (and error node), denoise, "
                           f"{n_pairs} pair{'s' if n_pairs != 1 else ''}; the CSV has every unit.",
                           "patchboard-features-top.csv")
    if opts.view == "contexts":
        acts = memo_get(lambda: features.collect_feature_activations(model, task_texts(model, opts.task, n)),
                        "acts", opts.task, n)
        df = features.top_contexts(acts, layer, feature, k=k)
        hist, frac = features.histogram(acts, layer, feature)
        return FeatureView(df, figures_features.histogram_figure(hist, frac, layer, feature),
                           _table(df, ["rank", "left", "token", "right", "activation", "label"]),
                           f"L{layer} F{feature}: its {len(df)} strongest tokens over {n} {opts.task} prompts.",
                           f"patchboard-features-L{layer}F{feature}-contexts.csv")
    if opts.view == "logits":
        from patching.model.sae import model_saes
        saes = model_saes(model)
        if layer not in saes:
            raise ValueError(f"layer {layer}: no SAE there (SAEs on layers {', '.join(map(str, sorted(saes)))})")
        df = features.logit_effects(model, saes[layer], feature)
        return FeatureView(df, figures_features.logit_bars(df, layer, feature),
                           _table(df, ["direction", "rank", "token", "effect"]),
                           f"L{layer} F{feature}: the unembedding read along its decoder direction (no final norm).",
                           f"patchboard-features-L{layer}F{feature}-logits.csv")
    df = memo_get(lambda: features.task_effects(model, layer, feature, n=n), "tasks", layer, feature, n)
    return FeatureView(df, figures_features.task_bars(df, layer, feature),
                       _table(df, ["task", "n_pairs", "effect", "normalized"]),
                       f"L{layer} F{feature} patched alone (denoise) on {n} pairs of each task.",
                       f"patchboard-features-L{layer}F{feature}-tasks.csv")


def _field(name: str, label: str, control) -> html.Div:
    return field(CONTROL_IDS[name], label, control)


def layout() -> html.Div:
    """View selector, the view's options, the figure, its table, CSV."""
    options = html.Div([
        _field("k", "k", number(FEATURES_K, 10, min_=1)),
        _field("layer", "Layer", number(FEATURES_LAYER, 0, min_=0)),
        _field("feature", "Feature", number(FEATURES_FEATURE, 0, min_=0)),
        _field("task", "Prompts of", dcc.Dropdown(id=FEATURES_TASK, value="ioi", clearable=False,
                                                  className="inspect-dropdown",
                                                  options=[{"label": t, "value": t} for t in TASKS])),
        _field("n", "Prompts", number(FEATURES_N, 32, min_=1)),
    ], className="inspect-options toolbar")
    return html.Div([html.Div([radio(FEATURES_VIEW, VIEWS, "top")], className="toolbar inspect-views"), options,
                     *view_body("features", IDLE, text_left=True, loading=True)],
                    id=FEATURES_PANEL, className="inspect-panel")


def register(app, ctx) -> SimpleNamespace:
    """Wire the tab to `app`; returns the plain functions so tests call them directly."""

    def controls(view):
        return [{} if view in views else {"display": "none"} for views in CONTROLS.values()]

    app.callback([Output(CONTROL_IDS[n], "style") for n in CONTROLS], Input(FEATURES_VIEW, "value"))(controls)
    memo = FrameMemo()

    def compute(options, page):
        names = list(FeatureOptions.__dataclass_fields__)
        opts = FeatureOptions(**{n: v for n, v in zip(names, options) if v is not None})
        model, prompts = prompts_from_page(ctx.registry, *page)
        return feature_view(model, prompts, opts, memo)

    show, download = register_view(app, "features", TAB_FEATURES, OPTION_IDS, compute)
    return SimpleNamespace(controls=controls, show=show, download=download, memo=memo)


__all__ = ["layout", "register", "feature_view", "FeatureOptions", "TAB_FEATURES"]
