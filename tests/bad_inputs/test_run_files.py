"""Issue 18, classes 4 and 5 (run files and the dashboard's stored runs).

Class 4, stored denial of service: every imported field is bounded at import, through the one
validator `show`, `import` and the page's upload share (`bundle.read_bundle`), with a refusal
naming the field and the bound; and what the History tab, the compare dropdown and the
provenance panel render of a stored run is bounded in size, however large the stored text (a
run written straight into the database, as one stored before the fix).

Class 5, user mistakes reported as internal errors: an encrypted zip, `show` on a directory or a
device, huge run ids, a corrupt database as --data-dir exit 2 with one line; History / share /
run-card callbacks given values of the wrong type answer inline, never raise.
"""
from __future__ import annotations

import io
import json
import sqlite3
import time
import zipfile

import pytest
from plotly.utils import PlotlyJSONEncoder

from patching import PatchSpec, sweep
from patching.cli import main
from patching.runs import bundle as B
from patching.runs import limits as L
from patching.runs.store import RunStore
from tests.conftest import IOI


@pytest.fixture(scope="module")
def result(gpt2_model, ioi_prompts):
    return sweep(gpt2_model, ioi_prompts, PatchSpec(kind="resid_pre", model=gpt2_model.name))


@pytest.fixture(scope="module")
def good(result):
    return B.bundle_bytes([result], IOI, "ok")


@pytest.fixture
def app(tmp_path, gpt2_model):
    from dashboard import create_app, make_jobs
    from patching.model.loading import ModelRegistry
    registry = ModelRegistry(["default"])
    registry.add("default", gpt2_model)
    store = RunStore(tmp_path / "data")
    app = create_app(registry, store, make_jobs("diskcache", store.data_dir), model="default")
    app.test_store = store
    return app


def rezip(data: bytes, edit) -> bytes:
    """The run file with run.json changed by `edit(doc)`."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    doc = json.loads(members["run.json"])
    edit(doc)
    members["run.json"] = json.dumps(doc).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buf.getvalue()


def _set(path: str, value):
    """An edit setting run.json's field at a dotted path ('results.0.spec.model')."""
    def edit(doc):
        *parents, last = path.split(".")
        target = doc
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[int(last) if isinstance(target, list) else last] = value(doc) if callable(value) else value
    return edit


def _nested(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


# -- class 4: every imported field bounded ---------------------------------------------------------
OVERSIZED = [   # (name, edit of run.json, the message: names the field and the bound)
    ("label_10kB", _set("label", "L" * 10_000), r"label is 10000 characters; the limit is 200"),
    ("label_500kB", _set("label", "L" * 500_000), r"label is 500000 characters; the limit is 200"),
    ("prompt_30k", _set("pairs.0.0", "a " * 15_000), r"pairs\[0\]\[0\] is 30000 characters; the limit is 20000"),
    ("answer_long", _set("pairs.0.2", " Mary" * 100), r"pairs\[0\] answer is 500 characters; the limit is 200"),
    ("too_many_pairs", _set("pairs", lambda d: d["pairs"] * 5001), r"pairs has 10002 items; the limit is 10000"),
    ("token_long", _set("results.0.str_tokens.0", "t" * 5_000),
     r"results\[0\]\.str_tokens\[0\] is 5000 characters; the limit is 200"),
    ("too_many_tokens", _set("results.0.str_tokens", ["t"] * 25_000),
     r"results\[0\]\.str_tokens has 25000 items; the limit is 20000"),
    ("spec_model_long", _set("results.0.spec.model", "m" * 5_000),
     r"results\[0\]\.spec\.model is 5000 characters; the limit is 1000"),
    ("spec_nested", _set("results.0.spec.layers", _nested(20)), r"results\[0\]\.spec\.layers.* is nested 13 deep; the limit is 12"),
    ("spec_extra_keys", _set("results.0.spec", lambda d: {**d["results"][0]["spec"], **{f"k{i}": 0 for i in range(10_001)}}),
     r"results\[0\]\.spec has 10\d\d\d keys; the limit is 10000"),
    ("provenance_code", _set("results.0.provenance.metric.code", "x" * 70_000),
     r"results\[0\]\.provenance\.metric\.code is 70000 characters; the limit is 64000"),
    ("provenance_versions", _set("results.0.provenance.versions", {f"p{i}": "1" for i in range(20_000)}),
     r"results\[0\]\.provenance\.versions has 20000 keys; the limit is 10000"),
    ("provenance_files", _set("results.0.provenance.weights_files", [["f", "0" * 64]] * 20_000),
     r"results\[0\]\.provenance\.weights_files has 20000 items; the limit is 10000"),
    ("provenance_platform", _set("results.0.provenance.platform", "p" * 100_000),
     r"results\[0\]\.provenance\.platform is 100000 characters; the limit is 1000"),
    ("cells_vs_spec", _set("results.0.shape", lambda d: [100_000, 100_000, len(d["pairs"])]),
     r"shape \[100000, 100000, \d+\] holds more than 20000000 values; the limit is 20000000"),
    ("too_many_results", _set("results", lambda d: d["results"] * 65), r"results has 65 items; the limit is 64"),
    ("too_many_axes", _set("results.0.axes", ["layer", "pos", "head", "neuron", "x"]),
     r"results\[0\]\.axes has 5 items; the limit is 5|5 axes; the limit is 4"),
]


@pytest.mark.parametrize("name, edit, message", OVERSIZED, ids=[c[0] for c in OVERSIZED])
def test_oversized_fields_are_refused_by_the_one_validator(good, tmp_path, capsys, name, edit, message):
    """read_bundle, `show`, `import` all refuse it with the field and the bound; nothing is stored."""
    import re
    data = rezip(good, edit)
    with pytest.raises(ValueError, match=message):
        B.read_bundle(data)
    path = tmp_path / "big.patchboard.zip"
    path.write_bytes(data)
    for argv in (["show", str(path)], ["import", str(path), "--data-dir", str(tmp_path / "d")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and re.search(message, err) and len(err) < 1_000, err[:300]
    assert len(RunStore(tmp_path / "d")) == 0


def test_oversized_upload_is_refused_inline_and_not_stored(app, good):
    import base64
    data = rezip(good, _set("label", "L" * 500_000))
    contents = "data:application/zip;base64," + base64.b64encode(data).decode()
    status, version, *_ = app.patchboard.import_run(contents, "big.patchboard.zip")
    assert "label is 500000 characters; the limit is 200" in str(status.children) and len(app.test_store) == 0


def test_a_bounded_file_still_imports(good, tmp_path):
    """At the bounds, and with an axis longer than MAX_ITEMS (every neuron of a large model)."""
    data = rezip(good, _set("label", "L" * L.MAX_LABEL_CHARS))
    L.check_document({"results": [{"coords": {"neuron": list(range(L.MAX_ITEMS + 5))}}]})
    store = RunStore(tmp_path / "d")
    assert store.get(B.import_bundle(store, B.read_bundle(data))).info.label.startswith("L" * 200)


def _size(tree) -> int:
    """What the page sends the browser for a component tree (JSON characters)."""
    return len(json.dumps(tree, cls=PlotlyJSONEncoder))


def _write_huge_run(app, result, chars: int) -> int:
    """A run whose label, model and provenance are `chars` long, written straight into the database
    (as a run stored before the import bounds, or by another tool)."""
    store = app.test_store
    run_id = store.save(result, IOI, "small")
    huge = "L" * chars
    doc = result.to_json()
    doc["provenance"] = {**(doc.get("provenance") or {"model_name": "m"}), "platform": huge,
                         "model_name": huge, "spec": {"model": huge}, "metric": {"name": huge, "code": huge}}
    con = sqlite3.connect(store.path)
    con.execute("UPDATE runs SET label = ?, model = ?, result_json = ? WHERE id = ?",
                (huge, huge, json.dumps(doc), run_id))
    con.commit()
    con.close()
    job = store.begin_job("sweep", huge, huge)
    store.finish_job(job, "failed", huge)
    return run_id


@pytest.mark.parametrize("chars", [10_000, 500_000, 5_000_000])
def test_history_and_provenance_render_bounded_whatever_is_stored(app, result, chars):
    """The rendered History list, compare options and provenance panel stay the same small size
    whether the stored text is 10 kB or 5 MB: bounded by size, not by a clock."""
    run_id = _write_huge_run(app, result, chars)
    listing, options, *_ = app.patchboard.history(None, run_id, None)
    assert _size(listing) < 10_000 and _size(options) < 400, (_size(listing), _size(options))
    assert "…" in json.dumps(listing, cls=PlotlyJSONEncoder, ensure_ascii=False)        # clipped, said so
    link, provenance, *_ = app.patchboard.current_run_share(run_id)
    assert _size(provenance) < L.MAX_CODE_CHARS + 16_000, _size(provenance)   # 12 rows, each clipped


# -- class 5: mistakes answered as such ----------------------------------------------------------------
def _encrypted(good: bytes) -> bytes:
    """The run file with its members flagged encrypted (what `zip -e` writes)."""
    data = bytearray(good)
    for sig, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (at := data.find(sig, start)) >= 0:
            data[at + offset] |= 0x1
            start = at + 4
    return bytes(data)


def test_encrypted_zip_is_named(good, tmp_path, capsys):
    path = tmp_path / "enc.patchboard.zip"
    path.write_bytes(_encrypted(good))
    for argv in (["show", str(path)], ["import", str(path), "--data-dir", str(tmp_path / "d")]):
        assert main(argv) == 2
        assert "is encrypted (a password-protected zip)" in capsys.readouterr().err


@pytest.mark.parametrize("target, message", [("dir", "is a directory, not a run file"),
                                             ("/dev/null", "is not a regular file"),
                                             ("/dev/zero", "is not a regular file")])
def test_show_and_import_on_a_directory_or_device(tmp_path, capsys, target, message):
    path = str(tmp_path) if target == "dir" else target
    for argv in (["show", path], ["import", path, "--data-dir", str(tmp_path / "d")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_show_works_on_every_file_import_accepts(good, tmp_path, capsys):
    """Fields `show` prints with the wrong type are refused by the validator, for both commands."""
    for edit in (_set("results.0.provenance.metric.code", 12), _set("results.0.provenance.created", "x"),
                 _set("results.0.provenance.created", 1e300)):
        path = tmp_path / "odd.patchboard.zip"
        path.write_bytes(rezip(good, edit))
        assert main(["show", str(path)]) == 2
        assert main(["import", str(path), "--data-dir", str(tmp_path / "d")]) == 2
        assert "cannot be summarised" in capsys.readouterr().err


@pytest.mark.parametrize("run_id", ["99999999999999999999", "9223372036854775808", "0"])
def test_huge_run_ids_exit_2(tmp_path, capsys, run_id):
    assert main(["export", "--data-dir", str(tmp_path), "--run", run_id]) == 2
    assert main(["export", "--data-dir", str(tmp_path), "--attribution", run_id]) == 2
    err = capsys.readouterr().err
    assert err.count("is out of range: ids are 1 to 9223372036854775807") == 2, err


@pytest.mark.parametrize("content", [b"not a database at all" * 100, b"SQLite format 3\x00" + b"\xff" * 4000])
def test_corrupt_database_as_data_dir_exits_2(good, tmp_path, capsys, content):
    (tmp_path / "runs.sqlite").write_bytes(content)
    path = tmp_path / "ok.patchboard.zip"
    path.write_bytes(good)
    for argv in (["import", str(path), "--data-dir", str(tmp_path)], ["export", "--data-dir", str(tmp_path), "--run", "1"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "is not a usable Patchboard run store" in err and "--data-dir" in err, err


def test_data_dir_that_is_a_file_exits_2(good, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    path = tmp_path / "ok.patchboard.zip"
    path.write_bytes(good)
    assert main(["import", str(path), "--data-dir", str(tmp_path / "f")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


WRONG = [{"a": 1}, [1, 2], None, 3.5, True, "x" * 100, 10**20, -1]


def _inline(value) -> bool:
    """A callback's answer: no exception escaped and nothing of it is huge (a figure at most)."""
    return _size(value) < 200_000


def test_callbacks_answer_wrong_typed_values_inline(app, result):
    """Each registered History / share / run-card callback, every argument in turn given a value of
    the wrong type (a tampered request): an answer, never an exception (Dash's HTTP 500)."""
    cb = app.patchboard
    run_id = app.test_store.save(result, IOI, "ok")
    calls = {   # name: good arguments
        "history": (None, run_id, None), "poll_history": (1, "tab-history", True, None), "compare": ([run_id, run_id], "raw", "png"),
        "download_compare": (1, [run_id, run_id]), "route": (f"/run/{run_id}",), "current_run_share": (run_id,),
        "export_run": (1, run_id), "attribution_export_button": (1,), "export_attribution": (1, 1),
        "import_run": ("data:application/zip;base64,UEs=", "r.patchboard.zip"),
        "validate": ("default", *IOI[0], ["bos"], None, "resid_pre", "logit_diff", "denoise", [], "", "", ""),
        "kind_controls": ("resid_pre",), "cancelled": (1, 1, "session"),
    }
    clicks = {"open_run": ([1], {"type": "history-open", "run": run_id}),
              "delete_run": ([1], None, {"type": "history-confirm-delete", "run": 10**6}),
              "ask_delete": (1, 0, {"type": "history-delete", "run": run_id}),
              "cancel_job": ([1], {"type": "history-cancel-job", "job": 10**6})}
    failures = []
    for name, good_args in {**calls, **clicks}.items():
        fn = getattr(cb, name)
        for i in range(len(good_args)):
            for bad in WRONG:
                args = list(good_args)
                args[i] = bad
                try:
                    assert _inline(fn(*args))
                except Exception as exc:          # noqa: BLE001 - what the test looks for
                    failures.append(f"{name} arg {i} = {bad!r:.30}: {type(exc).__name__}: {str(exc)[:80]}")
    assert not failures, "\n".join(failures)


def test_wrong_typed_values_get_a_message_naming_the_value(app):
    cb = app.patchboard
    assert cb.validate("default", {"x": 1}, *IOI[0][1:], ["bos"], None, "resid_pre", "logit_diff", "denoise",
                       [], "", "", "") == "clean must be str, not dict"
    assert cb.compare({"a": 1}, "raw", "png")[3] == "the runs to compare must be list, not dict"
    assert "the page path must be text, not dict" in cb.route({"a": 1})[2]
    assert "the upload must be str, not list" in str(cb.import_run(["x"], "a.zip")[0].children)
    assert "is out of range" in str(cb.export_run(1, 10**20)[1].children)


def test_show_escapes_control_characters_of_a_run_files_text(good, tmp_path, capsys):
    """Class 8: a label with ESC / BEL bytes must not reach the terminal raw through `show`."""
    path = tmp_path / "esc.patchboard.zip"
    path.write_bytes(rezip(good, _set("label", "evil\x1b]0;pwned\x07\x1b[2J")))
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b]0;pwned\\x07" in out
