"""The Neurons tab's dataset explorer: load a prompt dataset (a text file or CSV; the factual task's
prompts until then), search it, pick a prompt and a token, see every layer's neurons there; pick a
neuron (a click on that map) for its histogram, its top-activating tokens with context on both
sides, and the prompts' PCA → t-SNE map coloured by it (a click on a point picks that prompt).

Uploads are kept in `data_dir/datasets/<sha256>.json`; the page keeps only their id. Sets whose
activations would not fit the memory budget are refused at upload, naming both sizes
(`neurons.check_fits`). Activations are computed once per model and dataset (`FrameMemo`).
The view functions are pure over a `NeuronActs`; `register` returns the callbacks as plain
functions so tests call them directly.

>>> neuron_explorer.register(app, ctx).token_view(3, 0, {"source": "task"}, model_name, 1, 7)   # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import dash_bootstrap_components as dbc
from dash import Input, Output, State, dash_table, dcc, html, no_update

from dashboard import ids
from dashboard.components import error_text, graph, radio, triggered_value
from dashboard.forms import MAX_UPLOAD_BYTES, parse_dataset_upload, size_text, whole_number
from dashboard.tabs.inspect import FrameMemo
from patching import figures
from patching.figures import neuron_explorer as fx
from patching.figures.lens import token_text
from patching.figures.neurons import top_activating_table
from patching.inspect import datasets as D
from patching.inspect import neurons as N
from patching.model.memory_budget import memory_budget

TASK_PROMPTS = 64                  # the default dataset: the factual task's eval prompts
MAX_ROWS = 500                     # prompts listed in the table (the search narrows them)
PAGE_SIZE = 8                      # table rows a page
TASK = {"source": "task"}
IDLE = ("Load a prompt dataset — a .txt file (one prompt a line) or a .csv with a 'text' and an optional "
        f"'label' column — or explore the factual task's {TASK_PROMPTS} prompts.")


# -- datasets: saved uploads, texts, activations -------------------------------------------------------
def save_dataset(data_dir: Path, texts: list[str], labels, name: str) -> dict:
    """Keep an uploaded dataset as data_dir/datasets/<sha256>.json; the page's reference to it."""
    body = json.dumps({"name": name, "texts": texts, "labels": labels}, ensure_ascii=False)
    sha = hashlib.sha256(body.encode()).hexdigest()
    folder = Path(data_dir) / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{sha}.json").write_text(body, encoding="utf-8")
    return {"source": "upload", "sha": sha, "name": name, "n": len(texts)}


def dataset_texts(ctx, model, dataset: dict | None) -> N.Texts:
    """The dataset a page names, tokenised for `model`; ValueError for an unknown or gone upload."""
    if not dataset or dataset.get("source") != "upload":
        return N.task_texts(model, "factual", TASK_PROMPTS)
    sha = str(dataset.get("sha", ""))
    path = Path(ctx.data_dir) / "datasets" / f"{sha}.json"
    if not re.fullmatch(r"[0-9a-f]{64}", sha) or not path.exists():
        raise ValueError("the loaded dataset is no longer on the server; load the file again")
    d = json.loads(path.read_text(encoding="utf-8"))
    return N.encode_texts(model, d["texts"], d["labels"])


def dataset_name(dataset: dict | None) -> str:
    """'prompts.csv' or 'the factual task'.

    >>> dataset_name({"source": "upload", "name": "p.csv"}), dataset_name(None)
    ('p.csv', 'the factual task')
    """
    return dataset["name"] if dataset and dataset.get("source") == "upload" else "the factual task"


def load_upload(ctx, model, contents, filename) -> tuple[dict, str]:
    """An upload -> (the page's dataset reference, status); ValueError naming a bad file or a set
    over the memory budget."""
    texts, labels = parse_dataset_upload(contents, filename, MAX_UPLOAD_BYTES)
    encoded = N.encode_texts(model, texts, labels)
    need = N.check_fits(model, encoded)
    dataset = save_dataset(ctx.data_dir, texts, labels, filename or "upload")
    return dataset, (f"Loaded {dataset['name']}: {D.dataset_summary(encoded)}; activations "
                     f"{size_text(need)} of the {size_text(int(memory_budget('cpu')))} memory budget.")


# -- pure views over activations --------------------------------------------------------------------
def prompt_rows(texts: N.Texts, query: str | None, regex: bool) -> tuple[list[dict], str]:
    """(table records of the matching prompts, at most MAX_ROWS; status)."""
    found = D.search(texts, query, regex)
    rows = [{"prompt": i, "label": texts.labels[i], "tokens": texts.lengths[i],
             "text": texts.texts[i] if len(texts.texts[i]) <= 200 else texts.texts[i][:199] + "…"}
            for i in found[:MAX_ROWS]]
    shown = f" (the first {MAX_ROWS} listed)" if len(found) > MAX_ROWS else ""
    what = f" matching {query!r}" if query else ""
    return rows, f"{len(found):,} of {texts.n:,} prompts{what}{shown} · {D.dataset_summary(texts)}"


def token_label(texts: N.Texts, prompt: int, pos: int, context: int = 8) -> list:
    """'token 5 of 12' and the prompt around it, the token in bold."""
    toks = texts.str_tokens[prompt]
    left, right = "".join(toks[max(0, pos - context):pos]), "".join(toks[pos + 1:pos + 1 + context])
    return [html.Span(f"Prompt {prompt}, token {pos} of {len(toks)}: ", className="toolbar-label"),
            html.Span(("…" if pos > context else "") + left), html.B(token_text(toks[pos], 40)),
            html.Span(right + ("…" if pos + 1 + context < len(toks) else ""))]


def neuron_view(acts: N.NeuronActs, layer, neuron, prompt: int | None, pos: int | None) -> tuple:
    """(histogram figure, top-activating table (columns, records), status) of one neuron."""
    layer = whole_number(layer, "layer", 0, -acts.n_layers, acts.n_layers - 1) % acts.n_layers
    neuron = whole_number(neuron, "neuron", 0, 0, acts.d_mlp - 1)
    hist = D.activation_histogram(acts, layer, neuron)
    marked = None
    if prompt is not None and pos is not None and pos < acts.texts.lengths[prompt]:
        marked = float(acts.acts[layer, prompt, pos, neuron])
    fig = fx.histogram_figure(hist, marked, f"prompt {prompt}, token {pos}: {marked:.3f}" if marked is not None else "")
    top = N.top_activating(acts, layer, neuron, k=20, context=8)
    status = (f"L{layer}N{neuron}: mean {float(acts.acts[layer][acts.texts.mask][:, neuron].mean()):.4f} over "
              f"{int(hist['count'].sum()):,} tokens; it fires most on {top.token.iloc[0]!r} in prompt "
              f"{int(top.prompt.iloc[0])} ({top.activation.iloc[0]:.3f}).")
    return fig, top_activating_table(top), status


# -- layout ---------------------------------------------------------------------------------------------
def _number(label_text: str, id_, value, placeholder="", min_=None) -> html.Div:
    """A labelled small whole-number input, laid out in a toolbar as the tab's own options are."""
    return html.Div([dbc.Label(label_text, html_for=id_, className="field-label"),
                     dbc.Input(id=id_, type="number", value=value, step=1, min=min_, size="sm", debounce=True,
                               placeholder=placeholder, className="inspect-number")], className="inspect-field")


def section() -> html.Div:
    """The explorer's block of the Neurons tab."""
    table_cell = {"fontFamily": figures.FONT, "fontSize": 13, "padding": "3px 8px", "textAlign": "left",
                  "whiteSpace": "normal", "height": "auto"}
    return html.Div([
        html.H3("Dataset explorer", className="section-title"),
        dcc.Upload(id=ids.NX_UPLOAD, multiple=False, accept=".txt,.csv,text/plain,text/csv", className="upload-box",
                   children=html.Div(["Drop a prompt dataset (.txt or .csv) here or ", html.A("choose a file")])),
        html.Div(IDLE, id=ids.NX_DATASET_STATUS, className="hint", role="status"),
        dcc.Store(id=ids.NX_DATASET, data=TASK), dcc.Store(id=ids.NX_PROMPT),
        html.Div([
            dbc.Input(id=ids.NX_SEARCH, type="search", placeholder="search the prompts", debounce=True, size="sm",
                      style={"maxWidth": "320px"}),
            dbc.Checklist(id=ids.NX_REGEX, options=[{"label": "regular expression", "value": "re"}], value=[],
                          switch=True),
            html.Span(id=ids.NX_SEARCH_STATUS, className="hint"),
        ], className="toolbar"),
        dash_table.DataTable(id=ids.NX_PROMPTS, columns=[{"name": c, "id": c} for c in ("prompt", "label", "tokens",
                                                                                          "text")],
                             data=[], row_selectable="single", selected_rows=[], page_size=PAGE_SIZE, page_current=0,
                             style_table={"overflowX": "auto"}, style_cell=table_cell,
                             style_header={"fontWeight": 600}),
        html.Div([html.Span("Token", className="toolbar-label"),
                  html.Div(dcc.Slider(id=ids.NX_TOKEN, min=0, max=1, step=1, value=0, marks=None,
                                      tooltip={"placement": "bottom"}), style={"flex": "1", "minWidth": "300px"})],
                 className="toolbar"),
        html.Div(id=ids.NX_TOKEN_LABEL, className="hint"),
        graph(ids.NX_TOKEN_GRAPH, "Select a prompt.", height=300),
        html.Div([_number("Layer", ids.NX_LAYER, 0, min_=0), _number("Neuron", ids.NX_NEURON, 0, min_=0),
                  html.Span("or click a cell of the map above", className="hint")], className="inspect-options toolbar"),
        html.Div(id=ids.NX_NEURON_STATUS, className="hint", role="status"),
        dbc.Row([
            dbc.Col(graph(ids.NX_HISTOGRAM, "Pick a neuron.", height=300), md=5),
            dbc.Col(dash_table.DataTable(id=ids.NX_TOP, columns=[], data=[], markdown_options={"html": False},
                                         page_size=10, style_table={"overflowX": "auto"}, style_cell=table_cell,
                                         style_header={"fontWeight": 600}), md=7),
        ], className="g-2"),
        html.Div([html.Div([dbc.Label("Map", html_for=ids.NX_METHOD, className="field-label"),
                            radio(ids.NX_METHOD, {"pca": "PCA", "tsne": "PCA → t-SNE"}, "pca")],
                           className="inspect-field"),
                  _number("Position", ids.NX_CLUSTER_POS, -1, "-1 = each prompt's last")],
                 className="inspect-options toolbar"),
        graph(ids.NX_CLUSTER, "Pick a neuron.", height=440),
    ], className="explorer-section")


# -- callbacks --------------------------------------------------------------------------------------------
def register(app, ctx) -> SimpleNamespace:
    """Wire the explorer; returns the plain functions so tests call them directly."""
    memo = FrameMemo(size=6)

    def acts_of(model_name, dataset):
        model = ctx.model(model_name)
        key = (model.name, "explorer", dataset.get("sha") if dataset else None)
        return memo.get(key, lambda: N.collect_activations(model, dataset_texts(ctx, model, dataset)))

    def upload(contents, filename, model_name):
        """A dropped file -> the dataset (saved on the server) and what was loaded, or why not."""
        try:
            return load_upload(ctx, ctx.model(model_name), contents, filename)
        except ValueError as exc:
            return no_update, error_text(str(exc))

    app.callback(Output(ids.NX_DATASET, "data"), Output(ids.NX_DATASET_STATUS, "children", allow_duplicate=True),
                 Input(ids.NX_UPLOAD, "contents"), State(ids.NX_UPLOAD, "filename"),
                 State(ids.MODEL_SELECT, "value"), prevent_initial_call=True)(upload)

    def prompts(dataset, query, regex, model_name, active_tab):
        """Dataset + search -> the matching prompts (the first selected), their count."""
        if active_tab != ids.TAB_NEURONS:
            return (no_update,) * 3
        try:
            rows, status = prompt_rows(acts_of(model_name, dataset).texts, query, bool(regex))
        except ValueError as exc:
            return [], [], error_text(str(exc))
        return rows, [0] if rows else [], f"{dataset_name(dataset)}: {status}"

    app.callback(Output(ids.NX_PROMPTS, "data"), Output(ids.NX_PROMPTS, "selected_rows"),
                 Output(ids.NX_SEARCH_STATUS, "children"), Input(ids.NX_DATASET, "data"),
                 Input(ids.NX_SEARCH, "value"), Input(ids.NX_REGEX, "value"), Input(ids.MODEL_SELECT, "value"),
                 Input(ids.TABS, "active_tab"))(prompts)

    def select(selected_rows, click, rows, trig=None):
        """A table row or a map point -> the selected prompt's index in the dataset; a map point
        also selects its row in the table (and turns to its page) when the search lists it."""
        trig = trig or triggered_value()[0]
        if trig == ids.NX_CLUSTER:
            custom = (((click or {}).get("points") or [{}])[0]).get("customdata")
            if not custom:
                return no_update, no_update, no_update
            prompt = int(custom[0])
            at = [i for i, r in enumerate(rows or []) if r["prompt"] == prompt]
            return prompt, at[:1], (at[0] // PAGE_SIZE if at else no_update)
        if not selected_rows or not rows or selected_rows[0] >= len(rows):
            return None, no_update, no_update
        return int(rows[selected_rows[0]]["prompt"]), no_update, no_update

    app.callback(Output(ids.NX_PROMPT, "data"), Output(ids.NX_PROMPTS, "selected_rows", allow_duplicate=True),
                 Output(ids.NX_PROMPTS, "page_current"), Input(ids.NX_PROMPTS, "selected_rows"),
                 Input(ids.NX_CLUSTER, "clickData"), State(ids.NX_PROMPTS, "data"),
                 prevent_initial_call=True)(select)

    return SimpleNamespace(upload=upload, prompts=prompts, select=select, acts_of=acts_of, memo=memo,
                           **vars(_register_views(app, acts_of, memo)))


def _register_views(app, acts_of, memo: FrameMemo) -> SimpleNamespace:
    """The slider, every layer at the token, the neuron's views and the cluster map."""

    def slider(prompt, dataset, model_name):
        """A prompt -> the slider over its tokens, on its last token."""
        if prompt is None:
            return 1, 0, None
        try:
            n = acts_of(model_name, dataset).texts.lengths[prompt]
        except (ValueError, IndexError):
            return 1, 0, None
        step = max(1, n // 8)
        return n - 1, n - 1, {i: str(i) for i in range(0, n, step)}

    app.callback(Output(ids.NX_TOKEN, "max"), Output(ids.NX_TOKEN, "value"), Output(ids.NX_TOKEN, "marks"),
                 Input(ids.NX_PROMPT, "data"), State(ids.NX_DATASET, "data"), State(ids.MODEL_SELECT, "value"),
                 prevent_initial_call=True)(slider)

    def token_view(pos, prompt, dataset, model_name, layer, neuron):
        """Prompt + token -> every layer's neurons there (the picked neuron ringed), and its label."""
        if prompt is None:
            return figures.empty_figure("Select a prompt.", 300), ""
        try:
            acts = acts_of(model_name, dataset)
            df = D.token_activations(acts, prompt, pos or 0)
            pos = int(df.pos.iloc[0])
            picked = (int(layer), int(neuron)) if layer is not None and neuron is not None else None
            return fx.token_layers_heatmap(df, picked), token_label(acts.texts, prompt, pos)
        except ValueError as exc:
            return figures.empty_figure(str(exc), 300), error_text(str(exc))

    app.callback(Output(ids.NX_TOKEN_GRAPH, "figure"), Output(ids.NX_TOKEN_LABEL, "children"),
                 Input(ids.NX_TOKEN, "value"), Input(ids.NX_PROMPT, "data"), State(ids.NX_DATASET, "data"),
                 State(ids.MODEL_SELECT, "value"), Input(ids.NX_LAYER, "value"), Input(ids.NX_NEURON, "value"),
                 prevent_initial_call=True)(token_view)

    def pick(click):
        """A click on the layers × neurons map -> that layer and neuron."""
        point = ((click or {}).get("points") or [{}])[0]
        if point.get("curveNumber", 0) != 0 or point.get("x") is None:
            return no_update, no_update
        return int(point["y"]), int(point["x"])

    app.callback(Output(ids.NX_LAYER, "value"), Output(ids.NX_NEURON, "value"),
                 Input(ids.NX_TOKEN_GRAPH, "clickData"), prevent_initial_call=True)(pick)

    def neuron(layer, neuron_, prompt, pos, dataset, model_name):
        """Layer + neuron -> histogram (the selected token marked), top-activating table, status."""
        try:
            fig, (columns, data), status = neuron_view(acts_of(model_name, dataset), layer, neuron_, prompt, pos)
        except ValueError as exc:
            return figures.empty_figure(str(exc), 300), [], [], error_text(str(exc))
        return fig, columns, data, status

    app.callback(Output(ids.NX_HISTOGRAM, "figure"), Output(ids.NX_TOP, "columns"), Output(ids.NX_TOP, "data"),
                 Output(ids.NX_NEURON_STATUS, "children"), Input(ids.NX_LAYER, "value"),
                 Input(ids.NX_NEURON, "value"), Input(ids.NX_PROMPT, "data"), Input(ids.NX_TOKEN, "value"),
                 Input(ids.NX_DATASET, "data"), State(ids.MODEL_SELECT, "value"),
                 prevent_initial_call=True)(neuron)

    def cluster(layer, neuron_, method, pos, prompt, dataset, model_name):
        """Prompts mapped by the layer's activations at `pos` (PCA or PCA → t-SNE, computed once per
        layer and position), coloured by the neuron; the selected prompt ringed."""
        try:
            acts = acts_of(model_name, dataset)
            layer = whole_number(layer, "layer", 0, -acts.n_layers, acts.n_layers - 1) % acts.n_layers
            pos = whole_number(pos, "position", -1)
            key = (acts.model_name, "explorer-map", dataset.get("sha") if dataset else None, layer, pos, method)
            coords = memo.get(key, lambda: N.cluster_prompts(acts, layer, pos, method=method or "pca"))
            df = D.with_neuron(acts, coords, whole_number(neuron_, "neuron", 0, 0, acts.d_mlp - 1))
        except ValueError as exc:
            return figures.empty_figure(str(exc), 440)
        return fx.cluster_neuron_scatter(df, prompt)

    app.callback(Output(ids.NX_CLUSTER, "figure"), Input(ids.NX_LAYER, "value"), Input(ids.NX_NEURON, "value"),
                 Input(ids.NX_METHOD, "value"), Input(ids.NX_CLUSTER_POS, "value"), Input(ids.NX_PROMPT, "data"),
                 Input(ids.NX_DATASET, "data"), State(ids.MODEL_SELECT, "value"),
                 prevent_initial_call=True)(cluster)
    return SimpleNamespace(slider=slider, token_view=token_view, pick=pick, neuron=neuron, cluster=cluster)


__all__ = ["section", "register", "save_dataset", "dataset_texts", "load_upload", "prompt_rows", "neuron_view",
           "token_label", "IDLE"]
