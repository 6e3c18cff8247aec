"""The app: contract ids, assets (models never served), jobs backends, CLI; callbacks called
directly, in the order a user would trigger them."""
from __future__ import annotations

import base64
import io

import pandas as pd
import pytest
from dash import html, no_update

from dashboard import create_app, ids, make_jobs
from dashboard.__main__ import _is_loopback, parse_args
from patching.core.results import CSV_COLUMNS
from tests.conftest import IOI
from tests.dash_tree import walk


def _ids(component) -> set:
    return {getattr(c, "id", None) for c in walk(component)} - {None}


def _text(component) -> str:
    out = []
    for c in walk(component):
        ch = getattr(c, "children", None)
        if isinstance(ch, str):
            out.append(ch)
    return " ".join(out)


def test_layout_has_every_contract_id(app):
    present = _ids(app.layout)
    missing = [i for i in ids.CONTRACT if i not in present]
    assert not missing, f"contract ids missing from the layout: {missing}"
    assert {ids.PATH_PANEL, ids.ATTRIBUTION_PANEL} <= present     # slots for later panels


def test_model_files_are_never_served(registry, store, tmp_path):
    assets = tmp_path / "assets"
    (assets / "models" / "m").mkdir(parents=True)
    (assets / "models" / "m" / "model.safetensors").write_bytes(b"weights")
    (assets / "style.css").write_text("body {}")
    app = create_app(registry, store, make_jobs("diskcache", store.data_dir), assets_folder=assets)
    client = app.server.test_client()
    assert client.get("/assets/style.css").status_code == 200
    for path in ("/assets/models/m/model.safetensors", "/assets/models/x", "/assets/models",
                 "/assets/%6Dodels/m/model.safetensors", "/assets/./models/m/model.safetensors",
                 "/assets//models/m/model.safetensors", "/assets/MODELS/m/model.safetensors",
                 "/assets/%2e/models/m/model.safetensors", "/assets/x/../models/m/model.safetensors"):
        resp = client.get(path)
        assert resp.status_code == 404, path
        assert b"weights" not in resp.data


def test_repo_assets_models_404(app):
    client = app.server.test_client()
    assert client.get("/assets/models/x").status_code == 404
    assert client.get("/assets/models/patchboard-tiny/config.json").status_code == 404
    assert client.get("/assets/style.css").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and b"Patchboard" in page.data


def test_celery_without_celery_is_a_clear_error(tmp_path):
    try:
        import celery  # noqa: F401
        has_celery = True
    except ImportError:
        has_celery = False
    with pytest.raises(ValueError, match="--redis-url"):
        make_jobs("celery", tmp_path, None)
    if not has_celery:
        with pytest.raises(ValueError, match="needs the 'celery' and 'redis' packages"):
            make_jobs("celery", tmp_path, "redis://localhost:6379/0")
    with pytest.raises(ValueError, match="unknown jobs backend 'rq'"):
        make_jobs("rq", tmp_path)


def test_cli_defaults_and_loopback():
    args = parse_args([])
    assert args.host == "127.0.0.1" and args.port == 8050 and not args.debug
    assert args.jobs == "diskcache" and args.model is None
    args = parse_args(["--model", "a", "--model", "/tmp/b", "--debug", "--jobs", "celery"])
    assert args.model == ["a", "/tmp/b"] and args.debug and args.jobs == "celery"
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("192.168.1.4")


def test_cli_warns_when_not_loopback(monkeypatch, capsys, tmp_path):
    from dashboard import __main__ as cli
    monkeypatch.setattr(cli, "create_app", lambda *a, **k: type("A", (), {"run": lambda self, **kw: None})())
    assert cli.main(["--host", "0.0.0.0", "--model", "no-such-model", "--data-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "warning: serving on 0.0.0.0" in err and "no authentication" in err
    assert "model 'no-such-model' is not available yet" in err


def test_every_id_in_ids_is_distinct():
    """ids.py holds every component id (the tabs' too): no two names share a value."""
    from dashboard import ids
    values = [v for k, v in vars(ids).items() if k.isupper() and isinstance(v, str)]
    assert len(values) == len(set(values)), sorted(v for v in values if values.count(v) > 1)


# -- callbacks, called directly ------------------------------------------------------------------
class Progress:
    def __init__(self):
        self.calls = []

    def __call__(self, values):
        self.calls.append(values)


def _run(cb, tiny_name, **over):
    clean, corrupt, answer, wrong = IOI[0]
    args = dict(n_clicks=1, model=tiny_name, clean=clean, corrupt=corrupt, answer=answer, wrong=wrong,
                bos=["bos"], pairs=None, kind="head_out", metric="logit_diff", direction="denoise",
                per_position=[], layers=None, positions=None, heads=None)
    args.update(over)
    progress = Progress()
    return cb.run_sweep(progress, *args.values()), progress


def test_model_status(app, tiny_name):
    cb = app.patchboard
    assert "2 layers · 4 heads" in cb.model_status(tiny_name)
    bad = cb.model_status("/etc")
    assert "model '/etc' is not offered by this server" in bad.children
    assert "choose a model" in cb.model_status(None).children


def test_preset_fills_the_form(app, tiny_name):
    cb = app.patchboard
    # the tiny test tokenizer splits the names: no IOI pair runs on it, so the form gets the task's
    # own pairs and the message says why
    out = cb.fill_preset("ioi", 4, tiny_name)
    assert len(out[4]) == 4 and "'ioi' pairs of one token length" in out[-1]
    clean, corrupt, answer, wrong, pairs, metric, err = cb.fill_preset("ioi", 1)
    assert clean and corrupt and answer.startswith(" ") and pairs is None and err == ""
    out = cb.fill_preset("ioi", 4)
    assert len(out[4]) == 4 and out[0] == out[4][0]["clean"]
    assert cb.fill_preset("ioi", 999)[-1] == "number of pairs must be a whole number from 1 to 64, not 999"
    assert cb.fill_preset(None, 1) == (no_update,) * 7
    for task in ("factual", "induction", "greater_than", "ioi"):    # the metric stays the user's
        assert cb.fill_preset(task, 1)[5] is no_update


def test_upload_then_preview_then_clear(app):
    cb = app.patchboard
    text = "clean,corrupt,answer,wrong\n" + "\n".join(",".join(f'"{c}"' for c in p) for p in IOI)
    contents = "data:text/csv;base64," + base64.b64encode(text.encode()).decode()
    pairs, err, reset, preset = cb.upload_pairs(contents, "pairs.csv")
    assert len(pairs) == 2 and err == "" and reset is None
    assert preset is None                      # the Preset box no longer names a task for them
    preview = cb.pairs_preview(pairs)
    assert "Using 2 pairs" in _text(preview)
    _, err, _, preset = cb.upload_pairs("data:text/csv;base64," + base64.b64encode(b"a,b\n1,2").decode(), "bad.csv")
    assert preset is no_update                 # a refused file changes nothing
    assert "bad.csv: pairs CSV is missing column(s) clean, corrupt, answer, wrong" in err
    assert cb.clear_pairs(1) is None and cb.pairs_preview(None) is None


def test_token_view_callback(app, tiny_name):
    cb = app.patchboard
    clean, corrupt, answer, wrong = IOI[0]
    view = cb.token_view(tiny_name, clean, corrupt, answer, wrong, ["bos"], None)
    chips = [c for c in walk(view) if getattr(c, "className", "") in ("tok", "tok tok-diff")]
    assert len(chips) == 30 and sum(c.className == "tok tok-diff" for c in chips) == 2
    bad = cb.token_view(tiny_name, clean, corrupt, " Maryland", wrong, ["bos"], None)
    assert "not a single token" in _text(bad)


def test_live_validation(app, tiny_name):
    clean, corrupt, answer, wrong = IOI[0]
    args = [tiny_name, clean, corrupt, answer, wrong, ["bos"], None, "head_out", "logit_diff",
            "denoise", [], None, None, None]
    assert app.patchboard.validate(*args) == ""
    bad = list(args)
    bad[3] = " Maryland"
    assert "answer ' Maryland' is" in app.patchboard.validate(*bad)
    bad = list(args)
    bad[11] = "0-9"
    assert "layers [2, 3, 4, 5, 6, ... and 3 more] out of range" in app.patchboard.validate(*bad)


def test_kind_controls(app):
    options, heads_disabled = app.patchboard.kind_controls("resid_pre")
    assert options[0]["disabled"] and heads_disabled
    options, heads_disabled = app.patchboard.kind_controls("head_out")
    assert not options[0]["disabled"] and not heads_disabled


def test_run_show_download_attention_history_compare(app, store, tiny_name):
    cb = app.patchboard
    (run_id, err, version, status), progress = _run(cb, tiny_name)
    assert err == "" and isinstance(run_id, int) and "saved" in _text(html.Div(status))
    assert "clean logit_diff" in _text(html.Div(status))
    assert any(c[4].startswith("clean logit_diff") for c in progress.calls)     # baselines early
    assert any("patched forwards" in c[3] for c in progress.calls)
    assert progress.calls[-1][0] == progress.calls[-1][1]

    fig, config, summary, csv_disabled = cb.show_run(run_id, "raw", "svg")
    assert fig.data[0].type == "heatmap" and list(fig.data[0].x) == ["H0", "H1", "H2", "H3"]
    assert config["toImageButtonOptions"]["format"] == "svg" and not csv_disabled

    sent = cb.download_csv(1, run_id)
    df = pd.read_csv(io.StringIO(sent["content"]))
    assert tuple(df.columns[:9]) == CSV_COLUMNS and len(df) == 8
    assert sent["filename"].endswith(".csv")

    click = {"points": [{"x": "H2", "y": "L1", "customdata": fig.data[0].customdata[1][2]}]}
    att_fig, _, status, cell, disabled, outline = cb.attention(click, run_id, "png")[:6]
    assert len(att_fig.data) == 5 and "L1.H2" in status and cell["head"] == 2 and not disabled
    shape = outline.to_plotly_json()["operations"][0]["params"]["value"][0]
    assert (shape["x0"], shape["y0"]) == (1.5, 0.5)          # the clicked cell is outlined
    fig2 = cb.show_run(run_id, "normalized", "png", cell)[0]   # and stays outlined on a toggle
    assert fig2.layout.shapes[0].x0 == 1.5
    assert "pair 1 out of range; this run has pairs 0-0" in cb.attention(click, run_id, "png", 1)[2]
    assert "pair must be a whole number" in cb.attention(click, run_id, "png", -1)[2]
    att_csv = cb.download_attention(1, cell, run_id)
    assert att_csv["content"].splitlines()[0].startswith("layer,head,dest,src")

    (run2, err, _, _), _ = _run(cb, tiny_name, direction="noise")
    items, options, _shown = cb.history(0, run2)
    assert [o["value"] for o in options] == [run2, run_id]
    assert IOI[0][0][:40] in _text(items) and "1 pair" in _text(items)        # each run shows its prompts
    opened = cb.open_run([0, 1], trig={"type": ids.HISTORY_OPEN, "run": run2})
    assert opened[:2] == (run2, ids.TAB_RESULTS)
    # ... and its form goes back on the left panel (page_inputs order), the noise direction too
    assert opened[2:] == (tiny_name, *IOI[0], ["bos"], None, "head_out", "logit_diff", "noise", [], "", "", "")
    assert cb.open_run([0, 0], trig={"type": ids.HISTORY_OPEN, "run": run_id}) == (no_update,) * 16

    cfig, cconfig, tables, cstatus = cb.compare([run_id, run2], "raw", "png")
    assert cconfig["toImageButtonOptions"]["filename"] == f"patchboard-compare-run{run_id}-vs-run{run2}"
    assert len(cfig.data) == 3 and cstatus == ""
    assert "Top components · #" in _text(tables)
    sent = cb.download_compare(1, [run_id, run2])
    df = pd.read_csv(io.StringIO(sent["content"]))
    assert tuple(df.columns[:9]) == CSV_COLUMNS and "run" in df.columns and len(df) == 16
    assert set(df["run"]) == {run_id, run2} and "value_minus_other" in df.columns
    a, b = df[df["run"] == run_id], df[df["run"] == run2]
    assert (a["value_minus_other"].to_numpy() == pytest.approx(a["value"].to_numpy() - b["value"].to_numpy(), abs=1e-4))
    assert "Choose two runs" in cb.compare([run_id], "raw", "png")[3]
    assert "compare takes exactly two" in cb.compare([run_id, run2, run2], "raw", "png")[3]

    # Delete only shows the row's confirmation; its own Delete deletes, Keep closes it
    assert cb.ask_delete(1, 0, trig={"type": ids.HISTORY_DELETE, "run": run2}) is False
    assert cb.ask_delete(1, 1, trig={"type": ids.HISTORY_KEEP, "run": run2}) is True
    assert [r.id for r in store.list()] == [run2, run_id]
    version, current, said = cb.delete_run([1, 0], run2, trig={"type": ids.HISTORY_CONFIRM_DELETE, "run": run2})
    assert current is None and [r.id for r in store.list()] == [run_id] and said == f"Deleted run #{run2}."
    fig, _, _, disabled = cb.show_run(run2, "raw", "png")
    assert "does not exist" in fig.layout.annotations[0].text and disabled


@pytest.mark.parametrize("over, needle", [
    (dict(answer=" Maryland"), "answer ' Maryland' is"),
    (dict(corrupt=IOI[0][1] + " Mary"), "same number of tokens"),
    (dict(layers="5"), "layers [5] out of range"),
    (dict(kind="resid_pre", heads="0.1"), "heads apply to head kinds"),
    (dict(model="/no/such/model"), "'/no/such/model' is not offered by this server"),
    (dict(metric="os:getcwd"), "unknown metric 'os:getcwd'"),
])
def test_run_refuses_bad_input_with_message(app, store, tiny_name, over, needle):
    (run_id, err, version, status), _ = _run(app.patchboard, tiny_name, **over)
    assert run_id is no_update and needle in err and len(store) == 0


def test_attention_on_non_head_run_explains(app, tiny_name):
    cb = app.patchboard
    (run_id, _, _, _), _ = _run(cb, tiny_name, kind="resid_pre")
    fig, _, _, _ = cb.show_run(run_id, "normalized", "png")
    click = {"points": [{"customdata": fig.data[0].customdata[0][3]}]}
    _, _, status, cell, disabled, _ = cb.attention(click, run_id, "png")[:6]
    assert "click a cell of a head kind" in status and cell is None and disabled


def test_head_out_click_shows_the_receiver_that_changed_most(app, tiny_name):
    """A head_out patch cannot change its own head's pattern: the panel shows a later head's
    (the one that changed most by default, any other by the receiver select)."""
    from patching import PromptSet, PatchSpec, load_model
    from patching.methods.attention import downstream_attention
    cb = app.patchboard
    (run_id, _, _, _), _ = _run(cb, tiny_name)
    fig = cb.show_run(run_id, "raw", "png")[0]
    click = {"points": [{"x": "H1", "y": "L0", "customdata": fig.data[0].customdata[0][1]}]}
    att_fig, _, status, cell, _, _, options, value = cb.attention(click, run_id, "png")
    model = load_model(tiny_name)
    d = downstream_attention(model, PromptSet.from_pairs(model, IOI[:1]), PatchSpec(kind="head_out"),
                             {"layer": 0, "head": 1})
    best = d.most_changed()
    assert value == f"{best[0]}.{best[1]}" and len(options) == len(d.ranked()) and best[0] == 1
    assert status.startswith(f"Receiver L{best[0]}.H{best[1]} under a patch of L0.H1")
    shown = [v for v in att_fig.data[4].z for v in v if v is not None]         # patched − corrupt panel
    assert max(abs(v) for v in shown) == pytest.approx(float(d.change[best]), abs=1e-5)
    assert float(d.change[best]) > 0
    other = next(o["value"] for o in options if o["value"] != value)
    out = cb.attention(click, run_id, "png", 0, other, trig=ids.ATTENTION_RECEIVER)
    assert out[7] == other and out[2].startswith(f"Receiver L{other.replace('.', '.H')} under")
    assert cb.download_attention(1, out[3], run_id)["filename"].endswith(f"-receiver-L{other.replace('.', 'H')}.csv")
    # a new click picks the largest change again
    assert cb.attention(click, run_id, "png", 0, other, trig=ids.RESULTS_HEATMAP)[7] == value


def test_multi_pair_run_from_uploaded_pairs(app, tiny_name):
    cb = app.patchboard
    pairs = [dict(zip(("clean", "corrupt", "answer", "wrong"), p)) for p in IOI]
    (run_id, err, _, _), _ = _run(cb, tiny_name, pairs=pairs, kind="resid_pre", clean="")
    assert err == ""
    fig, _, summary, _ = cb.show_run(run_id, "raw", "png")
    assert "95% CI" in fig.data[0].hovertemplate and "2 pairs" in str(summary)


def test_cancel_resets_the_bar_and_says_so(app):
    status, text, value, label = app.patchboard.cancelled(1)
    assert "cancelled" in status and "nothing was saved" in status and (text, value, label) == ("", 0, "")
    assert app.patchboard.cancelled(0) == (no_update,) * 4


def test_cancel_is_recorded_for_the_page_s_job_and_a_queued_run_then_refuses(app, store, tiny_name):
    """Cancel names the job the way the Run did (page session, button, click count): a run that only
    starts afterwards (queued on Redis with no worker up) stops before computing anything."""
    cb = app.patchboard
    cb.cancelled(1, 2, "page-a")                       # Cancel after the second Run click of page-a
    assert store.cancel_requested("page-a:run-button:2") and not store.cancel_requested("page-b:run-button:2")
    (run_id, err, _, _), _ = _run(cb, tiny_name, n_clicks=2, session="page-a")
    assert run_id is no_update and err == "Run cancelled; nothing was saved." and len(store) == 0
    assert store.jobs()[0].status == "cancelled"
    (run_id, err, _, _), _ = _run(cb, tiny_name, n_clicks=2, session="page-b")   # another page's job runs
    assert err == "" and store.info(run_id)
    cb.cancelled(1, 3, None)                           # no session id (its script did not run): nothing recorded
    assert not store.cancel_requested("None:run-button:3")


def test_run_is_a_background_callback_with_progress_and_cancel(app):
    run = next(cb for key, cb in app.callback_map.items() if f"{ids.CURRENT_RUN}.data" in key
               and cb.get("background"))
    bg = run["background"]
    assert [str(o) for o in bg["progress"]][:2] == [f"{ids.PROGRESS}.value", f"{ids.PROGRESS}.max"]
    assert bg["cancel"] == [{"id": ids.CANCEL_BUTTON, "property": "n_clicks"}]


def test_kind_metric_and_direction_survive_a_reload(app):
    """The browser keeps the user's choice of kind, per-position, metric and direction (Dash
    persistence in the tab's sessionStorage), so a reload does not reset a researcher's setup."""
    by_id = {getattr(c, "id", None): c for c in walk(app.layout)}
    for id_ in (ids.KIND_SELECT, ids.PER_POSITION, ids.METRIC_SELECT, ids.DIRECTION_SELECT):
        assert by_id[id_].persistence is True and by_id[id_].persistence_type == "session", id_
