"""The Results tab's switch that names the heads firing on a head detector: off by default, the
labels come from `head_scores` on the run's model (cached), and non-head runs are left alone."""
from __future__ import annotations

from dashboard import ids
from patching.figures.detectors import firing_labels
from dashboard.tabs import results as results_tab
from patching import PatchSpec, sweep
from patching.inspect.detectors import head_scores


def _saved(store, tiny_name, gpt2_model, ioi_prompts, kind="head_out"):
    result = sweep(gpt2_model, ioi_prompts, PatchSpec(kind=kind, model=tiny_name))
    return store.save(result, ioi_prompts.pairs)


def test_switch_labels_the_firing_heads(app, store, tiny_name, gpt2_model, ioi_prompts, monkeypatch):
    assert ids.RESULTS_HEAD_LABELS in str(results_tab.layout().to_plotly_json())
    cb = app.patchboard
    run_id = _saved(store, tiny_name, gpt2_model, ioi_prompts)
    off = cb.show_run(run_id, "raw", "png")[0]
    assert off.data[0].text is None
    # the random tiny model has no head >= 0.4: set the bar at the median head's best score
    scores = head_scores(gpt2_model)
    bar = float(scores.groupby(["layer", "head"]).score.max().median())
    monkeypatch.setattr(results_tab, "firing_labels", lambda df: firing_labels(df, threshold=bar))
    want = firing_labels(scores, threshold=bar)
    assert 0 < len(want) < 8, want
    on = cb.show_run(run_id, "raw", "png", None, ["on"])[0]
    text = on.data[0].text
    got = {(l, h): t.split(" · ", 1)[1] for l, row in enumerate(text) for h, t in enumerate(row) if t}
    assert got == want
    assert cb.head_labels(store.get(run_id), ["on"]) == want
    assert len(cb.detector_memo.items) == 1                   # cached per model


def test_switch_leaves_runs_without_heads_alone(app, store, tiny_name, gpt2_model, ioi_prompts):
    run_id = _saved(store, tiny_name, gpt2_model, ioi_prompts, kind="mlp_out")
    assert app.patchboard.head_labels(store.get(run_id), ["on"]) is None
    assert app.patchboard.show_run(run_id, "raw", "png", None, ["on"])[0].data[0].text is None
