"""The metric select's choices: the registry's new metrics are offered, a preset suggests its
task's metric in words (never switching it), multi-token answers pass with seq_logprob_diff."""
import pytest

from dashboard.forms import Form, metric_options, metric_suggestion, parse_form, token_view
from tests.conftest import IOI

MULTI = dict(clean=IOI[0][0], corrupt=IOI[0][1], answer=" Maryanne Smith", wrong=" Johnny")


def test_the_select_offers_the_new_metrics():
    values = [o["value"] for o in metric_options()]
    assert "greater_than_prob_diff" in values and "seq_logprob_diff" in values


def test_the_greater_than_preset_suggests_its_metric_and_keeps_the_users(app):
    fill = app.patchboard.fill_preset("greater_than", 1)
    assert fill[5] is not None and fill[5].__class__.__name__ == "NoUpdate"     # the metric select untouched
    note = app.patchboard.metric_note("greater_than", "logit_diff")
    assert "greater_than_prob_diff" in note and "Still logit_diff" in note
    assert app.patchboard.metric_note("greater_than", "greater_than_prob_diff") == ""
    assert app.patchboard.metric_note("ioi", "logit_diff") == "" and app.patchboard.metric_note(None, "kl") == ""


def test_multi_token_answers_parse_with_seq_logprob_diff_only(gpt2_model, tiny_name):
    spec, prompts = parse_form(gpt2_model, Form(model=tiny_name, kind="resid_pre", metric="seq_logprob_diff", **MULTI))
    assert spec.metric == "seq_logprob_diff" and prompts.n_pairs == 1
    with pytest.raises(ValueError, match="need the metric seq_logprob_diff"):
        parse_form(gpt2_model, Form(model=tiny_name, kind="resid_pre", metric="logit_diff", **MULTI))


def test_token_view_accepts_multi_token_answers_under_seq_logprob_diff(gpt2_model, tiny_name):
    ok = token_view(gpt2_model, Form(model=tiny_name, metric="seq_logprob_diff", **MULTI))
    assert ok.problems == [] and "each one scored" in ok.answer
    bad = token_view(gpt2_model, Form(model=tiny_name, metric="logit_diff", **MULTI))
    assert "not a single token" in bad.answer and "seq_logprob_diff" in bad.problems[0]


def test_a_stored_multi_token_run_reopens(registry, tiny_name):
    """The attention view and refine rebuild a stored run's prompts: with its metric's rules."""
    from types import SimpleNamespace

    from dashboard.views import stored_prompts
    from patching import PatchSpec
    pairs = [(MULTI["clean"], MULTI["corrupt"], MULTI["answer"], MULTI["wrong"])]
    run = SimpleNamespace(result=SimpleNamespace(spec=PatchSpec(kind="resid_pre", model=tiny_name,
                                                                metric="seq_logprob_diff")), pairs=pairs)
    _, prompts = stored_prompts(registry, run)
    assert prompts.pairs[0].answer == " Maryanne Smith"
    stored_user_metric = SimpleNamespace(result=SimpleNamespace(spec=PatchSpec(kind="resid_pre", model=tiny_name,
                                                                               metric="no_such_pkg.mod:fn")), pairs=pairs)
    with pytest.raises(ValueError, match="not a single token"):      # never imported to ask
        stored_prompts(registry, stored_user_metric)
