"""A web host without weights (`python -m dashboard --jobs celery --tokenizers-only`): the
tokenizer-only model tokenizes, validates and names shapes exactly like the full one, and whatever
would run the model is refused with a message (inline in the dashboard). The end-to-end run through
Redis and a worker with such a web host is `tests/test_celery_jobs.py`."""
from __future__ import annotations

import pytest
import torch

from patching.model.loading import ModelRegistry
from patching.core.prompts import PromptSet
from patching.core.provenance import fingerprint
from patching.model.tokenizer_only import NoWeightsError, load_tokenizer_only
from tests.conftest import IOI


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
def test_shapes_and_tokens_equal_the_full_model(tiny_dirs, tiny_models, family):
    full, light = tiny_models[family], load_tokenizer_only(str(tiny_dirs[family]))
    for attr in ("n_layers", "n_heads", "n_kv_heads", "d_mlp", "n_ctx", "parallel_attn_mlp", "bos_token_id"):
        assert getattr(light, attr) == getattr(full, attr), attr
    for attr in ("d_model", "d_vocab", "n_layers", "n_heads", "n_ctx"):
        assert getattr(light.cfg, attr) == getattr(full.cfg, attr), attr
    a, b = PromptSet.from_pairs(light, IOI), PromptSet.from_pairs(full, IOI)
    assert torch.equal(a.clean_tokens, b.clean_tokens) and torch.equal(a.answer_ids, b.answer_ids)
    assert a.str_tokens == b.str_tokens
    assert fingerprint(light).weights_sha256 == fingerprint(full).weights_sha256 is not None


def test_what_needs_weights_is_refused_with_a_message(tiny_dirs):
    light = load_tokenizer_only(str(tiny_dirs["gpt2"]))
    for attr in ("runner", "bridge", "arch", "hf"):
        with pytest.raises(ValueError, match=r"loads no model weights \(--tokenizers-only\)"):
            getattr(light, attr)
        assert getattr(light, attr, None) is None                 # an AttributeError too
    from patching import PatchSpec, sweep
    with pytest.raises(NoWeightsError):
        sweep(light, PromptSet.from_pairs(light, IOI), PatchSpec(kind="head_out"))
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        load_tokenizer_only("nope")


def test_a_dashboard_without_weights_validates_and_refuses_inline(tiny_dirs, tmp_path):
    from dashboard import actions, create_app, forms, make_jobs
    from patching.runs.store import RunStore
    name = str(tiny_dirs["gpt2"])
    registry = ModelRegistry([name], weights=False)
    store = RunStore(tmp_path)
    cb = create_app(registry, store, make_jobs("diskcache", tmp_path), model=name).patchboard
    assert "weights on the workers" in cb.model_status(name)
    clean, corrupt, answer, wrong = IOI[0]
    args = [name, clean, corrupt, answer, wrong, ["bos"], None, "head_out", "logit_diff", "denoise", [], None, None, None]
    assert cb.validate(*args) == ""                                      # the form checks out here
    assert "layers" in cb.validate(*args[:11], "7", None, None)          # and bad filters are named
    from patching import PatchSpec, sweep
    from patching.model.loading import load_model
    full = load_model(name)
    run_id = store.save(sweep(full, PromptSet.from_pairs(full, IOI[:1]), PatchSpec(kind="head_out")), IOI[:1])
    fig, _, summary, _ = cb.show_run(run_id, "raw", "png")               # stored results render
    assert fig.data and f"Run #{run_id}" in str(summary)
    click = {"points": [{"customdata": fig.data[0].customdata[0][0]}]}
    _, _, status, cell, disabled, _ = cb.attention(click, run_id, "png")[:6]
    assert "--tokenizers-only" in status and cell is None and disabled   # inline, not a crash
    from dashboard.panel.cost import cost_view
    from patching.methods.cost import CalibrationCache
    form = forms.Form(model=name, clean=clean, corrupt=corrupt, answer=answer, wrong=wrong, kind="head_out")
    assert cost_view(registry, CalibrationCache(), form).text.startswith("No cost preview: this web host loads no weights")
    with pytest.raises(ValueError, match="tokenizers-only"):
        actions.execute_run(registry, store, forms.Form(model=name, clean=clean, corrupt=corrupt,
                                                            answer=answer, wrong=wrong, kind="head_out"), tmp_path)


def test_tokenizers_only_needs_celery_jobs(tmp_path, capsys):
    from dashboard.__main__ import main
    assert main(["--tokenizers-only", "--data-dir", str(tmp_path)]) == 2
    assert "--tokenizers-only needs --jobs celery" in capsys.readouterr().err
