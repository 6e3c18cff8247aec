"""Provenance: every sweep / path / attribution result records what it was made from."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from patching import PatchSpec, sweep
from patching.core.provenance import (CACHE_ATTR, ENV_ATTR, Provenance, check_weights, describe_metric,
                                 environment, fingerprint, weights_hash)
from patching.core.results import PatchResult
from tests.conftest import IOI


def half_logit_diff(logits, inputs):
    """A user metric defined in the test (its source must be captured)."""
    rows = torch.arange(logits.shape[0])
    return 0.5 * (logits[rows, inputs.answer] - logits[rows, inputs.wrong])


@pytest.fixture(scope="module")
def head_result(gpt2_model, ioi_prompts):
    return sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out", model=gpt2_model.name))


def test_sweep_records_weights_hash_equal_to_a_direct_sha256(head_result, tiny_dirs):
    prov = Provenance.from_dict(head_result.provenance)
    direct = hashlib.sha256((Path(tiny_dirs["gpt2"]) / "model.safetensors").read_bytes()).hexdigest()
    assert prov.weights_sha256 == direct
    assert prov.weights_files == (("model.safetensors", direct),)
    assert prov.tokenizer_sha256 is not None and len(prov.tokenizer_sha256) == 64
    assert prov.model_name == str(tiny_dirs["gpt2"])


def test_sweep_records_versions_prompts_spec_device(head_result):
    import transformers
    prov = Provenance.from_dict(head_result.provenance)
    assert prov.versions["torch"] == torch.__version__
    assert prov.versions["transformers"] == transformers.__version__
    assert prov.versions["transformer_lens"]
    assert prov.versions["python"].count(".") == 2
    assert prov.pairs == tuple(IOI)
    assert prov.prepend_bos is True
    assert prov.spec == head_result.spec.to_dict()
    assert prov.metric == {"name": "logit_diff", "source": "registry"}
    assert (prov.device, prov.dtype) == ("cpu", "float32")
    assert prov.created > 0 and prov.created_iso.endswith("Z")
    assert "torch_initial_seed" in prov.seeds and prov.platform


def test_user_metric_source_is_captured(gpt2_model, ioi_prompts):
    r = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="resid_pre", layers=(0,)), metric=half_logit_diff)
    m = r.provenance["metric"]
    assert m["source"] == "callable" and m["qualname"].endswith("test_provenance.half_logit_diff")
    assert "0.5 * (logits[rows, inputs.answer]" in m["code"]


def test_module_metric_source_is_captured():
    m = describe_metric("metrics.logit_diff:logit_diff")
    assert m["source"] == "module" and m["name"] == "metrics.logit_diff:logit_diff"
    assert "def logit_diff" in m["code"]


def test_fingerprint_is_cached_on_the_model_object(gpt2_model):
    fp = fingerprint(gpt2_model)
    assert fingerprint(gpt2_model) is fp
    assert getattr(gpt2_model, CACHE_ATTR) is fp
    env = environment(gpt2_model)
    assert getattr(gpt2_model, ENV_ATTR)["versions"] == env["versions"]
    env["versions"]["torch"] = "changed"                 # callers get a copy, the cache is untouched
    assert environment(gpt2_model)["versions"]["torch"] == torch.__version__


def test_models_without_files_get_a_record_without_hashes(gpt2_model, ioi_prompts):
    """A model object built in memory (no directory): provenance still records, hashes are None."""
    from types import SimpleNamespace
    from patching.core.provenance import record
    fake = SimpleNamespace(name="in-memory", device="cpu", tokenizer=gpt2_model.tokenizer, bridge=None)
    prov = record(fake, ioi_prompts, PatchSpec(kind="resid_pre"))
    assert prov.weights_sha256 is None and prov.model_name == "in-memory"
    assert prov.tokenizer_sha256 == fingerprint(gpt2_model).tokenizer_sha256


def test_path_and_attribution_results_carry_provenance(gpt2_model, ioi_prompts):
    from patching.methods.attribution import run_attribution
    from patching.methods.path import PathSpec, run_path
    path = run_path(gpt2_model, ioi_prompts, PathSpec(receivers="logits"))
    assert path.provenance["spec"]["kind"] == "path"
    atts = run_attribution(gpt2_model, ioi_prompts, kinds=["resid_pre", "head_out"])
    assert [a.provenance["spec"]["kind"] for a in atts] == ["resid_pre", "head_out"]
    assert atts[0].provenance["weights_sha256"] == path.provenance["weights_sha256"]


def test_json_round_trip_keeps_provenance_and_old_json_still_loads(head_result):
    d = head_result.to_json()
    assert PatchResult.from_json(d).provenance == head_result.provenance
    old = {k: v for k, v in d.items() if k != "provenance"}     # a run stored before provenance
    restored = PatchResult.from_json(old)
    assert restored.provenance is None
    assert torch.equal(restored.per_pair.nan_to_num(), head_result.per_pair.nan_to_num())


def test_sharded_weights_hash_is_a_manifest_hash(tmp_path):
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"bbb")
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"aaa")
    sha, files = weights_hash(tmp_path)
    a, b = hashlib.sha256(b"aaa").hexdigest(), hashlib.sha256(b"bbb").hexdigest()
    assert files == (("model-00001-of-00002.safetensors", a), ("model-00002-of-00002.safetensors", b))
    manifest = f"model-00001-of-00002.safetensors {a}\nmodel-00002-of-00002.safetensors {b}\n"
    assert sha == hashlib.sha256(manifest.encode()).hexdigest()
    assert weights_hash(tmp_path / "nothing-here") == (None, ())


@pytest.mark.parametrize("change, message", [
    ({"weights_sha256": "xyz"}, "weights_sha256 must be 64 lowercase hex"),
    ({"version": 99}, "provenance version 99"),
    ({"model_name": ""}, "model_name must be a non-empty string"),
    ({"pairs": [["a", "b", "c"]]}, "pair 0 must be 4 strings"),
    ({"spec": "head_out"}, "spec must be an object"),
])
def test_bad_provenance_is_refused_with_a_clear_message(head_result, change, message):
    with pytest.raises(ValueError, match=message):
        Provenance.from_dict({**head_result.provenance, **change})


def test_check_weights_warns_on_mismatch_only(head_result):
    prov = head_result.provenance
    assert check_weights(prov, prov["weights_sha256"]) is None
    assert "differ" in check_weights(prov, "0" * 64)
    assert "not available" in check_weights(prov, None)


def test_summary_lines_name_the_model_and_hash(head_result):
    text = "\n".join(Provenance.from_dict(head_result.provenance).summary_lines())
    assert head_result.provenance["weights_sha256"] in text and "logit_diff" in text


def test_provenance_is_enough_to_rerun_the_sweep(head_result, tiny_models):
    """Spec, pairs, BOS and metric from the record alone give the same values on the same weights."""
    from patching import PromptSet
    from patching.model.loading import load_model
    prov = Provenance.from_dict(head_result.provenance)
    model = load_model(prov.model_name)                       # a fresh load, found by the recorded name
    assert fingerprint(model).weights_sha256 == prov.weights_sha256
    prompts = PromptSet.from_pairs(model, prov.pairs, prepend_bos=prov.prepend_bos)
    again = sweep(model, prompts, PatchSpec.from_dict(prov.spec), metric=prov.metric["name"])
    assert torch.allclose(again.per_pair, head_result.per_pair, atol=1e-6, equal_nan=True)
    assert again.provenance["spec"] == prov.spec
