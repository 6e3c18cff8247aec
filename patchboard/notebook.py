"""`patchboard.show(result)`: a notebook result opened in the dashboard.

The result is stored in the dashboard's run history (the data dir: `$PATCHBOARD_DATA_DIR`, else
`.patchboard` in a checkout, else `~/.patchboard`) like a run made on the page, and its address
`http://HOST:PORT/run/<id>` is returned (and printed): a dashboard serving that data dir opens it
there. With `jupyter_mode` ("inline", "jupyterlab", "tab" or "external", Dash's own modes) the
dashboard is also served from the notebook's kernel, offering `model` (pass the model a result of
an in-memory model was made with, so its heads can be clicked); Dash's inline frame opens at the
page's start, where the run is first in the history.

>>> url = show(result, data_dir=tmp_path)           # doctest: +SKIP
http://127.0.0.1:8050/run/1
"""
from __future__ import annotations

from pathlib import Path

JUPYTER_MODES = ("inline", "jupyterlab", "tab", "external")


def _pairs(result, pairs) -> list[tuple[str, str, str, str]]:
    """The prompt pairs to store with the run: given, or the ones its provenance recorded."""
    if pairs is None:
        pairs = (result.provenance or {}).get("pairs")
    if not pairs:
        raise ValueError("the result records no prompt pairs (no provenance); pass them: show(result, pairs=prompts.pairs)")
    return [(p.clean, p.corrupt, p.answer, p.wrong) if hasattr(p, "clean") else tuple(p) for p in pairs]


def show(result, *, pairs=None, model=None, data_dir: str | Path | None = None, label: str = "",
         jupyter_mode: str | None = None, host: str = "127.0.0.1", port: int = 8050) -> str:
    """Store a sweep or path result in the run history and return its dashboard address; with
    `jupyter_mode`, serve the dashboard from this kernel too (see the module doc).

    >>> show(result, data_dir=tmp_path, jupyter_mode="sideways")
    Traceback (most recent call last):
    ...
    ValueError: jupyter_mode must be one of inline, jupyterlab, tab, external (or None: store the run and return its address only), not 'sideways'
    """
    from patching.core.results import PatchResult
    from patching.paths import default_data_dir
    from patching.runs.store import RunStore
    if jupyter_mode is not None and jupyter_mode not in JUPYTER_MODES:
        raise ValueError(f"jupyter_mode must be one of {', '.join(JUPYTER_MODES)} (or None: store the run and "
                         f"return its address only), not {jupyter_mode!r}")
    if not isinstance(result, PatchResult) or hasattr(result, "method_label"):
        raise ValueError(f"show opens a sweep or path result (a PatchResult); got {type(result).__name__} ("
                         "attribution runs are made in the dashboard's Attribution tab)")
    where = Path(data_dir) if data_dir is not None else default_data_dir()
    store = RunStore(where)
    run_id = store.save(result, _pairs(result, pairs), label)
    url = f"http://{host}:{port}/run/{run_id}"
    print(url)
    if jupyter_mode is not None:
        _serve(store, where, result, model, jupyter_mode, host, port)
    return url


def _serve(store, data_dir: Path, result, model, jupyter_mode: str, host: str, port: int) -> None:
    """The dashboard around this store, offering the result's model, in Dash's `jupyter_mode`."""
    from dashboard import create_app
    from patching.model.loading import ModelRegistry
    name = getattr(model, "name", None) or result.model_name or result.spec.model
    registry = ModelRegistry([name])
    if model is not None:
        registry.add(name, model)
    app = create_app(registry, store, data_dir=data_dir, model=name)
    app.run(jupyter_mode=jupyter_mode, host=host, port=port)
