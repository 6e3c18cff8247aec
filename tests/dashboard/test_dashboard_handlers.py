"""Handlers: form -> spec/prompts or the message shown in `error-message`; uploads; token view;
presets; the run job (queue, baselines, progress, save); attention for a clicked cell."""
from __future__ import annotations

import base64
import dataclasses
import threading
import time

import pytest

from dashboard import actions, forms, views
from dashboard.tabs import history as history_tab
from dashboard.forms import Form
from tests.conftest import IOI


def _upload(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return "data:text/csv;base64," + base64.b64encode(raw).decode()


# -- parse_form ---------------------------------------------------------------------------------
def test_parse_form_builds_spec_and_prompts(gpt2_model, form):
    spec, prompts = forms.parse_form(gpt2_model, form)
    assert spec.kind == "head_out" and spec.direction == "denoise" and spec.metric == "logit_diff"
    assert spec.model == form.model and spec.prepend_bos
    assert prompts.n_pairs == 1 and prompts.differing_positions() == [10]


def test_parse_form_filters(gpt2_model, form):
    spec, _ = forms.parse_form(gpt2_model, dataclasses.replace(
        form, per_position=True, layers="0-1", positions="9,10", heads="1.2,0.3"))
    assert spec.per_position and spec.layers == (0, 1) and spec.positions == (9, 10)
    assert spec.heads == ((0, 3), (1, 2))


def test_parse_form_uses_pairs_over_typed_prompt(gpt2_model, form):
    pairs = [dict(zip(("clean", "corrupt", "answer", "wrong"), p)) for p in IOI]
    f = Form.from_values(**{**dataclasses.asdict(form), "pairs": pairs, "clean": "x"})
    _, prompts = forms.parse_form(gpt2_model, f)
    assert prompts.n_pairs == 2


@pytest.mark.parametrize("change, needle", [
    (dict(corrupt="When Mary and John went to the store, Mary gave a big drink to"), "same number of tokens"),
    (dict(answer=" Maryland"), "' Maryland'"),
    (dict(wrong="John"), "'John'"),
    (dict(clean="   "), "clean prompt is empty"),
    (dict(layers="0-x"), "'0-x'"),
    (dict(layers="7"), "layers [7] out of range"),
    (dict(heads="1"), "bad head '1'"),
    (dict(heads="0.9"), "heads [9] out of range"),
    (dict(kind="resid_pre", heads="0.1"), "heads apply to head kinds"),
    (dict(metric="nope"), "unknown metric 'nope'"),
    (dict(direction="sideways"), "'sideways'"),
    (dict(kind="bogus"), "unknown kind 'bogus'"),
])
def test_parse_form_errors_name_the_bad_value(gpt2_model, form, change, needle):
    with pytest.raises(ValueError) as exc:
        forms.parse_form(gpt2_model, dataclasses.replace(form, **change))
    assert needle in str(exc.value)


def test_unequal_lengths_message_lists_both_token_sequences(gpt2_model, form):
    with pytest.raises(ValueError) as exc:
        forms.parse_form(gpt2_model, dataclasses.replace(form, corrupt=form.corrupt + " Mary"))
    msg = str(exc.value)
    assert "clean 15 tokens" in msg and "corrupt 16 tokens" in msg


# -- uploads ------------------------------------------------------------------------------------
def test_parse_upload_reads_pairs():
    text = "clean,corrupt,answer,wrong\n" + "\n".join(",".join(f'"{c}"' for c in p) for p in IOI) + "\n"
    pairs = forms.parse_upload(_upload(text), "pairs.csv")
    assert [p["answer"] for p in pairs] == [" Mary", " John"]


@pytest.mark.parametrize("contents, filename, needle", [
    (_upload("clean,corrupt,answer\nA,B,C\n"), "p.csv", "missing column(s) wrong"),
    (_upload(b"\xff\xfeclean"), "p.csv", "not UTF-8"),
    ("data:text/csv;base64,@@@notbase64", "p.csv", "not valid base64"),
    (_upload("clean,corrupt,answer,wrong\n"), "p.csv", "no rows"),
    (_upload("a,b"), "p.xlsx", "p.xlsx: expected a .csv file"),
    ("", "p.csv", "p.csv: the file is empty"),
])
def test_parse_upload_errors(contents, filename, needle):
    with pytest.raises(ValueError) as exc:
        forms.parse_upload(contents, filename)
    assert needle in str(exc.value)


def test_parse_upload_size_cap():
    big = "clean,corrupt,answer,wrong\n" + "A B,A C, B, C\n" * 2000
    with pytest.raises(ValueError, match=r"big.csv \(27.4 kB\) is larger than the 9.8 kB limit"):
        forms.parse_upload(_upload(big), "big.csv", max_bytes=10_000)
    assert len(forms.parse_upload(_upload(big), "big.csv", max_bytes=100_000)) == 2000


# -- token view ---------------------------------------------------------------------------------
def test_token_view_marks_differing_positions_and_checks_answers(gpt2_model, form):
    view = forms.token_view(gpt2_model, form)
    assert len(view.clean) == len(view.corrupt) == 15
    assert view.differing == [10] and view.clean[10] == " John" and view.corrupt[10] == " Mary"
    assert "one token" in view.answer and "one token" in view.wrong
    assert view.problems == []


def test_token_view_lists_problems_without_raising(gpt2_model, form):
    view = forms.token_view(gpt2_model, dataclasses.replace(
        form, corrupt=form.corrupt + " Mary", answer=" Maryland"))
    assert any("same number of tokens" in p for p in view.problems)
    assert "not a single token" in view.answer
    assert view.differing[-1] == 15          # the extra corrupt token counts as differing


def test_token_view_without_bos(gpt2_model, form):
    view = forms.token_view(gpt2_model, dataclasses.replace(form, prepend_bos=False))
    assert len(view.clean) == 14 and view.differing == [9]


# -- presets ------------------------------------------------------------------------------------
def test_presets_come_from_tasks():
    values = [o["value"] for o in forms.preset_options()]
    assert {"ioi", "factual", "greater_than", "induction"} <= set(values)
    assert values[-1] == "induction_keys"               # a pair variant, after the tasks
    pairs = forms.preset_pairs("ioi", 3)
    assert len(pairs) == 3 and set(pairs[0]) == {"clean", "corrupt", "answer", "wrong"}


@pytest.mark.parametrize("task, n, needle", [("nope", 1, "unknown preset 'nope'"),
                                             ("ioi", 0, "from 1 to"), ("ioi", "x", "'x'")])
def test_preset_errors(task, n, needle):
    with pytest.raises(ValueError, match=needle):
        forms.preset_pairs(task, n)


def test_options_list_registries():
    assert {o["value"] for o in forms.kind_options()} >= {"resid_pre", "head_out", "neuron"}
    assert "logit_diff" in {o["value"] for o in forms.metric_options()}
    assert [o["value"] for o in forms.direction_options()] == ["denoise", "noise"]


def test_model_options_include_registry_names(registry, tiny_name):
    opts = forms.model_options(registry)
    assert opts[0]["value"] == tiny_name and opts[0]["label"] == "gpt2"


# -- running ------------------------------------------------------------------------------------
def test_execute_run_reports_baselines_then_progress_and_saves(registry, store, form):
    seen = []
    run_id = actions.execute_run(registry, store, form, store.data_dir, report=seen.append)
    run = store.get(run_id)
    assert run.result.spec.kind == "head_out" and run.result.values.shape == (2, 4)
    assert run.pairs == [IOI[0]]
    with_base = [p for p in seen if p.baselines]
    assert with_base and "clean logit_diff" in with_base[0].baselines
    assert abs(float(with_base[0].baselines.split("= ")[1].split(" ")[0]) - run.result.clean_value) < 1e-3
    assert seen[-1].value == seen[-1].total and "done" in seen[-1].label
    counted = [p.label for p in seen if "patched forwards" in p.label]     # the cost estimate's unit
    assert counted[0] == "0 / 8 patched forwards" and counted[-1] == "8 / 8 patched forwards"


def test_execute_run_bad_input_saves_nothing(registry, store, form):
    with pytest.raises(ValueError, match="layers"):
        actions.execute_run(registry, store, dataclasses.replace(form, layers="9"), store.data_dir)
    assert len(store) == 0


def test_a_run_runs_the_clean_and_corrupt_forwards_once(registry, store, form, monkeypatch):
    """The baselines shown are the sweep's own: a Run does not run the two cached forwards again."""
    runner = registry.get(form.model).runner
    seen, real = [], runner.run
    monkeypatch.setattr(runner, "run", lambda tokens, *a, **kw: seen.append(tokens.shape) or real(tokens, *a, **kw))
    run_id = actions.execute_run(registry, store, form, store.data_dir)
    assert len(seen) == 2                                    # clean and corrupt, once each
    info = store.info(run_id)
    run = store.get(run_id)
    assert (info.clean_value, info.corrupt_value) == (run.result.clean_value, run.result.corrupt_value)


def test_second_run_queues_behind_the_first(tmp_path):
    events = []
    release = threading.Event()

    def first():
        with actions.run_slot(tmp_path):
            events.append("first in")
            release.wait(5)
        events.append("first out")

    t = threading.Thread(target=first)
    t.start()
    while "first in" not in events:
        time.sleep(0.01)
    assert actions.run_busy(tmp_path)
    waits = []
    threading.Timer(0.3, release.set).start()
    with actions.run_slot(tmp_path, on_wait=waits.append, poll=0.05):
        events.append("second in")
    t.join()
    assert events.index("first out") < events.index("second in")
    assert waits and waits[-1] >= 0.1
    assert not actions.run_busy(tmp_path)


# -- attention, top components ------------------------------------------------------------------
def test_attention_for_clicked_head(registry, store, form):
    run = store.get(actions.execute_run(registry, store, form, store.data_dir))
    view = views.attention_for_cell(registry, run, {"layer": 1, "pos": None, "head": 2})
    assert view.clean.shape == view.corrupt.shape == view.patched.shape == (15, 15)
    assert "L1.H2" in view.title and "head_out" in view.note
    assert view.frame is not None and len(view.frame) == 15 * 16 // 2
    text = views.attention_csv(view)
    assert text.splitlines()[0].startswith("dest,src,dest_token,src_token,clean,corrupt,patched")


def test_attention_for_non_head_kind_says_what_to_click(registry, store, form):
    run = store.get(actions.execute_run(registry, store, dataclasses.replace(form, kind="resid_pre"),
                                         store.data_dir))
    with pytest.raises(ValueError, match="click a cell of a head kind"):
        views.attention_for_cell(registry, run, {"layer": 0, "pos": 3, "head": None})


def test_clicked_cell_reads_customdata():
    click = {"points": [{"x": "H1", "y": "L0", "customdata": [0, None, 1, 0.5, 0.1, None, None]}]}
    assert views.clicked_cell(click) == {"layer": 0, "pos": None, "head": 1}
    assert views.clicked_cell(None) is None and views.clicked_cell({"points": []}) is None
    # plotly does not always send a heatmap cell's customdata: the labels say the same
    assert views.clicked_cell({"points": [{"x": "H3", "y": "L1"}]}) == {"layer": 1, "pos": None, "head": 3}
    assert views.clicked_cell({"points": [{"x": "4: ' and'", "y": "L0"}]}) == {"layer": 0, "pos": 4, "head": None}
    assert views.clicked_cell({"points": [{"x": "10: ' John'", "y": "L1.H2"}]}) == \
        {"layer": 1, "pos": 10, "head": 2}
    assert views.clicked_cell({"points": [{"x": "H3", "y": "nonsense"}]}) is None


def test_top_components_ranked_by_magnitude(gpt2_model, ioi_prompts):
    from patching import PatchSpec, sweep
    result = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out"))
    rows = history_tab.top_components(result, 5, "raw")
    mags = [abs(r["effect"]) for r in rows]
    assert len(rows) == 5 and mags == sorted(mags, reverse=True)
    assert rows[0]["component"].startswith("L") and " H" in rows[0]["component"]


def test_top_components_of_a_noise_run_lead_with_the_cell_that_matters(gpt2_model, ioi_prompts):
    """Ranked by the metric, a noise run listed its no-effect cells (normalized 1) first."""
    from patching import PatchSpec, sweep
    result = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="resid_pre", direction="noise"))
    for mode in ("raw", "normalized"):
        rows = history_tab.top_components(result, 3, mode)
        assert abs(rows[0]["effect"]) == pytest.approx(float(result.effect.abs().max()), abs=1e-4)
        assert all(abs(r["effect"]) > 0 for r in rows)


def test_effective_mode_falls_back_when_gap_is_zero(gpt2_model, form):
    from patching import PatchSpec, PromptSet, sweep
    same = PromptSet.single(gpt2_model, form.clean, form.clean, form.answer, form.wrong)
    result = sweep(gpt2_model, same, PatchSpec(kind="resid_pre", layers=(0,)))
    mode, note = views.effective_mode(result, "normalized")
    assert mode == "raw" and "baselines are equal" in note


def test_attention_for_a_chosen_pair(registry, store, form):
    pairs = tuple(IOI)
    run = store.get(actions.execute_run(registry, store, dataclasses.replace(form, pairs=pairs),
                                         store.data_dir))
    first = views.attention_for_cell(registry, run, {"layer": 1, "pos": None, "head": 0}, pair=0)
    second = views.attention_for_cell(registry, run, {"layer": 1, "pos": None, "head": 0}, pair=1)
    assert first.str_tokens[2] == " Mary" and second.str_tokens[2] == " John"
    assert "pair 1" in second.title
    with pytest.raises(ValueError, match="pair 2 out of range; this run has pairs 0-1"):
        views.attention_for_cell(registry, run, {"layer": 1, "pos": None, "head": 0}, pair=2)
    assert forms.parse_pair("") == 0 and forms.parse_pair(3) == 3
    with pytest.raises(ValueError, match="not 1.5"):
        forms.parse_pair(1.5)


@pytest.mark.parametrize("task", ["ioi", "factual", "greater_than", "induction"])
def test_presets_with_several_pairs_run_on_the_shipped_model(task):
    """Every preset, any count the control allows: pairs of one token length, so the Run is not
    refused ("pair 0 has 16 tokens, pair 1 has 15" before)."""
    from patching import PromptSet, load_model
    model = load_model("default")
    for n in (2, 8, forms.MAX_PRESET_PAIRS):
        pairs = forms.preset_pairs(task, n, model=model)
        assert PromptSet.from_pairs(model, [tuple(p.values()) for p in pairs]).n_pairs == n
