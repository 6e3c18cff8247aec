"""Patchboard's dashboard: `create_app(registry, store, jobs)` builds the Dash app.

Nothing module-level is mutable: the model registry, the run store and the background job
manager are passed in, so tests build an app around a tiny model.

>>> from patching.model.loading import ModelRegistry                      # doctest: +SKIP
>>> app = create_app(ModelRegistry(["default"]), RunStore(".patchboard"), None)   # doctest: +SKIP
>>> app.run(host="127.0.0.1", port=8050)                           # doctest: +SKIP
"""
from __future__ import annotations

import posixpath
from pathlib import Path
from urllib.parse import unquote

import dash

from patching.paths import assets_dir

from dashboard.server.jobs import JOB_KINDS, make_jobs
from patching.runs.store import RunStore

ASSETS = assets_dir()          # assets/ of the checkout, or the installed package data


def _is_model_asset(path: str, prefix: str) -> bool:
    """Whether a request path points into assets/models (after decoding and normalising).

    >>> _is_model_asset("/assets/models/x/model.safetensors", "/")
    True
    >>> _is_model_asset("/assets/./Models/../models//x", "/")
    True
    >>> _is_model_asset("/assets/style.css", "/")
    False
    """
    p = unquote(path)
    for _ in range(3):                       # undo double encoding too
        p = unquote(p)
    p = posixpath.normpath("/" + p.replace("\\", "/")).lower()
    base = posixpath.normpath("/" + (prefix or "/").strip("/") + "/assets").lower()
    return p == base + "/models" or p.startswith(base + "/models/")


def create_app(registry, store: RunStore, jobs=None, *, data_dir: str | Path | None = None,
               model: str | None = None, title: str = "Patchboard",
               assets_folder: str | Path | None = None, max_upload_mb: float = 16,
               max_memory_mb: float | None = None, shards=None) -> dash.Dash:
    """The Dash app around a model registry, a run store and a background job manager.

    jobs=None uses a DiskcacheManager under the store's data dir. `model` is the model selected
    on load (default: the registry's first name). `assets_folder` (tests) replaces assets/;
    whatever it is, its models/ subfolder is never served. `max_upload_mb` caps every request
    (a larger one gets 413 and the page says so inline); pairs CSVs may be 3/4 of it.
    `max_memory_mb` caps one batch of an exact sweep and its cost estimate (None: a share of the
    free memory, `patching.model.memory_budget`). `shards`: the backend a Run can be split over
    (`dashboard.server.shards.CeleryShards`; None: the Shards control is off and says why).
    """
    from dashboard import page
    from dashboard.context import Context
    from dashboard.server import upload_guard

    data_dir = Path(data_dir) if data_dir is not None else store.data_dir
    if jobs is None:
        jobs = make_jobs("diskcache", data_dir)
    app = dash.Dash(
        __name__, title=title, update_title=None,
        assets_folder=str(assets_folder or ASSETS),
        assets_path_ignore=["^models$"], background_callback_manager=jobs,
        suppress_callback_exceptions=True)
    server = app.server
    if not max_upload_mb or max_upload_mb <= 0:
        raise ValueError(f"max_upload_mb must be a positive number of megabytes, not {max_upload_mb!r}")
    server.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 2**20)
    upload_guard.install(app, server.config["MAX_CONTENT_LENGTH"])
    prefix = app.config.requests_pathname_prefix or "/"

    @server.before_request
    def _no_model_files():
        from flask import abort, request
        if _is_model_asset(request.path, prefix):
            abort(404)

    names = registry.names()
    app.layout = page.page(registry, model or (names[0] if names else "default"))
    if max_memory_mb is not None and not 0 < max_memory_mb < float("inf"):
        raise ValueError(f"max_memory_mb must be a positive number of megabytes, not {max_memory_mb!r}")
    namespaces = page.register(app, Context(registry, store, data_dir, max_memory_mb=max_memory_mb,
                                            shards=shards, celery_jobs=isinstance(jobs, dash.CeleryManager)))
    app.patchboard = namespaces.pop("")           # the callbacks as plain functions, for tests
    for name, ns in namespaces.items():
        setattr(app, f"patchboard_{name}", ns)
    return app


__all__ = ["create_app", "make_jobs", "JOB_KINDS", "RunStore"]
