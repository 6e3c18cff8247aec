"""Exact SAE-feature patching (kind "feature") against a naive implementation written with
TransformerLens hooks: splice the SAE in at the block input, swap one feature's activation (or
the error term) for the donor run's, decode, add the error back."""
from __future__ import annotations

import pytest
import torch

from patching import PatchSpec, PromptSet, sweep
from patching.model import hooks
from patching.model.sae import Sae, save_sae
from tests.conftest import RANDOM_D_SAE as D_SAE

PAIRS = [("When Mary and John went to the store, John gave a drink to",
          "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
         ("When John and Mary went to the store, Mary gave a drink to",
          "When John and Mary went to the store, John gave a drink to", " John", " Mary")]


@pytest.fixture(scope="module")
def model(shipped_model):
    return shipped_model


@pytest.fixture(scope="module")
def sae_dir(random_saes):
    return random_saes


def _naive(model, prompts: PromptSet, saes: dict[int, Sae], direction: str, layer: int, unit: int,
           pos: int | None) -> torch.Tensor:
    """Per-pair logit difference with feature `unit` (D_SAE = the error) of `layer` swapped."""
    base, donor = ((prompts.corrupt_tokens, prompts.clean_tokens) if direction == "denoise"
                   else (prompts.clean_tokens, prompts.corrupt_tokens))
    sae = saes[layer]
    _, donor_cache = model.bridge.run_with_cache(donor, names_filter=hooks.resid_pre(layer))
    x_donor = donor_cache[hooks.resid_pre(layer)]
    f_donor, e_donor = sae.encode(x_donor), sae.error(x_donor)

    def splice(x, hook):
        f, e = sae.encode(x), sae.error(x)
        at = slice(None) if pos is None else slice(pos, pos + 1)
        if unit == D_SAE:
            e[:, at] = e_donor[:, at]
        else:
            f[:, at, unit] = f_donor[:, at, unit]
        return sae.decode(f) + e
    logits = model.bridge.run_with_hooks(base, fwd_hooks=[(hooks.resid_pre(layer), splice)])[:, -1]
    rows = torch.arange(prompts.n_pairs)
    return logits[rows, prompts.answer_ids] - logits[rows, prompts.wrong_ids]


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_every_feature_and_error_node_matches_the_naive_splice(model, sae_dir, direction):
    from patching.model.sae import load_saes
    prompts = PromptSet.from_pairs(model, PAIRS)
    result = sweep(model, prompts, PatchSpec(kind="feature", direction=direction, saes=str(sae_dir)))
    assert result.axes == ("layer", "feature") and result.per_pair.shape == (model.n_layers, D_SAE + 1, 2)
    saes = {s.layer: s for s in load_saes(sae_dir).values()}
    moved = 0
    # every unit of the first and last layer in one direction, a few in the other (time)
    checks = ([(layer, unit) for layer in (0, model.n_layers - 1) for unit in range(D_SAE + 1)]
              if direction == "denoise" else [(layer, unit) for layer in (1, 2) for unit in (0, 5, D_SAE)])
    for layer, unit in checks:
        want = _naive(model, prompts, saes, direction, layer, unit, None)
        got = result.per_pair[layer, unit].float()
        assert torch.allclose(got, want, atol=1e-4), (layer, unit, got, want)
        moved += int((want - result.corrupt_baseline.float() if direction == "denoise"
                      else want - result.clean_baseline.float()).abs().max() > 1e-3)
    assert moved >= 3      # the comparison sees real effects, not only unchanged runs


def test_per_position_features_match_the_naive_splice(model, sae_dir):
    from patching.model.sae import load_saes
    prompts = PromptSet.from_pairs(model, PAIRS)
    layer = 2
    result = sweep(model, prompts, PatchSpec(kind="feature", per_position=True, layers=(layer,), saes=str(sae_dir)))
    assert result.axes == ("layer", "pos", "feature")
    saes = {s.layer: s for s in load_saes(sae_dir).values()}
    for pos in (0, 5, prompts.n_pos - 1):
        for unit in (0, 3, D_SAE):
            want = _naive(model, prompts, saes, "denoise", layer, unit, pos)
            assert torch.allclose(result.per_pair[0, pos, unit].float(), want, atol=1e-4), (pos, unit)


def test_saes_of_another_model_are_refused(model, tmp_path):
    save_sae(Sae.random(hooks.resid_pre(0), d_in=7, d_sae=4), tmp_path / "a")
    prompts = PromptSet.from_pairs(model, PAIRS[:1])
    with pytest.raises(ValueError, match="d_in=7, but 'default' has d_model=128"):
        sweep(model, prompts, PatchSpec(kind="feature", saes=str(tmp_path)))


def test_a_layer_without_an_sae_is_named(model, tmp_path):
    save_sae(Sae.random(hooks.resid_pre(1), d_in=128, d_sae=4), tmp_path / "a")
    prompts = PromptSet.from_pairs(model, PAIRS[:1])
    with pytest.raises(ValueError, match=r"no SAE on blocks.0.hook_resid_pre \(SAEs on layers: 1\)"):
        sweep(model, prompts, PatchSpec(kind="feature", saes=str(tmp_path)))
    result = sweep(model, prompts, PatchSpec(kind="feature", layers=(1,), saes=str(tmp_path)))
    assert result.values.shape == (1, 5)


def test_saes_apply_to_the_feature_kind_only():
    with pytest.raises(ValueError, match="applies to kind 'feature', not 'head_out'"):
        PatchSpec(kind="head_out", saes="x")


def test_feature_attribution_is_the_first_order_term_computed_by_hand(model, sae_dir):
    """Attribution of feature i = (f_donor_i - f_base_i) * (W_dec[i] . d metric / d x), the
    gradient taken here through TransformerLens hooks; the error node likewise with its error."""
    from patching.methods.attribution import run_attribution
    from patching.model.sae import load_saes
    prompts = PromptSet.from_pairs(model, PAIRS)
    (res,) = run_attribution(model, prompts, kinds=["feature"], saes=str(sae_dir))
    assert res.axes == ("layer", "feature")
    saes = {s.layer: s for s in load_saes(sae_dir).values()}
    base, donor = prompts.corrupt_tokens, prompts.clean_tokens
    names = [hooks.resid_pre(layer) for layer in range(model.n_layers)]
    _, donor_cache = model.bridge.run_with_cache(donor, names_filter=lambda n: n in names)
    acts = {}

    def keep(name):
        def hook(x, hook):
            x.retain_grad()
            acts[name] = x
            return x
        return hook
    with torch.enable_grad():
        logits = model.bridge.run_with_hooks(base, fwd_hooks=[(n, keep(n)) for n in names])[:, -1]
        rows = torch.arange(prompts.n_pairs)
        (logits[rows, prompts.answer_ids] - logits[rows, prompts.wrong_ids]).sum().backward()
    for layer, name in enumerate(names):
        sae, x_b, g = saes[layer], acts[name].detach(), acts[name].grad
        x_d = donor_cache[name]
        d_f = sae.encode(x_d) - sae.encode(x_b)
        want = torch.cat([(d_f * (g @ sae.W_dec.T)).sum(1),
                          ((sae.error(x_d) - sae.error(x_b)) * g).sum((1, 2))[:, None]], dim=1)   # [b, units]
        got = res.per_pair[layer].float() - res.corrupt_baseline.float()                       # [units, b]
        assert torch.allclose(got, want.T, atol=1e-4), layer


def test_attribution_over_all_kinds_leaves_features_out_unless_asked(model):
    from patching.methods.attribution import attribution_kinds
    assert "feature" not in attribution_kinds(model)


def test_the_cli_writes_feature_rows_and_refuses_a_missing_sae_folder(sae_dir, tmp_path, capsys):
    import pandas as pd
    from patching.cli import main
    clean, corrupt, answer, wrong = PAIRS[0]
    common = ["--clean", clean, "--corrupt", corrupt, "--answer", answer, "--wrong", wrong, "--quiet"]
    out = tmp_path / "f.csv"
    assert main(["sweep", *common, "--kind", "feature", "--layers", "3", "--saes", str(sae_dir), "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert list(df["feature"]) == list(range(D_SAE + 1))
    assert list(df["feature_label"])[-2:] == [f"F{D_SAE - 1}", "error"]
    assert main(["sweep", *common, "--kind", "feature", "--saes", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["attribution", *common, "--kinds", "feature", "--saes", str(sae_dir), "--out", str(tmp_path / "a.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "a.csv")) == 4 * (D_SAE + 1)


def test_the_cost_preview_counts_only_features_that_change(model, sae_dir):
    from patching.methods.cost import estimate_cost
    prompts = PromptSet.from_pairs(model, PAIRS)
    spec = PatchSpec(kind="feature", saes=str(sae_dir))
    cost = estimate_cost(model, prompts, spec)
    result = sweep(model, prompts, spec)
    assert cost.cells == model.n_layers * (D_SAE + 1)
    assert 0 < cost.patched_rows <= cost.cells * prompts.n_pairs and cost.skipped_cells > 0
    assert result.values.shape == (model.n_layers, D_SAE + 1)
