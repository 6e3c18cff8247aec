"""Safe defaults, each tested by behaviour: loopback bind and a warning otherwise, debug off,
`trust_remote_code` never on, weights only from safetensors, a configurable upload cap answered
inline, formula-neutralised CSV downloads, and no run id or stored name reaching the filesystem
or the model loader.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import pickle
import re
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from dash import no_update

ROOT = Path(__file__).resolve().parents[1]
IOI = ("When Mary and John went to the store, John gave a drink to",
       "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")


@pytest.fixture(scope="module")
def default_model():
    from patching.model.loading import load_model
    return load_model("default")


@pytest.fixture
def app(tmp_path, default_model):
    from dashboard import create_app, make_jobs
    from patching.runs.store import RunStore
    from patching.model.loading import ModelRegistry
    registry = ModelRegistry(["default"])
    registry.add("default", default_model)
    store = RunStore(tmp_path / "data")
    app = create_app(registry, store, make_jobs("diskcache", store.data_dir), model="default", max_upload_mb=1)
    app.test_registry, app.test_store = registry, store     # for the tests' own checks
    return app


def _run(app, clean=IOI[0], corrupt=IOI[1], answer=IOI[2], wrong=IOI[3], kind="head_out"):
    out = app.patchboard.run_sweep(lambda p: None, 1, "default", clean, corrupt, answer, wrong, ["bos"],
                                   None, kind, "logit_diff", "denoise", [], None, None, None)
    assert out[1] == "", out[1]
    return out[0]


# -- bind address and debug --------------------------------------------------------------------------
class FakeApp:
    def __init__(self, calls):
        self.calls = calls

    def run(self, **kw):
        self.calls.append(kw)


@pytest.mark.parametrize("argv,host,warns", [
    ([], "127.0.0.1", False),
    (["--host", "localhost"], "localhost", False),
    (["--host", "::1"], "::1", False),
    (["--host", "0.0.0.0"], "0.0.0.0", True),
    (["--host", "::"], "::", True),
    (["--host", "192.168.1.20"], "192.168.1.20", True),
])
def test_binds_loopback_unless_told_and_warns_otherwise(argv, host, warns, monkeypatch, capsys, tmp_path):
    from dashboard import __main__ as cli
    monkeypatch.delenv("PATCHBOARD_HOST", raising=False)
    calls, created = [], {}
    monkeypatch.setattr(cli, "create_app", lambda *a, **k: created.update(k) or FakeApp(calls))
    assert cli.main(argv + ["--model", "no-such-model", "--data-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert calls == [{"host": host, "port": 8050, "debug": False}]      # debug off unless --debug
    assert ("warning: serving on" in err and "no authentication" in err) == warns, err
    assert created["max_upload_mb"] == 16


def test_debug_only_when_asked(monkeypatch, tmp_path):
    from dashboard import __main__ as cli
    calls = []
    monkeypatch.setattr(cli, "create_app", lambda *a, **k: FakeApp(calls))
    cli.main(["--debug", "--model", "no-such-model", "--data-dir", str(tmp_path)])
    assert calls[0]["debug"] is True


def test_app_has_no_dev_tools_by_default(app):
    assert app.server.debug is False
    assert not app._dev_tools.ui and not app._dev_tools.serve_dev_bundles   # noqa: SLF001
    resp = app.server.test_client().get("/_reload-hash")      # Dash always answers it; hot reload is off
    assert resp.status_code != 200 or (resp.json["reloadHash"] is None and not resp.json["hard"])


# -- trust_remote_code and safetensors ---------------------------------------------------------------------
def test_trust_remote_code_is_never_on_in_the_source():
    """Every place the code passes trust_remote_code passes False (and load_model does pass it)."""
    values = {}
    for path in [*(ROOT / "patching").rglob("*.py"), *(ROOT / "dashboard").rglob("*.py"),
                 *(ROOT / "scripts").rglob("*.py"), *(ROOT / "metrics").rglob("*.py")]:
        for m in re.finditer(r"trust_remote_code\s*[=:]\s*([\w\"']+)", path.read_text()):
            values.setdefault(m.group(1), []).append(path.name)
    assert set(values) == {"False"}, values
    assert "loading.py" in values["False"]


def test_a_model_with_custom_code_is_refused_without_running_it(tmp_path, default_model):
    from patching.model.loading import load_model
    marker = tmp_path / "remote-code-ran"
    d = tmp_path / "evil-model"
    d.mkdir()
    cfg = json.loads(default_model.hf.config.to_json_string())
    cfg.update(model_type="evil_gpt", architectures=["EvilModel"],
               auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                         "AutoModelForCausalLM": "modeling_evil.EvilModel"})
    (d / "config.json").write_text(json.dumps(cfg))
    code = f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import GPT2Config as EvilConfig\n" \
           "from transformers import GPT2LMHeadModel as EvilModel\n"
    (d / "configuration_evil.py").write_text(code)
    (d / "modeling_evil.py").write_text(code)
    src = ROOT / "assets" / "models" / "patchboard-tiny"
    for f in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / f, d / f)
    with pytest.raises(ValueError, match=r"cannot load model '.*evil-model': it needs its own Python code "
                                         r"\(trust_remote_code\), which Patchboard never runs"):
        load_model(str(d))
    assert not marker.exists(), "the model's own Python code was executed"


class _Payload:
    """A pickle that would write a file when unpickled."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "unpickled"))


def test_weights_come_from_safetensors_never_from_a_pickle(tmp_path, default_model):
    from patching.model.loading import load_model
    marker = tmp_path / "pickle-ran"
    d = tmp_path / "both-formats"
    shutil.copytree(ROOT / "assets" / "models" / "patchboard-tiny", d,
                    ignore=shutil.ignore_patterns("*.png", "*.md", "*.jsonl"))
    (d / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(str(marker))))
    model = load_model(str(d))                               # loads, from model.safetensors
    assert not marker.exists(), "pytorch_model.bin was unpickled"
    tokens = default_model.encode(" Mary")
    import torch
    x = torch.tensor([[default_model.bos_token_id] + tokens])
    assert torch.equal(model.hf(x).logits, default_model.hf(x).logits)
    (d / "model.safetensors").unlink()                       # only the pickle left: refused
    with pytest.raises(ValueError, match=r"no \*\.safetensors weights; Patchboard loads weights only from safetensors"):
        load_model(str(d))
    assert not marker.exists()


# -- the upload cap ---------------------------------------------------------------------------------------
def test_upload_cap_is_configurable_and_answered(app):
    from dashboard import actions, create_app, forms
    from dashboard.tabs import exact as exact_tab
    assert app.server.config["MAX_CONTENT_LENGTH"] == 2**20
    client = app.server.test_client()
    resp = client.post("/_dash-update-component", data=b"x" * (2 * 2**20), content_type="application/json")
    assert resp.status_code == 413
    assert resp.json["message"].startswith("the request is larger than this server's 1 MB limit (--max-upload-mb)")
    assert client.get("/").status_code == 200                  # still serving
    limit = forms.upload_file_limit(2**20)                    # 3/4 of the cap less 64 kB
    assert limit == 720896
    big = b"clean,corrupt,answer,wrong\n" + b"a,b,c,d\n" * (limit // 8 + 10)
    contents = "data:text/csv;base64," + base64.b64encode(big).decode()
    stored, message, reset, _ = app.patchboard.upload_pairs(contents, "big.csv")
    assert stored is no_update and reset is None
    assert message.startswith("big.csv (704 kB) is larger than the 704 kB limit for pairs CSVs on this server; "
                              "split it"), message
    # the page's own clientside check carries the same limit and words, so an over-cap file is
    # said inline before the browser sends it (the request itself would get the 413 above)
    scripts = " ".join(str(s) for s in app._inline_scripts)     # noqa: SLF001
    assert "720896" in scripts and "limit for pairs CSVs on this server" in scripts
    with pytest.raises(ValueError, match="max_upload_mb must be a positive number"):
        create_app(app.test_registry, app.test_store, None, max_upload_mb=0)


def test_max_upload_mb_flag(monkeypatch, capsys, tmp_path):
    from dashboard import __main__ as cli
    got = {}
    monkeypatch.setattr(cli, "create_app", lambda *a, **k: got.update(k) or FakeApp([]))
    assert cli.main(["--max-upload-mb", "64", "--model", "x", "--data-dir", str(tmp_path)]) == 0
    assert got["max_upload_mb"] == 64
    assert cli.main(["--max-upload-mb", "0", "--data-dir", str(tmp_path)]) == 2
    assert "--max-upload-mb must be a positive number" in capsys.readouterr().err


def test_million_row_csv_is_refused_fast_without_building_the_pairs(monkeypatch):
    from dashboard import actions, forms
    from dashboard.tabs import exact as exact_tab
    from patching.core import prompts
    built = []
    real = prompts.PromptPair

    class Counting(real):
        def __post_init__(self):
            built.append(1)
            super().__post_init__()

    monkeypatch.setattr(prompts, "PromptPair", Counting)
    data = b"clean,corrupt,answer,wrong\n" + b"a,b,c,d\n" * 1_000_000
    contents = "data:text/csv;base64," + base64.b64encode(data).decode()
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"pairs.csv: pairs CSV has too many pairs: more than 10000"):
        forms.parse_upload(contents, "pairs.csv")
    assert time.perf_counter() - start < 5
    assert len(built) == prompts.MAX_PAIRS


# -- downloads ------------------------------------------------------------------------------------------
FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _cells(text: str, column: str) -> list[str]:
    return [r[column] for r in csv.DictReader(io.StringIO(text)) if r.get(column)]


def test_downloaded_csv_cells_are_neutralised(app):
    """Prompts whose tokens start with = + - @ reach every download as quoted text."""
    cb = app.patchboard
    clean, corrupt = "=1+2 @A -Mary and John, John gave a drink to", "=1+2 @A -Mary and John, Mary gave a drink to"
    a = _run(app, clean, corrupt, kind="head_out")
    r = _run(app, clean, corrupt, kind="resid_pre")
    r2 = _run(app, clean, corrupt, kind="resid_post")
    texts = {"run": cb.download_csv(1, r)["content"], "compare": cb.download_compare(1, [r, r2])["content"]}
    att = cb.attention({"points": [{"customdata": [0, None, 1]}]}, a, "png")
    assert att[3] is not None, att[2]
    texts["attention"] = cb.download_attention(1, att[3], a)["content"]
    for name, text in texts.items():
        tokens = [c for col in ("token", "dest_token", "src_token") for c in _cells(text, col)]
        assert tokens, name
        bad = [t for t in tokens if t.startswith(FORMULA)]
        assert not bad, (name, bad)
        assert any(t.startswith("'=") or t.startswith("'@") or t.startswith("'+") for t in tokens), name


# -- run ids and stored names -------------------------------------------------------------------------------
def test_run_ids_from_the_page_never_reach_the_filesystem(app, tmp_path, monkeypatch):
    """A tampered current-run value is only ever a number for SQLite: no file is opened for it."""
    import builtins
    import os
    cb = app.patchboard
    opened = []
    real_open, real_os_open = builtins.open, os.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k))
    monkeypatch.setattr(os, "open", lambda f, *a, **k: opened.append(str(f)) or real_os_open(f, *a, **k))
    for bad in ("../../etc/passwd", "/etc/passwd", "1/../../x", "1; DROP TABLE runs", "%2e%2e%2f", "-1", 10**20):
        fig, _config, summary, disabled = cb.show_run(bad, "raw", "png")
        assert disabled is True and summary == ""
        text = json.dumps(fig.to_plotly_json()["layout"].get("annotations", []))
        assert "Traceback" not in text and "is not a run number; pick a run from the history" in text, text
        assert cb.download_csv(1, bad) is no_update
        click = {"points": [{"customdata": [0, None, 1]}]}
        assert "is not a run number" in cb.attention(click, bad, "png")[2]
        assert cb.download_attention(1, {"layer": 0, "head": 1, "pos": None}, bad) is no_update
        assert "is not a run number" in cb.compare([bad, 1], "raw", "png")[3]
        assert cb.download_compare(1, [1, bad]) is no_update
    assert not [f for f in opened if "passwd" in f or f.endswith("/x")], opened


def test_a_stored_model_name_is_not_loaded_unless_offered(app, tmp_path, default_model):
    """A run whose stored spec names another model (a tampered store or an imported run file):
    the attention view refuses it by name instead of loading that path."""
    cb = app.patchboard
    run_id = _run(app, kind="head_out")
    db = app.test_store.path
    outside = tmp_path / "outside-model"
    shutil.copytree(ROOT / "assets" / "models" / "patchboard-tiny", outside)
    con = sqlite3.connect(db)
    (result_json,) = con.execute("SELECT result_json FROM runs WHERE id = ?", (run_id,)).fetchone()
    doc = json.loads(result_json)
    doc["spec"]["model"] = str(outside)
    con.execute("UPDATE runs SET result_json = ? WHERE id = ?", (json.dumps(doc), run_id))
    con.commit()
    con.close()
    fig, config, status, cell, disabled, _ = cb.attention({"points": [{"customdata": [0, None, 1]}]}, run_id, "png")[:6]
    assert cell is None and disabled is True
    assert f"model {str(outside)!r} is not offered by this server" in status, status
    assert app.test_registry.names() == ["default"]         # nothing was loaded from that path


def test_a_stored_metric_is_not_imported_by_the_server(app, tmp_path, monkeypatch):
    """An attribution run whose stored spec names a 'package.module:function' metric (a tampered
    store or an imported run file): the exact-vs-attribution check refuses it by name without
    importing that module in the server."""
    import sys
    from dashboard import actions, forms
    from dashboard.tabs import exact as exact_tab
    marker = tmp_path / "imported"
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "pb_stored_metric.py").write_text(f"open({str(marker)!r}, 'w').write('x')\ndef fn(l, i):\n    return l[:, 0]\n")
    monkeypatch.syspath_prepend(str(mods))
    form = forms.Form(model="default", clean=IOI[0], corrupt=IOI[1], answer=IOI[2], wrong=IOI[3])
    att_id = actions.execute_attribution(app.test_registry, app.test_store, form,
                                          forms.AttributionForm(kinds=("head_out",)), app.test_store.data_dir)
    con = sqlite3.connect(app.test_store.path)
    (results_json,) = con.execute("SELECT results_json FROM attributions WHERE id = ?", (att_id,)).fetchone()
    docs = json.loads(results_json)
    for d in docs:
        d["spec"]["metric"] = "pb_stored_metric:fn"
    con.execute("UPDATE attributions SET results_json = ? WHERE id = ?", (json.dumps(docs), att_id))
    con.commit()
    con.close()
    run = app.test_store.get_attribution(att_id)
    with pytest.raises(ValueError, match=r"this run's metric 'pb_stored_metric:fn' is not one the dashboard runs"):
        exact_tab.attribution_agreement(app.test_registry, run, "head_out", app.test_store.data_dir)
    assert not marker.exists() and "pb_stored_metric" not in sys.modules
