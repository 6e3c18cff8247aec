"""The Results tab's head clustergram: drawn for a head-kind run on Cluster heads, equal to the
engine's, following the raw / normalized toggle and the detector switch; refused inline for a run
without heads; cleared when another run comes on screen; its CSV is the CLI's."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd

from dashboard import ids
from dashboard.tabs import clustergram as section
from dashboard.tabs import results as results_tab
from patching import PatchSpec, sweep
from patching.inspect.clustergram import ClusterSpec, clustergram


def _saved(store, tiny_name, gpt2_model, prompts, kind="head_out", per_position=True):
    result = sweep(gpt2_model, prompts, PatchSpec(kind=kind, per_position=per_position, model=tiny_name))
    return store.save(result, prompts.pairs), result


def test_section_is_in_the_results_tab():
    tree = str(results_tab.layout().to_plotly_json())
    for id_ in (ids.CLUSTER_BUTTON, ids.CLUSTER_GRAPH, ids.CLUSTER_STATUS, ids.CLUSTER_DOWNLOAD_BUTTON):
        assert id_ in tree


def test_cluster_heads_draws_the_engines_clustergram(app, store, tiny_name, gpt2_model, ioi_prompts):
    cb = app.patchboard
    run_id, result = _saved(store, tiny_name, gpt2_model, ioi_prompts)
    fig, status, disabled, shown = cb.show_clustergram(1, run_id, "pairs", "euclidean", "complete", "normalized",
                                                       [], None, trig=ids.CLUSTER_BUTTON)
    want = clustergram(result, ClusterSpec(linkage="complete"))
    assert shown == run_id and disabled is False
    assert np.allclose(np.asarray(fig.data[1].z), want.profile)
    assert list(fig.layout.yaxis2.ticktext) == [want.label(h) for h in want.heads]
    assert f"Run #{run_id}: {len(want.heads)} heads" in status and "complete linkage" in status
    raw = cb.show_clustergram(1, run_id, "mean", "euclidean", "complete", "raw", [], run_id, trig=ids.VALUE_MODE)
    assert np.allclose(np.asarray(raw[0].data[1].z),
                       clustergram(result, ClusterSpec("mean", linkage="complete", value="effect")).profile)
    csv = cb.download_clustergram(1, run_id, "pairs", "euclidean", "complete", "normalized", [])
    got = pd.read_csv(io.StringIO(csv["content"]))
    assert got.label.tolist() == [want.label(h) for h in want.heads]
    assert csv["filename"] == f"patchboard-run{run_id}-clustergram.csv"


def test_options_wait_for_the_button_and_a_new_run_clears(app, store, tiny_name, gpt2_model, ioi_prompts):
    cb = app.patchboard
    run_id, _ = _saved(store, tiny_name, gpt2_model, ioi_prompts)
    waiting = cb.show_clustergram(0, run_id, "pairs", "euclidean", "average", "normalized", [], None,
                                  trig=ids.CLUSTER_PROFILE)
    assert waiting[0] is section.no_update
    cleared = cb.show_clustergram(3, run_id, "pairs", "euclidean", "average", "normalized", [], run_id,
                                  trig=ids.CURRENT_RUN)
    assert cleared[1] == section.IDLE and cleared[2] is True and cleared[3] is None


def test_a_run_without_heads_is_refused_inline(app, store, tiny_name, gpt2_model, ioi_prompts):
    run_id, _ = _saved(store, tiny_name, gpt2_model, ioi_prompts, kind="resid_pre", per_position=False)
    fig, status, disabled, shown = app.patchboard.show_clustergram(1, run_id, "pairs", "euclidean", "average",
                                                                   "normalized", [], None, trig=ids.CLUSTER_BUTTON)
    assert "needs a result with a head axis" in str(status) and disabled is True and shown is None


def test_detector_switch_labels_rows(app, store, tiny_name, gpt2_model, ioi_prompts, monkeypatch):
    monkeypatch.setattr(results_tab, "firing_labels", lambda df: {(1, 0): "induction"})
    run_id, _ = _saved(store, tiny_name, gpt2_model, ioi_prompts, per_position=False)
    fig = app.patchboard.show_clustergram(1, run_id, "pairs", "correlation", "average", "normalized", ["on"],
                                          None, trig=ids.CLUSTER_BUTTON)[0]
    assert "L1H0 · induction" in list(fig.layout.yaxis2.ticktext)
