"""greater_than_prob_diff on the shipped model, against an independent plain-torch computation.

The reference loads the model directory with `transformers`, prepends BOS, takes the softmax of
the last position over the whole vocabulary and sums the probabilities of the tokens "00".."99"
above the clean prompt's start year minus those at or below it (Hanna et al.'s probability
difference), with the start year read by a regular expression written here.
"""
import io
import re

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from patching import PatchSpec, PromptSet, load_model, sweep
from patching.cli import main
from patching.paths import models_dir
from patching.tasks.presets import runnable_pairs

TOL = 1e-5


@pytest.fixture(scope="module")
def shipped():
    return load_model("default", device="cpu")


@pytest.fixture(scope="module")
def hf():
    path = models_dir() / "patchboard-tiny"
    return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def gt_prompts(shipped):
    return PromptSet.from_pairs(shipped, runnable_pairs(shipped, "greater_than", 4))


def _reference_pd(hf, prompt, start_from=None, hook=None):
    model, tok = hf
    start = int(re.findall(r"(\d\d)(\d\d)", start_from or prompt)[-1][1])
    tokens = torch.tensor([[tok.bos_token_id] + tok.encode(prompt, add_special_tokens=False)])
    handle = hook() if hook else None
    try:
        with torch.no_grad():
            probs = model(tokens).logits[0, -1].double().softmax(-1)
    finally:
        if handle is not None:
            handle.remove()
    years = [tok.encode(f"{y:02d}", add_special_tokens=False)[0] for y in range(100)]
    return float(sum(probs[t] if y > start else -probs[t] for y, t in enumerate(years)))


def test_baselines_match_plain_torch(shipped, hf, gt_prompts):
    result = sweep(shipped, gt_prompts, PatchSpec(kind="resid_pre", layers=(0,), positions=(0,),
                                                  metric="greater_than_prob_diff"))
    for n, pair in enumerate(gt_prompts.pairs):
        assert result.clean_baseline[n].item() == pytest.approx(_reference_pd(hf, pair.clean), abs=TOL)
        # the corrupt run ("...01") is measured against the clean prompt's start year
        assert result.corrupt_baseline[n].item() == pytest.approx(_reference_pd(hf, pair.corrupt, pair.clean), abs=TOL)
    assert (result.clean_baseline - result.corrupt_baseline).abs().min() > 1e-3


def test_a_patched_value_matches_a_forward_hook(shipped, hf, gt_prompts):
    layer, pos = 1, gt_prompts.differing_positions()[0]
    result = sweep(shipped, gt_prompts, PatchSpec(kind="resid_pre", layers=(layer,), positions=(pos,),
                                                  metric="greater_than_prob_diff"))
    model, tok = hf
    block = model.transformer.h[layer]
    for n, pair in enumerate(gt_prompts.pairs):
        clean = torch.tensor([[tok.bos_token_id] + tok.encode(pair.clean, add_special_tokens=False)])
        with torch.no_grad():
            donor = model(clean, output_hidden_states=True).hidden_states[layer][:, pos].clone()

        def hook():
            def patch(mod, args, kwargs):
                x = (args[0] if args else kwargs["hidden_states"]).clone()
                x[:, pos] = donor
                return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})
            return block.register_forward_pre_hook(patch, with_kwargs=True)
        want = _reference_pd(hf, pair.corrupt, pair.clean, hook)
        assert result.per_pair[0, 0, n].item() == pytest.approx(want, abs=TOL)
        assert abs(want - result.corrupt_baseline[n].item()) > 1e-3        # the patch does something


def test_it_is_the_evaluations_prob_mass_rescaled(shipped, gt_prompts):
    """mass above - mass at or below = 2 * mass above - mass on all years."""
    from patching.methods.pair import CachedPair
    pair = CachedPair.run(shipped, gt_prompts, "greater_than_prob_diff")
    probs = pair.clean.logits.double().softmax(-1)
    years = torch.tensor([shipped.encode(f"{y:02d}")[0] for y in range(100)])
    starts = torch.tensor([int(re.findall(r"\d{4}", p.clean)[-1][2:]) for p in gt_prompts.pairs])
    above = (torch.arange(100)[None] > starts[:, None]).double()
    mass_above = (probs[:, years] * above).sum(-1)
    assert torch.allclose(pair.clean_baseline, 2 * mass_above - probs[:, years].sum(-1), atol=1e-6)


def test_cli_metric_flag(shipped, gt_prompts, capsys):
    pair = gt_prompts.pairs[0]
    code = main(["sweep", "--model", "default", "--clean", pair.clean, "--corrupt", pair.corrupt, "--answer", pair.answer,
                 "--wrong", pair.wrong, "--kind", "resid_pre", "--layers", "0", "--metric", "greater_than_prob_diff",
                 "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    df = pd.read_csv(io.StringIO(captured.out))
    assert set(df["metric"]) == {"greater_than_prob_diff"}
    result = sweep(shipped, gt_prompts.subset([0]), PatchSpec(kind="resid_pre", layers=(0,), metric="greater_than_prob_diff"))
    assert df["value"].to_numpy() == pytest.approx(result.values[0].numpy(), abs=1e-6)


def test_a_prompt_without_a_start_year_is_bad_input(capsys):
    code = main(["sweep", "--model", "default", "--clean", "When Mary and John went to the store, John gave a drink to",
                 "--corrupt", "When Mary and John went to the store, Mary gave a drink to", "--answer", " Mary",
                 "--wrong", " John", "--kind", "resid_pre", "--metric", "greater_than_prob_diff", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "no four-digit start year in greater-than prompt 'When Mary" in err, err
