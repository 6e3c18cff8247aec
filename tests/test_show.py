"""patchboard.show(result) (issue 21): the result stored in the dashboard's run history, its
/run/<id> address returned, and that address opening the very result on the Results tab."""
from __future__ import annotations

import pytest
import torch

import patchboard
from patching import PatchSpec, PathSpec, run_attribution, run_path, sweep
from patching.runs.store import RunStore


def test_show_stores_the_run_and_returns_its_address(gpt2_model, ioi_prompts, tmp_path, capsys):
    result = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out"))
    url = patchboard.show(result, data_dir=tmp_path)
    assert url == "http://127.0.0.1:8050/run/1" and capsys.readouterr().out.strip() == url
    run = RunStore(tmp_path).get(1)
    assert torch.equal(run.result.per_pair, result.per_pair)
    assert [tuple(p) for p in run.pairs] == [(p.clean, p.corrupt, p.answer, p.wrong) for p in ioi_prompts.pairs]
    path = run_path(gpt2_model, ioi_prompts, PathSpec(receivers=("q:1.0",)))
    assert patchboard.show(path, data_dir=tmp_path, port=9000).endswith(":9000/run/2")


def test_the_address_opens_the_run_on_the_results_tab(gpt2_model, ioi_prompts, tmp_path, registry):
    from dashboard import create_app
    from dashboard.share import parse_run_path
    result = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="resid_pre"))
    url = patchboard.show(result, data_dir=tmp_path)
    store = RunStore(tmp_path)
    app = create_app(registry, store, data_dir=tmp_path)
    run_id = parse_run_path("/" + url.split("/", 3)[3])
    assert run_id == 1
    assert app.server.test_client().get(f"/run/{run_id}").status_code == 200
    from dashboard.tabs.results import run_view
    fig = run_view(store.get(run_id), None, None, "png")[0]
    assert fig.to_dict()["data"] == result.plot().to_dict()["data"]


def test_show_refuses_what_it_cannot_open(gpt2_model, ioi_prompts, tmp_path):
    import dataclasses
    result = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out"))
    with pytest.raises(ValueError, match=r"records no prompt pairs.*pairs=prompts.pairs"):
        patchboard.show(dataclasses.replace(result, provenance=None), data_dir=tmp_path)
    assert patchboard.show(dataclasses.replace(result, provenance=None), data_dir=tmp_path,
                           pairs=ioi_prompts.pairs).endswith("/run/1")
    (att,) = run_attribution(gpt2_model, ioi_prompts, kinds=["head_out"])
    with pytest.raises(ValueError, match=r"got AttributionResult \(attribution runs"):
        patchboard.show(att, data_dir=tmp_path)
    with pytest.raises(ValueError, match=r"jupyter_mode must be one of inline.*not 'sideways'"):
        patchboard.show(result, data_dir=tmp_path, jupyter_mode="sideways")
