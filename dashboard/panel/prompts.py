"""The left panel's prompts card: model, presets, clean / corrupt prompts, answer / wrong tokens,
BOS, a pairs CSV upload, and the live token view; the model status line (the model is loaded in
the server process, so runs inherit it).

>>> prompts.register(app, ctx).token_view("default", "a b", "a c", " b", " c", ["bos"], None)  # doctest: +SKIP
"""
from __future__ import annotations

from types import SimpleNamespace

import dash_bootstrap_components as dbc
from dash import Input, Output, State, dcc, html, no_update

from dashboard import forms, ids
from dashboard.components import PERSIST, PROMPT_IDS, error_text, label, page_inputs
from dashboard.forms import (MAX_PRESET_PAIRS, PREVIEW_ROWS, Form, TokenView, model_options, parse_upload,
                             preset_options, preset_pairs, upload_file_limit)
from dashboard.share import warm_provenance

SAMPLE = ("When Mary and John went to the store, John gave a drink to",
          "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")


# -- layout and render (pure) --------------------------------------------------------------------
def layout(registry, model: str) -> dbc.Card:
    presets = preset_options()
    return dbc.Card([
        dbc.CardHeader(html.H2("Prompts", className="card-title-sm")),
        dbc.CardBody([
            label("Model", ids.MODEL_SELECT),
            dcc.Dropdown(id=ids.MODEL_SELECT, options=model_options(registry), value=model,
                         clearable=False, className="mb-1"),
            html.Div(id=ids.MODEL_STATUS, className="model-status"),
            html.Div([
                html.Div([
                    label("Preset", ids.PRESET_SELECT, "fills the prompts from a task family"),
                    dcc.Dropdown(id=ids.PRESET_SELECT, options=presets, value=None,
                                 placeholder="Choose a task…" if presets else "no task presets installed",
                                 disabled=not presets),
                ], className="preset-main"),
                html.Div([
                    label("Pairs", ids.PRESET_COUNT),
                    dbc.Input(id=ids.PRESET_COUNT, type="number", min=1, max=MAX_PRESET_PAIRS,
                              step=1, value=1, size="sm"),
                ], className="preset-count"),
            ], className="preset-row"),
            label("Clean prompt", ids.CLEAN_PROMPT, "the model does the behaviour"),
            dbc.Textarea(id=ids.CLEAN_PROMPT, value=SAMPLE[0], rows=2, debounce=0.3, spellcheck=False,
                         **PERSIST),
            label("Corrupt prompt", ids.CORRUPT_PROMPT, "minimally changed; same token count"),
            dbc.Textarea(id=ids.CORRUPT_PROMPT, value=SAMPLE[1], rows=2, debounce=0.3, spellcheck=False,
                         **PERSIST),
            dbc.Row([
                dbc.Col([label("Answer token", ids.ANSWER_TOKEN),
                         dbc.Input(id=ids.ANSWER_TOKEN, value=SAMPLE[2], debounce=0.3, **PERSIST)]),
                dbc.Col([label("Wrong token", ids.WRONG_TOKEN),
                         dbc.Input(id=ids.WRONG_TOKEN, value=SAMPLE[3], debounce=0.3, **PERSIST)]),
            ], className="g-2"),
            html.Div("Leading spaces matter: ' Mary' and 'Mary' are different tokens.",
                     className="field-hint block"),
            dbc.Checklist(id=ids.PREPEND_BOS, options=[{"label": "Prepend BOS token", "value": "bos"}],
                          value=["bos"], switch=True, className="mt-2"),
            label("Pairs CSV", ids.PAIRS_UPLOAD, "columns clean,corrupt,answer,wrong[,positions]"),
            dcc.Upload(id=ids.PAIRS_UPLOAD, multiple=False, accept=".csv,text/csv",
                       className="upload-box",
                       children=html.Div(["Drop a pairs CSV here or ", html.A("choose a file")])),
            html.Div(id=ids.PAIRS_PREVIEW),
            html.Div(id=ids.TOKEN_VIEW, className="token-view"),
        ]),
    ], className="panel-card prompts-card")


def _chip(i: int, tok: str, diff: bool, role: str = ""):
    shown = repr(tok)[1:-1].replace(" ", "␣") or "∅"      # spaces visible: ' Mary' -> ␣Mary
    tag = [html.Span(role, className="tok-role")] if role else []     # the pair's role at this token
    return html.Span([html.Span(str(i), className="tok-i"), html.Span(shown, className="tok-t"), *tag],
                     className="tok tok-diff" if diff else "tok", title=repr(tok) + (f" · {role}" if role else ""))


def render_token_view(view: TokenView | None, error: str | None = None):
    if view is None:
        return html.Div(error or "", className="hint error-text" if error else "hint")
    diff = set(view.differing)
    role_at: dict[int, str] = {}
    for role, at in view.roles:
        role_at[at] = f"{role_at[at]}/{role}" if at in role_at else role
    rows = []
    for name, toks in (("clean", view.clean), ("corrupt", view.corrupt)):
        rows.append(html.Div([html.Span(f"{name} · {len(toks)}", className="tok-row-label"),
                              html.Div([_chip(i, t, i in diff, role_at.get(i, "") if name == "clean" else "")
                                        for i, t in enumerate(toks)],
                                       className="tok-chips")], className="tok-row"))
    checks = []
    for text in (view.answer, view.wrong):
        if text:
            ok = "not a single token" not in text
            checks.append(html.Div(("✓ " if ok else "✗ ") + text,
                                   className="check-ok" if ok else "check-bad"))
    head = "Tokens" + (f" (pair 0 of {view.n_pairs} uploaded)" if view.n_pairs > 1 else "")
    legend = (f"{len(view.differing)} differing position{'s' if len(view.differing) != 1 else ''}: "
              f"{', '.join(map(str, view.differing))}" if view.differing else "no differing positions")
    return html.Div([html.Div([html.Span(head, className="field-label"),
                               html.Span(legend, className="field-hint")]), *rows, *checks])


def render_pairs_preview(pairs: list[dict] | None):
    if not pairs:
        return None
    shown = pairs[:PREVIEW_ROWS]
    cols = ("clean", "corrupt", "answer", "wrong") + (("positions",) if any(p.get("positions") for p in pairs) else ())
    header = html.Thead(html.Tr([html.Th("#")] + [html.Th(c) for c in cols]))
    body = html.Tbody([html.Tr([html.Td(i)] + [html.Td(repr(p[c]) if c in ("answer", "wrong") else p.get(c, ""))
                                               for c in cols])
                       for i, p in enumerate(shown)])
    more = len(pairs) - len(shown)
    return html.Div([
        html.Div([html.Span(f"Using {len(pairs)} pairs instead of the prompts above",
                            className="pairs-note"),
                  dbc.Button("Clear", id=ids.PAIRS_CLEAR, size="sm", color="link", n_clicks=0)],
                 className="pairs-head"),
        html.Div(dbc.Table([header, body], size="sm", bordered=False, striped=True, className="pairs-table"),
                 className="pairs-scroll"),
        html.Div(f"… and {more} more" if more > 0 else "", className="hint"),
    ], className="pairs-preview")


def preset_fields(ctx, task, count, model_name=None) -> tuple:
    """Preset -> (clean, corrupt, answer, wrong, pairs store, metric, message): the first pair in
    the fields and, for several, the pairs store — pairs of one token length on the chosen model,
    so that the set runs. The metric is left as the user set it. Where the model's tokenizer gives
    too few such pairs, the task's own pairs fill the form and the message says why."""
    if not task:
        return (no_update,) * 7
    note = ""
    try:
        try:
            pairs = preset_pairs(task, count, model=ctx.model(model_name) if model_name else None)
        except ValueError as exc:
            if not model_name or "pairs of one token length" not in str(exc):
                raise
            pairs, note = preset_pairs(task, count), str(exc)
    except ValueError as exc:
        return (no_update,) * 6 + (str(exc),)
    first = pairs[0]
    # the metric stays the user's: a preset that switched it (factual, induction -> a 0/1
    # accuracy) left it switched for every later typed run, unannounced
    return (first["clean"], first["corrupt"], first["answer"], first["wrong"],
            pairs if len(pairs) > 1 else None, no_update, note)


# -- callbacks ----------------------------------------------------------------------------------
def register(app, ctx) -> SimpleNamespace:
    """Wire the card to `app`; returns the plain functions so tests call them directly."""

    def model_status(name):
        """Load the chosen model here (in the server process, so runs inherit it)."""
        try:
            m = ctx.model(name)
        except ValueError as exc:
            return error_text(str(exc))
        warm_provenance(m)            # weights hash for provenance, inherited by forked runs
        kv = f" ({m.n_kv_heads} key/value)" if m.n_kv_heads != m.n_heads else ""
        where = m.device.type if ctx.registry.weights else "weights on the workers"
        return (f"{m.n_layers} layers · {m.n_heads} heads{kv} · d_model {m.cfg.d_model} · "
                f"context {m.n_ctx} · {where}")

    app.callback(Output(ids.MODEL_STATUS, "children"), Input(ids.MODEL_SELECT, "value"))(model_status)

    # -- presets and uploads ---------------------------------------------------------------------
    def fill_preset(task, count, model_name=None):
        return preset_fields(ctx, task, count, model_name)

    app.callback(
        Output(ids.CLEAN_PROMPT, "value"), Output(ids.CORRUPT_PROMPT, "value"),
        Output(ids.ANSWER_TOKEN, "value"), Output(ids.WRONG_TOKEN, "value"),
        Output(ids.PAIRS_STORE, "data"), Output(ids.METRIC_SELECT, "value"),
        Output(ids.ERROR_MESSAGE, "children", allow_duplicate=True),
        Input(ids.PRESET_SELECT, "value"), Input(ids.PRESET_COUNT, "value"), State(ids.MODEL_SELECT, "value"),
        prevent_initial_call=True)(fill_preset)

    def upload_pairs(contents, filename):
        """An uploaded pairs CSV -> the pairs store (or the error); the upload is reset so the same
        file can be chosen again, and the Preset box is emptied (the pairs are no longer its task's)."""
        if not contents:
            return no_update, no_update, no_update, no_update
        try:
            pairs = parse_upload(contents, filename, upload_file_limit(
                app.server.config.get("MAX_CONTENT_LENGTH")))
        except ValueError as exc:
            return no_update, str(exc), None, no_update
        return pairs, "", None, None

    app.callback(
        Output(ids.PAIRS_STORE, "data", allow_duplicate=True),
        Output(ids.ERROR_MESSAGE, "children", allow_duplicate=True),
        Output(ids.PAIRS_UPLOAD, "contents"), Output(ids.PRESET_SELECT, "value", allow_duplicate=True),
        Input(ids.PAIRS_UPLOAD, "contents"), State(ids.PAIRS_UPLOAD, "filename"),
        prevent_initial_call=True)(upload_pairs)

    def clear_pairs(n_clicks):
        return None if n_clicks else no_update

    app.callback(Output(ids.PAIRS_STORE, "data", allow_duplicate=True),
                 Input(ids.PAIRS_CLEAR, "n_clicks"), prevent_initial_call=True)(clear_pairs)
    app.config.suppress_callback_exceptions = True    # PAIRS_CLEAR exists only with a preview

    def pairs_preview(pairs):
        return render_pairs_preview(pairs)

    app.callback(Output(ids.PAIRS_PREVIEW, "children"), Input(ids.PAIRS_STORE, "data"))(pairs_preview)

    # -- live token view ---------------------------------------------------------------------------
    def token_view(model, clean, corrupt, answer, wrong, bos, pairs, metric=None):
        try:
            m = ctx.model(model)
        except ValueError as exc:
            return render_token_view(None, f"model not available: {exc}")
        form = Form.from_page(model, clean, corrupt, answer, wrong, bos, pairs, metric=metric)
        try:
            view = forms.token_view(m, form)
        except ValueError as exc:
            return render_token_view(None, str(exc))
        return render_token_view(view)

    app.callback(
        Output(ids.TOKEN_VIEW, "children"),
        *page_inputs(PROMPT_IDS), Input(ids.METRIC_SELECT, "value"))(token_view)    # several-token answers

    return SimpleNamespace(model_status=model_status, fill_preset=fill_preset, upload_pairs=upload_pairs,
                           clear_pairs=clear_pairs, pairs_preview=pairs_preview, token_view=token_view)
