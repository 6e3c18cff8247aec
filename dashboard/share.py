"""Shareable runs in the dashboard: export / import a run file, open a run by URL, provenance.

- History tab: "Export run #N" downloads the run on screen as `run-N.patchboard.zip`
  (`patching.runs.bundle`), "Export attribution run #N" the Attribution tab's run (every kind, edges
  too); "Import run" takes such a file (dcc.Upload), stores it as a new run and opens it; errors
  and the weights warning appear inline under the buttons.
- URLs: `/run/<id>` selects that run and shows its heatmap on the Results tab. The id must be an
  integer; it is only ever used as a number for the run store (nothing from the URL reaches the
  filesystem). An unknown or malformed id is said inline on the Results tab. The address bar
  follows the run on screen (replaceState), so a reload or a copied address reopens it.
- Results tab: a link to the current run's URL and a collapsible provenance panel.

Pure pieces (parse, decode, render) are plain functions; `register` wires the callbacks and
returns them as a namespace so tests call them directly.

>>> parse_run_path("/run/12")
12
>>> parse_run_path("/")
"""
from __future__ import annotations

import base64
import binascii
import json
import re
import time
from types import SimpleNamespace

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, dcc, html, no_update

from patching.runs import bundle
from patching.core.provenance import PAIRS_LISTED, Provenance, fingerprint

from patching.runs.limits import MAX_CODE_CHARS, clip
from patching.runs.store import record_id

from dashboard import ids
from dashboard.components import PAGE_FIELDS, clipped, page_outputs, wrong_type
from dashboard.forms import restored_values

RUN_PATH = re.compile(r"^run/(?P<id>[^/]*)/?$")
RUN_ID = re.compile(r"^[0-9]{1,12}$")
IMPORT_HINT = "Drop a .patchboard.zip run file here or "
PROV_CHARS = 300          # a provenance value in the panel (the title shows more)


# -- pure functions ------------------------------------------------------------------------------
def parse_run_path(pathname: str | None, prefix: str = "/") -> int | None:
    """A page path -> the run id it names; None for the plain page; ValueError for anything else.

    >>> parse_run_path("/run/abc")
    Traceback (most recent call last):
    ...
    ValueError: malformed run id 'abc' in the URL: it must be a number, as in /run/12
    """
    if not pathname:
        return None
    if not isinstance(pathname, str):
        raise ValueError(f"the page path must be text, not {type(pathname).__name__}")
    prefix = "/" + (prefix or "/").strip("/")
    path = pathname
    if prefix != "/" and path.startswith(prefix):
        path = path[len(prefix):]
    path = path.lstrip("/")
    if not path.strip("/"):
        return None
    m = RUN_PATH.match(path if path.rstrip("/") != "run" else "run/")
    if m is None:
        shown = path.rstrip("/") if len(path) <= 40 else path[:40] + "…"
        raise ValueError(f"unknown page /{shown!s}; this dashboard opens / and /run/<number>")
    run_id = m.group("id")
    if not RUN_ID.match(run_id):
        shown = run_id if len(run_id) <= 40 else run_id[:40] + "…"
        raise ValueError(f"malformed run id {shown!r} in the URL: it must be a number, as in /run/12")
    return int(run_id)


def stale_run_message(run_id: int) -> str:
    """What /run/<id> says when the store has no such run (deleted, or from another server).

    >>> stale_run_message(7)
    'run 7 not found: it was deleted, or was saved on another server. Open a run from History & compare.'
    """
    return (f"run {run_id} not found: it was deleted, or was saved on another server. "
            "Open a run from History & compare.")


def decode_upload(contents: str | None, filename: str | None = None,
                  max_bytes: int = bundle.MAX_BUNDLE_BYTES) -> bytes:
    """dcc.Upload contents ('data:...;base64,...') -> the file's bytes; ValueError naming the problem.

    >>> decode_upload("data:application/zip;base64,UEs=", "r.patchboard.zip")
    b'PK'
    """
    if (problem := wrong_type(contents, "the upload", str) or wrong_type(filename, "the file name", str)):
        raise ValueError(problem)
    name = clip(filename or "upload", 100)
    if not contents:
        raise ValueError(f"{name}: the file is empty")
    if filename and not filename.lower().endswith(".zip"):
        raise ValueError(f"{name}: expected a Patchboard run file (.patchboard.zip)")
    _, _, payload = contents.partition(",")
    if len(payload) * 3 // 4 > max_bytes:
        raise ValueError(f"{name} is {len(payload) * 3 // 4 / 2**20:.2f} MB; the limit is {max_bytes / 2**20:.2f} MB")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{name}: the upload is not valid base64 data") from None


def local_weights(registry, model_name: str) -> str | None:
    """The weights sha256 of `model_name` if this server offers it (never a path from a request)."""
    if model_name not in registry.names():
        return None
    try:
        return fingerprint(registry.get(model_name)).weights_sha256
    except Exception:
        return None


def import_upload(registry, store, contents: str | None, filename: str | None,
                  max_bytes: int = bundle.MAX_BUNDLE_BYTES) -> tuple[str, int, str | None]:
    """An uploaded run file -> (type, new id, weights warning or None); ValueError when refused."""
    data = decode_upload(contents, filename, max_bytes)
    try:
        b = bundle.read_bundle(data)
    except ValueError as exc:
        raise ValueError(f"{clip(filename or 'upload', 100)}: {exc}") from None
    warning = None
    if b.provenance is not None:
        name = b.provenance.get("model_name", "")
        warning = bundle.weights_warning(b, local_weights(registry, name), "on this server")
    else:
        warning = bundle.weights_warning(b, None)
    return b.type, bundle.import_bundle(store, b), warning


def warm_provenance(model) -> None:
    """Hash the model's weights / tokenizer and read the versions now, in the server process:
    background runs are forked from it and inherit the cache (a hash computed inside a run
    would be lost with its process and recomputed by every run)."""
    from patching.core.provenance import environment
    fingerprint(model)
    environment(model)


# -- render (pure) ---------------------------------------------------------------------------------
def render_provenance(prov: dict | None):
    """The provenance panel's body: a table of what the run was made from (and a user metric's code)."""
    if not prov:
        return html.Div("This run was saved before Patchboard recorded provenance.", className="hint")
    try:
        p = Provenance.from_dict(prov)
    except (ValueError, TypeError) as exc:
        return html.Div(f"provenance unreadable: {clip(str(exc), PROV_CHARS)}", className="error-text")
    v = p.versions
    rows = [("model", p.model_name + (f" @ {p.model_revision}" if p.model_revision else "")),
            ("weights sha256", p.weights_sha256 or "unknown"),
            ("tokenizer sha256", p.tokenizer_sha256 or "unknown"),
            ("metric", p.metric.get("name", "?") + ("" if p.metric.get("source") == "registry"
                                                   else f" ({p.metric.get('qualname', '?')})")),
            ("spec", json.dumps(p.spec, sort_keys=True)),
            ("prompts", f"{len(p.pairs)} pair{'s' if len(p.pairs) != 1 else ''}"
                        + ("" if p.prepend_bos else ", no BOS")),
            ("device · dtype", f"{p.device} · {p.dtype}"),
            ("versions", ", ".join(f"{k} {v.get(k) or '?'}" for k in ("torch", "transformer_lens",
                                                                      "transformers", "python"))),
            ("patchboard commit", v.get("patchboard") or "unknown"),
            ("seeds", json.dumps(p.seeds, sort_keys=True)),
            ("platform", p.platform), ("created", p.created_iso)]
    body = html.Tbody([html.Tr([html.Th(k, className="prov-key"),
                                html.Td(clipped(val, PROV_CHARS), className="prov-val mono")])
                       for k, val in rows])
    code = p.metric.get("code")
    return html.Div([dbc.Table(body, size="sm", className="prov-table"), render_pairs(p.pairs),
                     html.Pre(clip(code, MAX_CODE_CHARS), className="prov-code") if code else None])


def render_pairs(pairs, limit: int = PAIRS_LISTED):
    """The prompt pairs a run was made from, as a table (texts as literals, clipped, the full
    text on hover); the first `limit` and how many more.

    >>> len(render_pairs([("a b", "a c", " b", " c")] * 7, 5).children[0].children[1].children)
    5
    """
    cols = ("clean", "corrupt", "answer", "wrong")
    head = html.Thead(html.Tr([html.Th("#")] + [html.Th(c) for c in cols]))
    body = html.Tbody([html.Tr([html.Td(n)] + [html.Td(clipped(repr(t), PROV_CHARS), className="mono")
                                               for t in pair])
                       for n, pair in enumerate(list(pairs)[:limit])])
    more = len(pairs) - limit
    return html.Div([dbc.Table([head, body], size="sm", striped=True, className="prov-pairs"),
                     html.Div(f"… and {more} more pair{'s' if more != 1 else ''}" if more > 0 else "",
                              className="hint")], id=ids.PROVENANCE_PAIRS)


def render_link(href: str | None):
    if not href:
        return None
    return html.Span([html.Span("Link to this run:", className="toolbar-label", style={"marginRight": "0.4rem"}),
                      html.A(href, href=href, className="run-link mono")])


# -- layout pieces (placed by the Results and History tabs) -----------------------------------------------------------
def location() -> dcc.Location:
    return dcc.Location(id=ids.URL, refresh=False)


def results_header() -> html.Div:
    """Above the heatmap: the inline URL message and the current run's link."""
    return html.Div([html.Div(id=ids.RUN_URL_STATUS, className="error-text"),
                     html.Div(id=ids.RUN_LINK, className="run-link-row")])


def provenance_panel() -> html.Details:
    return html.Details([html.Summary("Provenance: model, weights, prompts, metric, versions"),
                         html.Div(id=ids.PROVENANCE_BODY)], id=ids.PROVENANCE_PANEL, className="provenance")


def history_section() -> html.Div:
    return html.Div([
        html.H3("Share a run", className="section-title mt-3"),
        html.Div("Export the run on screen as one file (results, prompts, provenance), or import one "
                 "exported elsewhere; a run also opens by its link, /run/<id>.", className="hint mb-2"),
        html.Div([
            dbc.Button("Export run", id=ids.EXPORT_RUN_BUTTON, color="primary", outline=True, size="sm",
                       disabled=True, n_clicks=0),
            dcc.Download(id=ids.EXPORT_RUN_DOWNLOAD),
            dbc.Button("Export attribution run", id=ids.EXPORT_ATTR_BUTTON, color="secondary", outline=True,
                       size="sm", disabled=True, n_clicks=0),
            dcc.Download(id=ids.EXPORT_ATTR_DOWNLOAD),
            dcc.Upload(id=ids.IMPORT_RUN_UPLOAD, multiple=False, accept=".zip,application/zip",
                       className="upload-box import-box",
                       children=html.Div([IMPORT_HINT, html.A("choose a file")])),
        ], className="share-row"),
        html.Div(id=ids.SHARE_STATUS, role="status", className="share-status"),
    ])


# A run file larger than the server's request cap is refused by Flask (413) before any callback
# runs; the browser measures it first and says so inline (as dashboard/server/upload_guard.py does for
# pairs CSVs).
_CHECK_SIZE = """
function (contents, filename) {
    if (!contents) { return window.dash_clientside.no_update; }
    var bytes = Math.floor((contents.length - contents.indexOf(",") - 1) * 3 / 4);
    if (bytes <= %(limit)d) { return window.dash_clientside.no_update; }
    return (filename || "upload") + " (" + (bytes / 1048576).toPrecision(3) + " MB) " + %(message)s;
}
"""


# The address bar follows the run on screen (history.replaceState: no reload, no new history
# entry, and dcc.Location is not told, so no callback runs again); a reload reopens that run.
_FOLLOW_RUN = """
function (runId) {
    if (runId === null || runId === undefined || !/^[0-9]{1,12}$/.test(String(runId))) {
        return window.dash_clientside.no_update;
    }
    var target = %(base)s + String(runId);
    if (window.location.pathname !== target) {
        window.history.replaceState(window.history.state, "", target + window.location.search);
    }
    return window.dash_clientside.no_update;
}
"""


def upload_limit(max_request_bytes: int | None) -> int:
    """The largest run file the page can upload: the request cap less base64 overhead, at most
    the run-file cap.

    >>> upload_limit(16 * 2**20)
    12517376
    """
    cap = max_request_bytes or 16 * 2**20
    return min(max(cap * 3 // 4 - 2**16, 1), bundle.MAX_BUNDLE_BYTES)


def run_href_for(app: dash.Dash):
    """run id -> its page's address under the app's path prefix."""
    return lambda run_id: app.get_relative_path(f"/run/{int(run_id)}")


def share_outputs() -> list[Output]:
    """What `share_view` fills: the run's link, provenance and the Export button."""
    return [Output(ids.RUN_LINK, "children"), Output(ids.PROVENANCE_BODY, "children"),
            Output(ids.EXPORT_RUN_BUTTON, "children"), Output(ids.EXPORT_RUN_BUTTON, "disabled")]


def share_view(run, chosen: bool, run_href) -> tuple:
    """A stored run (None: none chosen, or unreadable when `chosen`) -> its link, provenance panel,
    Export button label and whether the button is disabled."""
    if run is None:
        return None, (html.Div() if chosen else render_provenance(None)), "Export run", True
    return (render_link(run_href(run.info.id)), render_provenance(run.result.provenance),
            f"Export run #{run.info.id}", False)


def register(app: dash.Dash, registry, store) -> SimpleNamespace:
    """Wire routing, export and import; returns the plain functions so tests call them directly."""
    return SimpleNamespace(**vars(_register_route(app, registry, store)), **vars(_register_export(app, store)),
                           **vars(_register_import(app, registry, store)))


def _register_route(app: dash.Dash, registry, store) -> SimpleNamespace:
    """/run/<id> opens that run with its form on the left panel (as History's Open does); the
    address bar follows the run on screen."""
    prefix = app.config.requests_pathname_prefix or "/"
    run_href = run_href_for(app)
    keep = (no_update,) * len(PAGE_FIELDS)

    app.clientside_callback(_FOLLOW_RUN % {"base": json.dumps(app.get_relative_path("/run/"))},
                            Output(ids.RUN_LINK, "title"), Input(ids.CURRENT_RUN, "data"),
                            prevent_initial_call=True)

    def route(pathname):
        """/run/<id> -> that run on the Results tab and its prompts, kind, metric and direction
        on the left panel; anything else malformed -> said inline."""
        try:
            run_id = parse_run_path(pathname, prefix)
        except ValueError as exc:           # the screen is cleared: the address names no run on it
            return (None, ids.TAB_RESULTS, str(exc)) + keep
        if run_id is None:
            return (no_update, no_update, "") + keep
        try:
            run = store.get(run_id)
        except ValueError:                  # deleted, or never saved here: nothing of another run stays
            return (None, ids.TAB_RESULTS, stale_run_message(run_id)) + keep
        values = restored_values(run.result.spec.to_dict(), run.pairs, registry.names())
        return (run_id, ids.TAB_RESULTS, "") + tuple(values.get(f, no_update) for f in PAGE_FIELDS)

    app.callback(Output(ids.CURRENT_RUN, "data", allow_duplicate=True),
                 Output(ids.TABS, "active_tab", allow_duplicate=True),
                 Output(ids.RUN_URL_STATUS, "children"),
                 *[Output(i, p, allow_duplicate=True) for i, p in page_outputs()],
                 Input(ids.URL, "pathname"), prevent_initial_call="initial_duplicate")(route)

    def current(run_id):
        """The run on screen -> its link, its provenance, and the Export button (the page draws
        these with the Results tab's heatmap, from one read: `tabs.results`)."""
        try:
            run = store.get(record_id(run_id)) if run_id else None
        except ValueError:
            run = None
        return share_view(run, bool(run_id), run_href)

    return SimpleNamespace(route=route, current_run_share=current, run_href=run_href)


def _register_export(app: dash.Dash, store) -> SimpleNamespace:
    """Export the run on screen, or the Attribution tab's run, as a run file."""

    def export(n_clicks, run_id):
        """Export -> the run file download (or why not)."""
        if not n_clicks or not run_id:
            return no_update, no_update
        try:
            run_id = record_id(run_id)
            data = bundle.export_run(store, run_id)
        except ValueError as exc:
            return no_update, html.Span(str(exc), className="error-text")
        name = bundle.file_name(run_id)
        return (dcc.send_bytes(data, name),
                f"Exported run #{run_id} as {name} ({len(data) / 1024:.1f} KiB).")

    app.callback(Output(ids.EXPORT_RUN_DOWNLOAD, "data"), Output(ids.SHARE_STATUS, "children"),
                 Input(ids.EXPORT_RUN_BUTTON, "n_clicks"), State(ids.CURRENT_RUN, "data"),
                 prevent_initial_call=True)(export)

    def attribution_button(att_id):
        """The Attribution tab's run -> the Export attribution button."""
        try:
            return (f"Export attribution run #{record_id(att_id, 'attribution run')}", False) if att_id \
                else ("Export attribution run", True)
        except ValueError:
            return "Export attribution run", True

    app.callback(Output(ids.EXPORT_ATTR_BUTTON, "children"), Output(ids.EXPORT_ATTR_BUTTON, "disabled"),
                 Input(ids.ATTR_RUN, "data"))(attribution_button)

    def export_attribution(n_clicks, att_id):
        """Export attribution run -> every kind (and the edge scores, when kept) as one run file."""
        if not n_clicks or not att_id:
            return no_update, no_update
        try:
            att_id = record_id(att_id, "attribution run")
            data = bundle.export_attribution(store, att_id)
        except ValueError as exc:
            return no_update, html.Span(str(exc), className="error-text")
        name = bundle.file_name(att_id, "attribution")
        return (dcc.send_bytes(data, name),
                f"Exported attribution run #{att_id} as {name} ({len(data) / 1024:.1f} KiB).")

    app.callback(Output(ids.EXPORT_ATTR_DOWNLOAD, "data"), Output(ids.SHARE_STATUS, "children", allow_duplicate=True),
                 Input(ids.EXPORT_ATTR_BUTTON, "n_clicks"), State(ids.ATTR_RUN, "data"),
                 prevent_initial_call=True)(export_attribution)

    return SimpleNamespace(export_run=export, attribution_export_button=attribution_button,
                           export_attribution=export_attribution)


def _register_import(app: dash.Dash, registry, store) -> SimpleNamespace:
    """Import a run file as a new run (said inline when the browser sees it is too large)."""
    limit = upload_limit(app.server.config.get("MAX_CONTENT_LENGTH"))
    message = (f"is larger than the {limit / 2**20:.1f} MB upload limit of this server; import it with "
               "`python -m patching import FILE --data-dir ...`, or restart the server with a larger "
               "--max-upload-mb")
    app.clientside_callback(_CHECK_SIZE % {"limit": limit, "message": json.dumps(message)},
                            Output(ids.SHARE_STATUS, "children", allow_duplicate=True),
                            Input(ids.IMPORT_RUN_UPLOAD, "contents"), State(ids.IMPORT_RUN_UPLOAD, "filename"),
                            prevent_initial_call=True)

    def import_run(contents, filename):
        """An uploaded run file -> a new run in the history, opened; errors / warnings inline."""
        if not contents:
            return no_update, no_update, no_update, no_update, no_update
        try:
            type_, new_id, warning = import_upload(registry, store, contents, filename, limit)
        except ValueError as exc:
            return html.Span(str(exc), className="error-text"), no_update, no_update, no_update, None
        what = "attribution run" if type_ == "attribution" else "run"
        status = [html.Div(f"Imported {clip(filename or 'the file', 100)} as {what} #{new_id}"
                           + (" (open it on the Attribution tab)." if type_ == "attribution" else "."))]
        if warning:
            status.append(html.Div(f"Warning: {warning}", className="warning-text"))
        if type_ == "attribution":
            return status, time.time(), no_update, new_id, None
        return status, time.time(), new_id, no_update, None

    app.callback(Output(ids.SHARE_STATUS, "children", allow_duplicate=True),
                 Output(ids.HISTORY_VERSION, "data", allow_duplicate=True),
                 Output(ids.CURRENT_RUN, "data", allow_duplicate=True),
                 Output(ids.ATTR_RUN, "data", allow_duplicate=True),
                 Output(ids.IMPORT_RUN_UPLOAD, "contents"),
                 Input(ids.IMPORT_RUN_UPLOAD, "contents"), State(ids.IMPORT_RUN_UPLOAD, "filename"),
                 prevent_initial_call=True)(import_run)

    return SimpleNamespace(import_run=import_run)
