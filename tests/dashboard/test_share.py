"""Dashboard sharing: /run/<id> routing, export / import of run files, the link and provenance
panel; callbacks called directly."""
from __future__ import annotations

import base64
import io
import json
import zipfile

import pytest
from dash import no_update

from dashboard import ids, share
from patching import figures
from patching import PatchSpec, sweep
from patching.runs import bundle
from tests.conftest import IOI


@pytest.fixture(scope="module")
def result(gpt2_model, ioi_prompts):
    return sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out", model=gpt2_model.name))


@pytest.fixture
def cb(app):
    return app.patchboard


def _text(component) -> str:
    """All the text inside a Dash component tree."""
    if component is None:
        return ""
    if isinstance(component, (str, int, float)):
        return str(component)
    if isinstance(component, (list, tuple)):
        return " ".join(_text(c) for c in component)
    return _text(getattr(component, "children", None))


def _upload(data: bytes) -> str:
    return "data:application/zip;base64," + base64.b64encode(data).decode()


@pytest.mark.parametrize("path, expected", [
    (None, None), ("", None), ("/", None), ("/run/12", 12), ("/run/12/", 12), ("/run/0", 0),
])
def test_parse_run_path(path, expected):
    assert share.parse_run_path(path) == expected


@pytest.mark.parametrize("path, message", [
    ("/run/abc", "malformed run id 'abc'"),
    ("/run/-1", "malformed run id '-1'"),
    ("/run/1e3", "malformed run id '1e3'"),
    ("/run/", "malformed run id ''"),
    ("/run/%2e%2e", "malformed run id '%2e%2e'"),
    ("/run/1234567890123", "malformed run id"),
    ("/run/../../etc/passwd", "unknown page"),
    ("/assets/models/x", "unknown page"),
])
def test_malformed_paths_are_refused(path, message):
    with pytest.raises(ValueError, match=message):
        share.parse_run_path(path)


def test_parse_run_path_under_a_prefix():
    assert share.parse_run_path("/app/run/3", "/app/") == 3
    assert share.parse_run_path("/app/", "/app/") is None


def test_route_opens_the_run_on_the_results_tab_with_its_form(cb, store, result):
    """A shared link shows the run and the prompts, kind, metric and direction that made it
    (as History's Open does), not whatever the panel held."""
    from dashboard.components import PAGE_FIELDS
    run_id = store.save(result, IOI)
    out = cb.route(f"/run/{run_id}")
    assert out[:3] == (run_id, ids.TAB_RESULTS, "")
    form = dict(zip(PAGE_FIELDS, out[3:]))
    assert (form["clean"], form["corrupt"], form["answer"], form["wrong"]) == tuple(IOI[0])
    assert (form["kind"], form["metric"], form["direction"]) == (result.spec.kind, result.spec.metric,
                                                                 result.spec.direction)
    assert cb.route("/")[:3] == (no_update, no_update, "")
    assert set(cb.route("/")[3:]) == {no_update}               # an address with no run leaves the panel alone


def test_route_unknown_and_malformed_ids_are_said_inline(cb, store, result):
    store.save(result, IOI)
    current, tab, message, *form = cb.route("/run/999")     # the screen clears: no other run stays on it
    assert set(form) == {no_update}
    assert current is None and tab == ids.TAB_RESULTS and message.startswith("run 999 not found")
    current, tab, message, *_ = cb.route("/run/abc")
    assert current is None and "malformed run id 'abc'" in message


def test_provenance_lists_the_prompt_pairs(store, result):
    """The panel names every pair (first five, then how many more), as literals: spaces show."""
    from patching.core.provenance import Provenance
    prov = Provenance.from_dict(result.provenance)
    pairs = [(f"clean {n}", f"corrupt {n}", " Mary", " John") for n in range(7)]
    text = str(share.render_provenance({**prov.to_dict(), "pairs": [list(p) for p in pairs]}))
    assert "'clean 0'" in text and "'corrupt 4'" in text and "' Mary'" in text
    assert "'clean 5'" not in text and "and 2 more pairs" in text
    lines = Provenance.from_dict({**prov.to_dict(), "pairs": [list(p) for p in pairs[:1]]}).summary_lines()
    assert "  pair 0: clean 'clean 0' · corrupt 'corrupt 0' · answer ' Mary' · wrong ' John'" in lines


def test_route_uses_the_id_only_as_a_number(registry, tmp_path):
    """Nothing from the URL reaches the filesystem: the store sees an int or nothing at all."""
    import dash
    calls = []

    class Store:
        data_dir = tmp_path

        def get(self, run_id):
            calls.append(run_id)
            raise ValueError(f"run {run_id} does not exist")

    ns = share.register(dash.Dash(__name__), registry, Store())
    for path in ("/run/../secret", "/run/..%2Fsecret", "/run/7", "/etc/passwd", "/run/7;rm"):
        ns.route(path)
    assert calls == [7]


def test_link_provenance_and_export_button_follow_the_current_run(cb, store, result):
    run_id = store.save(result, IOI)
    link, prov, label, disabled = cb.current_run_share(run_id)
    assert link.children[1].href == f"/run/{run_id}"
    text = _text(prov)
    assert result.provenance["weights_sha256"] in text and "logit_diff" in text and "torch" in text
    assert (label, disabled) == (f"Export run #{run_id}", False)
    assert cb.current_run_share(None)[3] is True


def test_export_then_import_reproduces_the_run_and_its_figures(cb, store, result):
    run_id = store.save(result, IOI, label="heads")
    download, status = cb.export_run(1, run_id)
    assert download["filename"] == f"run-{run_id}.patchboard.zip" and "Exported run" in status
    data = base64.b64decode(download["content"])
    status, version, current, att, reset = cb.import_run(_upload(data), download["filename"])
    assert "Imported" in _text(status) and "Warning" not in _text(status)
    assert current != run_id and reset is None and version
    imported = store.get(current)
    assert imported.info.label == "heads (imported)"
    for mode in ("raw", "normalized"):
        assert figures.result_figure(imported.result, mode).to_json() == \
            figures.result_figure(result, mode).to_json()


def test_import_refuses_bad_files_inline(cb, store):
    n_before = len(store)
    for contents, name, message in [
        (_upload(b"garbage"), "x.patchboard.zip", "not a zip archive"),
        (_upload(b"garbage"), "pairs.csv", "expected a Patchboard run file"),
        ("data:application/zip;base64,@@@", "x.zip", "not valid base64"),
    ]:
        status, *_rest, reset = cb.import_run(contents, name)
        assert message in _text(status) and status.className == "error-text"
    assert len(store) == n_before


def test_import_warns_when_the_weights_differ(cb, store, result):
    data = bundle.bundle_bytes([result], IOI, "x")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        doc, csv = json.loads(zf.read("run.json")), zf.read("result.csv")
    doc["results"][0]["provenance"]["weights_sha256"] = "0" * 64
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("run.json", json.dumps(doc))
        zf.writestr("result.csv", csv)
    status, _, current, _, _ = cb.import_run(_upload(buf.getvalue()), "x.patchboard.zip")
    assert "Warning: the local weights of" in _text(status) and "differ" in _text(status)
    assert store.get(current).result.provenance["weights_sha256"] == "0" * 64      # imported anyway


def test_the_page_serves_run_urls_and_has_the_share_components(app):
    client = app.server.test_client()
    assert client.get("/run/1").status_code == 200
    layout = json.dumps(app.layout.to_plotly_json(), default=lambda o: o.to_plotly_json())
    for id_ in (ids.URL, ids.RUN_LINK, ids.PROVENANCE_PANEL, ids.EXPORT_RUN_BUTTON, ids.IMPORT_RUN_UPLOAD):
        assert f'"{id_}"' in layout
    deps = client.get("/_dash-dependencies").get_json()
    assert {"id": ids.URL, "property": "pathname"} in [i for d in deps for i in d["inputs"]]


def test_attribution_run_export_and_import(cb, store, gpt2_model, ioi_prompts):
    from patching.methods.attribution import edge_attribution, run_attribution
    results = run_attribution(gpt2_model, ioi_prompts, kinds=["resid_pre", "head_out"])
    att_id = store.save_attribution(results, IOI, "attr", edges=edge_attribution(gpt2_model, ioi_prompts))
    assert cb.attribution_export_button(att_id) == (f"Export attribution run #{att_id}", False)
    assert cb.attribution_export_button(None)[1] is True
    download, status = cb.export_attribution(1, att_id)
    assert download["filename"] == f"attribution-{att_id}.patchboard.zip"
    status, _, current, new_att, _ = cb.import_run(_upload(base64.b64decode(download["content"])),
                                                   download["filename"])
    assert "as attribution run #" in _text(status) and current is no_update
    imported = store.get_attribution(new_att)
    assert [r.spec.kind for r in imported.results] == ["resid_pre", "head_out"]
    assert imported.edges is not None
    for a, b in zip(results, imported.results):
        assert figures.result_figure(a, "raw").to_json() == figures.result_figure(b, "raw").to_json()
    assert "does not exist" in _text(cb.export_attribution(1, 999)[1])


def test_oversized_upload_is_refused_before_decoding(registry, store, result):
    data = bundle.bundle_bytes([result], IOI, "x")
    with pytest.raises(ValueError, match=r"x.patchboard.zip is 0.0\d MB; the limit is 0.00 MB"):
        share.import_upload(registry, store, _upload(data), "x.patchboard.zip", max_bytes=1000)
    assert len(store) == 0
    assert share.upload_limit(16 * 2**20) == 16 * 2**20 * 3 // 4 - 2**16


def test_model_status_hashes_the_weights_in_the_server_process(cb, registry, tiny_name):
    """Background runs are forked from the server: the hash must be cached before they start."""
    from patching.core.provenance import CACHE_ATTR, ENV_ATTR
    model = registry.get(tiny_name)
    for attr in (CACHE_ATTR, ENV_ATTR):
        if hasattr(model, attr):
            delattr(model, attr)
    cb.model_status(tiny_name)
    assert getattr(model, CACHE_ATTR).weights_sha256 is not None
    assert "torch" in getattr(model, ENV_ATTR)["versions"]
