"""The upload cap, said inline: a request larger than `create_app(max_upload_mb=)` is refused by
Flask (413) before it is read; the page must still say why instead of silently doing nothing.

Two halves:
- in the browser, a clientside callback on the upload measures the file before the server sees
  it and writes the refusal into `error-message` (the server callback's request is then refused
  with 413 and changes nothing);
- on the server, a 413 gets a short JSON body naming the cap (for scripts and the load test),
  never Flask's HTML page or a traceback.

`create_app` installs both:

>>> install(app, 16 * 2**20)         # doctest: +SKIP
"""
from __future__ import annotations

import json

from dash import Input, Output, State

from dashboard import ids
from dashboard.forms import size_text, too_large_message, upload_file_limit

# dcc.Upload contents are 'data:<type>;base64,<payload>'; the payload is 4/3 of the file.
_CHECK = """
function (contents, filename) {
    if (!contents) { return window.dash_clientside.no_update; }
    var payload = contents.length - contents.indexOf(",") - 1;
    var bytes = Math.floor(payload * 3 / 4);
    if (bytes <= %(limit)d) { return window.dash_clientside.no_update; }
    var big = bytes >= 1048576, x = big ? bytes / 1048576 : bytes / 1024;   // as forms.size_text
    var size = (x < 100 ? x.toFixed(1).replace(/\.0$/, "") : x.toFixed(0)) + (big ? " MB" : " kB");
    return (filename || "upload") + " (" + size + ") " + %(message)s;
}
"""


def check_upload(app, upload_id: str, output_id: str, limit: int, message: str) -> None:
    """The clientside size check of one dcc.Upload: '<file> (<size>) <message>' into `output_id`
    when the file is over `limit` bytes (the server then refuses the request with 413)."""
    app.clientside_callback(_CHECK % {"limit": limit, "message": json.dumps(message)},
                            Output(output_id, "children", allow_duplicate=True),
                            Input(upload_id, "contents"), State(upload_id, "filename"),
                            prevent_initial_call=True)


def install(app, max_request_bytes: int) -> None:
    """Register the clientside check and the 413 handler on a Dash app."""
    from werkzeug.exceptions import RequestEntityTooLarge

    limit = upload_file_limit(max_request_bytes)
    check_upload(app, ids.PAIRS_UPLOAD, ids.ERROR_MESSAGE, limit, too_large_message(limit))
    check_upload(app, ids.NX_UPLOAD, ids.NX_DATASET_STATUS, limit,
                 too_large_message(limit, "prompt datasets"))

    @app.server.errorhandler(RequestEntityTooLarge)
    def _too_large(_exc):
        from flask import jsonify
        body = jsonify(error="request too large",
                       message=f"the request is larger than this server's {size_text(max_request_bytes)} "
                               "limit (--max-upload-mb); pairs CSVs may be up to "
                               f"{size_text(limit)}")
        return body, 413
