"""Every kind, both directions, on three architectures, against TransformerLens' own patching.py.

TransformerLens 4.x's bridge aliases `hook_resid_mid` to the MLP's layer-norm input, so patching
it there changes only the MLP's input and not the residual stream carried past the MLP (legacy
HookedTransformer patched the residual stream). Our resid_mid patches the residual stream; its
reference is written here with TransformerLens hooks: set attn_out so that resid_mid equals the
donor's value at the patched position.
"""
from functools import partial

import pandas as pd
import pytest
import torch
from transformer_lens import patching as tlp

from metrics import MetricInputs, get_metric
from patching import PatchSpec, PromptSet, sweep
from patching.model import hooks

TOL = 1e-4
REFERENCE = {
    ("resid_pre", False): tlp.get_act_patch_resid_pre,
    ("attn_out", False): tlp.get_act_patch_attn_out,
    ("mlp_out", False): tlp.get_act_patch_mlp_out,
    ("head_out", False): tlp.get_act_patch_attn_head_out_all_pos,
    ("head_out", True): tlp.get_act_patch_attn_head_out_by_pos,
    ("head_q", False): tlp.get_act_patch_attn_head_q_all_pos,
    ("head_q", True): tlp.get_act_patch_attn_head_q_by_pos,
    ("head_k", False): tlp.get_act_patch_attn_head_k_all_pos,
    ("head_k", True): tlp.get_act_patch_attn_head_k_by_pos,
    ("head_v", False): tlp.get_act_patch_attn_head_v_all_pos,
    ("head_v", True): tlp.get_act_patch_attn_head_v_by_pos,
    ("head_pattern", False): tlp.get_act_patch_attn_head_pattern_all_pos,
    ("head_pattern", True): tlp.get_act_patch_attn_head_pattern_by_pos,
}


def _resid_post_reference(model, base_tokens, donor_cache, metric):
    """resid_post via TransformerLens: it has no get_act_patch_resid_post; same setter, other hook."""
    return tlp.generic_activation_patch(
        model, base_tokens, donor_cache, metric, patch_setter=tlp.layer_pos_patch_setter,
        activation_name="resid_post", index_axis_names=("layer", "pos"))


def _resid_mid_reference(model, base_tokens, donor_cache, base_cache, metric, n_layers, n_pos):
    out = torch.zeros(n_layers, n_pos)
    for layer in range(n_layers):
        for pos in range(n_pos):
            def hook(attn_out, hook, layer=layer, pos=pos):
                attn_out = attn_out.clone()
                attn_out[:, pos] = (donor_cache[hooks.resid_mid(layer)][:, pos]
                                    - base_cache[hooks.resid_pre(layer)][:, pos])
                return attn_out
            out[layer, pos] = metric(model.run_with_hooks(base_tokens, fwd_hooks=[(hooks.attn_out(layer), hook)]))
    return out


SHORT_IOI = [("When Mary and John went, John gave it to", "When Mary and John went, Mary gave it to", " Mary", " John"),
             ("When John and Mary went, Mary gave it to", "When John and Mary went, John gave it to", " John", " Mary")]
pytestmark = pytest.mark.slow


def _by_pos_reference(model, kind, base, donor_cache, metric, positions):
    """TransformerLens' by-position sweep on chosen positions, as [layer, pos, head]."""
    n_heads = model.n_kv_heads if kind in ("head_k", "head_v") else model.n_heads
    grid = [(l, p, h) for l in range(model.n_layers) for p in positions for h in range(n_heads)]
    if kind == "head_pattern":
        df = pd.DataFrame([(l, h, p) for l, p, h in grid], columns=["layer", "head_index", "dest_pos"])
    else:
        df = pd.DataFrame(grid, columns=["layer", "pos", "head_index"])
    flat = REFERENCE[(kind, True)](model.bridge, base, donor_cache, metric, index_axis_names=None, index_df=df)
    return flat.reshape(model.n_layers, len(positions), n_heads)


@pytest.fixture(scope="module")
def prompt_sets(tiny_models):
    return {f: PromptSet.from_pairs(m, SHORT_IOI) for f, m in tiny_models.items()}


def _metric_fn(prompts):
    ld = get_metric("logit_diff")
    return lambda logits: ld(logits[:, -1], MetricInputs(prompts.answer_ids, prompts.wrong_ids, None)).mean()


CASES = [(k, pp) for k, pp in REFERENCE] + [("resid_post", False), ("resid_mid", False)]


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("kind,per_position", CASES, ids=[f"{k}{'-per_pos' if p else ''}" for k, p in CASES])
def test_kind_matches_transformer_lens(tiny_models, prompt_sets, family, direction, kind, per_position):
    model, prompts = tiny_models[family], prompt_sets[family]
    positions = (0, prompts.differing_positions()[0], prompts.n_pos - 1)
    if kind == "resid_mid" and model.parallel_attn_mlp:
        pytest.skip("resid_mid does not exist on parallel attention+MLP models (tested as an error)")
    base, donor = ((prompts.corrupt_tokens, prompts.clean_tokens) if direction == "denoise"
                   else (prompts.clean_tokens, prompts.corrupt_tokens))
    _, donor_cache = model.bridge.run_with_cache(donor)
    metric = _metric_fn(prompts)
    if kind == "resid_mid":
        _, base_cache = model.bridge.run_with_cache(base)
        ref = _resid_mid_reference(model.bridge, base, donor_cache, base_cache, metric,
                                   model.n_layers, prompts.n_pos)
    elif kind == "resid_post":
        ref = _resid_post_reference(model.bridge, base, donor_cache, metric)
    elif per_position:
        # a subset of positions (first, where the prompts differ, last) keeps the reference fast
        ref = _by_pos_reference(model, kind, base, donor_cache, metric, positions)
    else:
        ref = REFERENCE[(kind, per_position)](model.bridge, base, donor_cache, metric)
    ours = sweep(model, prompts, PatchSpec(kind=kind, per_position=per_position, direction=direction,
                                           positions=positions if per_position else None))
    assert ours.values.shape == ref.shape
    assert (ours.values - ref.double()).abs().max().item() <= TOL
    # not vacuous: patching changes the metric somewhere
    assert (ours.values - ours.corrupt_value if direction == "denoise" else ours.values - ours.clean_value).abs().max() > 1e-5
