"""Run files: export -> import reproduces the run (values, baselines, the same figures); bad files
are refused with a message naming the problem; the CLI's export / import / show / --save-run."""
from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch

from patching import figures
from patching.runs.store import RunStore
from patching import PatchSpec, sweep
from patching.runs import bundle as B
from patching.cli import main
from tests.conftest import IOI


@pytest.fixture(scope="module")
def head_result(gpt2_model, ioi_prompts):
    return sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out", per_position=True, model=gpt2_model.name))


@pytest.fixture
def stores(tmp_path):
    return RunStore(tmp_path / "a"), RunStore(tmp_path / "b")


def _same(a, b):
    assert type(a) is type(b)
    assert torch.equal(a.per_pair.isnan(), b.per_pair.isnan())
    assert torch.equal(a.per_pair.nan_to_num(), b.per_pair.nan_to_num())
    assert torch.equal(a.clean_baseline, b.clean_baseline) and torch.equal(a.corrupt_baseline, b.corrupt_baseline)
    assert a.spec.to_dict() == b.spec.to_dict() and a.axes == b.axes and a.coords == b.coords
    assert a.str_tokens == b.str_tokens and a.provenance == b.provenance
    for mode in ("raw", "normalized"):
        assert figures.result_figure(a, mode).to_json() == figures.result_figure(b, mode).to_json()
    assert a.to_csv() == b.to_csv()


def test_export_import_round_trip_gives_the_same_values_and_figures(head_result, stores):
    a, b = stores
    run_id = a.save(head_result, IOI, label="IOI heads")
    data = B.export_run(a, run_id)
    bundle = B.read_bundle(data)
    assert bundle.type == "run" and bundle.source_id == run_id and bundle.label == "IOI heads"
    new_id = B.import_bundle(b, bundle)
    imported = b.get(new_id)
    assert imported.pairs == [tuple(p) for p in IOI]
    assert imported.info.label == "IOI heads (imported)"
    _same(head_result, imported.result)
    _same(a.get(run_id).result, imported.result)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert sorted(zf.namelist()) == ["result.csv", "run.json"]
        assert zf.read("result.csv").decode() == head_result.to_csv()


def test_path_run_round_trip(gpt2_model, ioi_prompts, stores):
    from patching.methods.path import PathResult, PathSpec, run_path
    a, b = stores
    result = run_path(gpt2_model, ioi_prompts, PathSpec(receivers="logits"))
    new_id = B.import_bundle(b, B.read_bundle(B.export_run(a, a.save(result, IOI))))
    assert isinstance(b.get(new_id).result, PathResult)
    _same(result, b.get(new_id).result)


def test_attribution_run_round_trip_with_edges(gpt2_model, ioi_prompts, stores):
    from patching.methods.attribution import edge_attribution, run_attribution
    a, b = stores
    results = run_attribution(gpt2_model, ioi_prompts, kinds=["resid_pre", "head_out"])
    edges = edge_attribution(gpt2_model, ioi_prompts)
    att_id = a.save_attribution(results, IOI, "attr", edges=edges)
    bundle = B.read_bundle(B.export_attribution(a, att_id))
    assert bundle.type == "attribution"
    new = b.get_attribution(B.import_bundle(b, bundle))
    assert [r.spec.kind for r in new.results] == ["resid_pre", "head_out"]
    for x, y in zip(results, new.results):
        _same(x, y)
    assert new.edges.to_csv() == edges.to_csv()


# -- bad files ---------------------------------------------------------------------------------------
def _rezip(data: bytes, edit=None, drop=(), add=None) -> bytes:
    """Rewrite a run file: edit(run.json dict), drop members, add {name: bytes}."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = {n: zf.read(n) for n in zf.namelist() if n not in drop}
    if edit is not None:
        doc = json.loads(members["run.json"])
        edit(doc)
        members["run.json"] = json.dumps(doc).encode()
    members.update(add or {})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, d in members.items():
            zf.writestr(n, d)
    return buf.getvalue()


@pytest.fixture(scope="module")
def good(head_result):
    return B.bundle_bytes([head_result], IOI, "ok")


def _flip_middle(data: bytes) -> bytes:
    mid = len(data) // 3
    return data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 64]) + data[mid + 64:]


@pytest.mark.parametrize("make, message", [
    (lambda d: b"hello, not a zip", "not a zip archive"),
    (lambda d: d[: len(d) // 2], "not a zip archive|truncated"),
    (_flip_middle, "corrupt run file|not valid JSON|not a zip"),
    (lambda d: _rezip(d, lambda j: j.update(version=2)), "version 2 is newer than this Patchboard reads"),
    (lambda d: _rezip(d, lambda j: j.update(version="1")), "version '1' is not valid"),
    (lambda d: _rezip(d, lambda j: j.update(format="something-else")), "format is 'something-else'"),
    (lambda d: _rezip(d, drop=("result.csv",)), "result.csv is missing"),
    (lambda d: _rezip(d, add={"../evil.sh": b"rm -rf /"}), r"unexpected members \['../evil.sh'\]"),
    (lambda d: _rezip(d, add={"notes.txt": b"x"}), r"unexpected members \['notes.txt'\]"),
    (lambda d: _rezip(d, lambda j: j["results"][0].update(shape=[1, 2, 3])), "shape .* does not fit axes"),
    (lambda d: _rezip(d, lambda j: j["results"][0]["per_pair"].pop()), "axis 'layer' has|per_pair has"),
    (lambda d: _rezip(d, lambda j: j["results"][0].update(clean_baseline=[1.0])), "one value per pair"),
    (lambda d: _rezip(d, lambda j: j["results"][0].pop("spec")), "has no 'spec'"),
    (lambda d: _rezip(d, lambda j: j["results"][0]["coords"].update(head=["a", "b", "c", "d"])),
     "coordinates of axis 'head' must be a list of integers"),
    (lambda d: _rezip(d, lambda j: j["results"][0].update(axes=[1, 2])), "axes must be names"),
    (lambda d: _rezip(d, lambda j: j["results"][0]["spec"].update(kind="nope")), "not a valid Patchboard result.*nope"),
    (lambda d: _rezip(d, lambda j: j["results"][0]["provenance"].update(weights_sha256="abc")),
     "provenance: provenance weights_sha256"),
    (lambda d: _rezip(d, lambda j: j.update(pairs=[])), "pairs must be a non-empty list"),
    (lambda d: _rezip(d, lambda j: j.update(type="movie")), "type 'movie' is not one of run, attribution"),
    (lambda d: _rezip(d, add={"result.csv": b"a,b\n1,2\n"}), "result.csv does not start with the contract"),
    (lambda d: _rezip(d, add={"run.json": b"[" * 100000 + b"]" * 100000}), "not valid JSON|format is 'list'"),
])
def test_bad_files_are_refused_with_a_clear_message(good, make, message):
    with pytest.raises(ValueError, match=message):
        B.read_bundle(make(good))


def test_oversized_file_is_refused_before_reading(good, monkeypatch, tmp_path):
    monkeypatch.setattr(B, "MAX_BUNDLE_BYTES", len(good) - 1)
    with pytest.raises(ValueError, match=r"run file is .* MB; the limit is"):
        B.read_bundle(good)
    path = tmp_path / "big.patchboard.zip"
    path.write_bytes(good)
    with pytest.raises(ValueError, match="the limit is"):
        B.read_bundle(path)


def test_zip_bomb_is_refused(good, monkeypatch):
    header = ",".join(B.CSV_COLUMNS).encode() + b"\n"
    bomb = _rezip(good, add={"result.csv": header + b"0" * (8 * 2**20)})     # 8 MB of zeros, ~8 KB zipped
    assert len(bomb) < len(good) + 64 * 1024
    monkeypatch.setattr(B, "MAX_MEMBER_BYTES", 2**20)
    with pytest.raises(ValueError, match=r"result.csv unpacks to 8.0 MB; the limit is 1.0 MB"):
        B.read_bundle(bomb)


def test_a_lying_header_does_not_get_past_the_cap(good, monkeypatch):
    """The inflated size is counted while reading, not taken from the zip header."""
    monkeypatch.setattr(B, "MAX_MEMBER_BYTES", 2**20)
    bomb = _rezip(good, add={"result.csv": b"0" * (3 * 2**20)})
    real_infolist = zipfile.ZipFile.infolist

    def lying_infolist(self):
        infos = real_infolist(self)
        for i in infos:
            i.file_size = 10                 # the header claims 10 bytes
        return infos
    monkeypatch.setattr(zipfile.ZipFile, "infolist", lying_infolist)
    with pytest.raises(ValueError, match="unpacks to more than 1.0 MB|corrupt run file"):
        B.read_bundle(bomb)


def test_weights_mismatch_warns_but_imports(good, stores, tmp_path, capsys, head_result):
    bundle = B.read_bundle(good)
    assert B.weights_warning(bundle, head_result.provenance["weights_sha256"]) is None
    assert "differ" in B.weights_warning(bundle, "0" * 64)
    changed = _rezip(good, lambda j: j["results"][0]["provenance"].update(weights_sha256="f" * 64))
    path = tmp_path / "changed.patchboard.zip"
    path.write_bytes(changed)
    assert main(["import", str(path), "--data-dir", str(tmp_path / "c")]) == 0
    out, err = capsys.readouterr()
    assert "warning: the local weights of" in err and "differ" in err
    assert RunStore(tmp_path / "c").get(int(out.strip())).result.provenance["weights_sha256"] == "f" * 64


# -- CLI ------------------------------------------------------------------------------------------------
def test_cli_sweep_save_run_show_export_import(tiny_dirs, tmp_path, capsys):
    clean, corrupt, answer, wrong = IOI[0]
    run_file = tmp_path / "run.patchboard.zip"
    assert main(["sweep", "--model", str(tiny_dirs["gpt2"]), "--clean", clean, "--corrupt", corrupt,
                 "--answer", answer, "--wrong", wrong, "--kind", "resid_pre", "--device", "cpu",
                 "--out", str(tmp_path / "r.csv"), "--quiet", "--save-run", str(run_file)]) == 0
    capsys.readouterr()
    assert main(["show", str(run_file)]) == 0
    shown = capsys.readouterr().out
    saved = B.read_bundle(run_file)
    assert saved.provenance["weights_sha256"] in shown and "resid_pre denoise logit_diff" in shown
    assert main(["import", str(run_file), "--data-dir", str(tmp_path / "d")]) == 0
    first = int(capsys.readouterr().out.strip())
    out_file = tmp_path / "again.patchboard.zip"
    assert main(["export", "--data-dir", str(tmp_path / "d"), "--run", str(first), "-o", str(out_file)]) == 0
    again = B.read_bundle(out_file)
    assert torch.equal(again.result.per_pair, saved.result.per_pair)
    assert again.provenance == saved.provenance


def test_cli_bad_files_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.patchboard.zip"
    bad.write_bytes(b"garbage")
    for argv in (["show", str(bad)], ["import", str(bad), "--data-dir", str(tmp_path / "d")],
                 ["show", str(tmp_path / "missing.zip")],
                 ["export", "--data-dir", str(tmp_path / "d"), "--run", "99"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_save_run_refuses_several_kinds(tiny_dirs, tmp_path, capsys):
    clean, corrupt, answer, wrong = IOI[0]
    assert main(["sweep", "--model", str(tiny_dirs["gpt2"]), "--clean", clean, "--corrupt", corrupt,
                 "--answer", answer, "--wrong", wrong, "--kind", "resid_pre,attn_out", "--device", "cpu",
                 "--out", str(tmp_path / "r.csv"), "--quiet", "--save-run", str(tmp_path / "x.zip")]) == 2
    assert "--save-run writes one run; this sweep has 2 kinds" in capsys.readouterr().err


def test_cli_import_export_with_a_store_url(good, tmp_path, capsys):
    path = tmp_path / "ok.patchboard.zip"
    path.write_bytes(good)
    url = f"sqlite:///{tmp_path / 'db' / 'runs.sqlite'}"
    (tmp_path / "db").mkdir()
    assert main(["import", str(path), "--store-url", url, "--data-dir", str(tmp_path / "db")]) == 0
    new_id = int(capsys.readouterr().out.strip())
    out = tmp_path / "back.patchboard.zip"
    assert main(["export", "--store-url", url, "--data-dir", str(tmp_path / "db"), "--run", str(new_id),
                 "-o", str(out)]) == 0
    assert torch.equal(B.read_bundle(out).result.per_pair.nan_to_num(),
                       B.read_bundle(good).result.per_pair.nan_to_num())
    assert main(["import", str(path), "--store-url", "ftp://nope"]) == 2
    assert "unsupported store URL" in capsys.readouterr().err
