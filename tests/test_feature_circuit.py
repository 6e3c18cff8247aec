"""Feature circuits (SAE features and error nodes as circuit components) against a naive
implementation written with TransformerLens hooks: at every block input, encode, replace the
units not kept by their ablation value (from the plain corrupt run), decode, add the error back."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from patching import PatchSpec, PromptSet, sweep
from patching.methods.circuit import (CircuitSpec, Component, component_effects, faithfulness, faithfulness_curve,
                                      feature_components, parse_components, rank_components)
from patching.model import hooks
from patching.model.sae import load_saes
from tests.conftest import RANDOM_D_SAE as D_SAE

PAIRS = [("When Mary and John went to the store, John gave a drink to",
          "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
         ("When John and Mary went to the store, Mary gave a drink to",
          "When John and Mary went to the store, John gave a drink to", " John", " Mary"),
         ("When Mary and John went to the shop, Mary gave a drink to",
          "When Mary and John went to the shop, John gave a drink to", " John", " Mary")]


@pytest.fixture(scope="module")
def model(shipped_model):
    return shipped_model


@pytest.fixture(scope="module")
def saes(random_saes):
    return {s.layer: s for s in load_saes(random_saes).values()}


@pytest.fixture(scope="module")
def prompts(model):
    return PromptSet.from_pairs(model, PAIRS)


def _naive(model, prompts, saes, kept, ablation: str) -> torch.Tensor:
    """Per-pair logit difference of the clean run with every SAE unit not in `kept` ablated."""
    names = [hooks.resid_pre(layer) for layer in saes]
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(prompts.corrupt_tokens, names_filter=lambda n: n in names)
    hook_list = []
    for layer, sae in saes.items():
        x_c = cache[hooks.resid_pre(layer)]
        f_src, e_src = sae.encode(x_c), sae.error(x_c)
        if ablation == "mean":
            f_src, e_src = f_src.mean(0, keepdim=True), e_src.mean(0, keepdim=True)
        elif ablation == "zero":
            f_src, e_src = f_src * 0, e_src * 0
        keep_f = torch.tensor([Component(layer, "feature", i) in kept for i in range(sae.d_sae)])
        keep_e = Component(layer, "error") in kept

        def splice(x, hook, sae=sae, f_src=f_src, e_src=e_src, keep_f=keep_f, keep_e=keep_e):
            f, e = sae.encode(x), sae.error(x)
            f = torch.where(keep_f, f, f_src.expand_as(f))
            e = e if keep_e else e_src.expand_as(e)
            return sae.decode(f) + e
        hook_list.append((hooks.resid_pre(layer), splice))
    with torch.no_grad():
        logits = model.bridge.run_with_hooks(prompts.clean_tokens, fwd_hooks=hook_list)[:, -1]
    rows = torch.arange(prompts.n_pairs)
    return logits[rows, prompts.answer_ids] - logits[rows, prompts.wrong_ids]


def test_feature_component_names_round_trip():
    cs = parse_components("L1F12, l2err L0F0")
    assert [c.name for c in cs] == ["L1F12", "L2ERR", "L0F0"]
    assert cs[0] == Component(1, "feature", 12) and cs[1] == Component(2, "error")
    assert CircuitSpec.from_dict(CircuitSpec(cs, saes="x").to_dict()) == CircuitSpec(cs, saes="x")


def test_heads_and_features_in_one_circuit_are_refused():
    with pytest.raises(ValueError, match="heads / MLPs .* or SAE units .*not both"):
        CircuitSpec(parse_components("L0H1, L1F3"))


def test_feature_out_of_range_names_the_feature_and_the_range(model, prompts, random_saes):
    with pytest.raises(ValueError, match=rf"component L1F{D_SAE}: feature {D_SAE} out of range; the SAE has "
                                         rf"features 0-{D_SAE - 1} \(L1ERR is its error node\)"):
        faithfulness(model, prompts, CircuitSpec(parse_components(f"L1F{D_SAE}"), saes=str(random_saes)))


@pytest.mark.parametrize("ablation", ["mean", "resample", "zero", "corrupt"])
def test_full_and_empty_feature_circuits(model, prompts, saes, random_saes, ablation):
    """Every unit kept: the clean run (float precision); none kept: 0 by definition, and the naive
    splice with everything ablated gives the same metric."""
    every = feature_components(saes)
    r = faithfulness(model, prompts, CircuitSpec(every, ablation, saes=str(random_saes)))
    clean = model.bridge(prompts.clean_tokens)[:, -1]
    rows = torch.arange(prompts.n_pairs)
    want = clean[rows, prompts.answer_ids] - clean[rows, prompts.wrong_ids]
    assert torch.allclose(r.full.float(), want, atol=1e-4) and r.faithfulness == pytest.approx(1.0)
    if ablation != "resample":            # the naive version has no resample sources
        assert torch.allclose(r.empty.float(), _naive(model, prompts, saes, set(), ablation), atol=1e-4)
    if ablation == "corrupt":             # every unit from the pair's own corrupt run: the corrupt run
        corrupt = model.bridge(prompts.corrupt_tokens)[:, -1]
        assert torch.allclose(r.empty.float(), corrupt[rows, prompts.answer_ids] - corrupt[rows, prompts.wrong_ids],
                              atol=1e-3)


@pytest.mark.parametrize("ablation", ["mean", "zero", "corrupt"])
@pytest.mark.parametrize("kept", ["L0F1,L1F3,L2ERR,L3F0,L3F7", "L0ERR,L1ERR,L2ERR,L3ERR", "L2F5"])
def test_feature_circuit_matches_the_naive_splice(model, prompts, saes, random_saes, kept, ablation):
    r = faithfulness(model, prompts, CircuitSpec(parse_components(kept), ablation, saes=str(random_saes)))
    want = _naive(model, prompts, saes, set(parse_components(kept)), ablation)
    assert torch.allclose(r.per_pair.float(), want, atol=1e-4), (r.per_pair, want)
    empty = _naive(model, prompts, saes, set(), ablation)
    assert abs(float(r.m_circuit - r.m_empty)) > 1e-4 or abs(float(want.mean() - empty.mean())) < 1e-4


def test_the_hook_path_matches_the_runner(model, prompts, random_saes):
    spec = CircuitSpec(parse_components("L0F1,L1F3,L2ERR,L3F0"), "resample", seed=3, saes=str(random_saes))
    ours = faithfulness(model, prompts, spec)
    hooked = faithfulness(dataclasses.replace(model, runner=None), prompts, spec)
    assert torch.allclose(ours.per_pair, hooked.per_pair, atol=1e-4)
    assert torch.allclose(ours.empty, hooked.empty, atol=1e-4)


def test_features_rank_by_a_feature_sweep_and_the_curve_matches_single_circuits(model, prompts, random_saes):
    result = sweep(model, prompts, PatchSpec(kind="feature", saes=str(random_saes)))
    effects = component_effects(result)
    assert len(effects) == model.n_layers * (D_SAE + 1)
    base = float(result.corrupt_baseline.mean())
    assert effects[Component(2, "error")] == pytest.approx(float(result.values[2, D_SAE]) - base)
    assert effects[Component(1, "feature", 4)] == pytest.approx(float(result.values[1, 4]) - base)
    ranked = rank_components(result)[:6]
    curve = faithfulness_curve(model, prompts, ranked, saes=str(random_saes), ks=(0, 3, 6))
    assert curve.faithfulness[0] == 0.0
    for k, v in zip(curve.ks[1:], curve.values.tolist()[1:]):
        one = faithfulness(model, prompts, CircuitSpec([c for c, _ in ranked[:k]], saes=str(random_saes)))
        assert v == pytest.approx(one.m_circuit, abs=1e-5)
        assert float(curve.empty.mean()) == pytest.approx(one.m_empty, abs=1e-5)
    assert curve.to_dataframe()["added"].iloc[1] == ranked[2][0].name      # k = 3 adds the third


def _pairs_csv(tmp_path) -> str:
    import csv
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["clean", "corrupt", "answer", "wrong"])
        w.writerows(PAIRS)
    return str(path)


def test_cli_feature_circuit_and_curve(model, prompts, random_saes, tmp_path, capsys):
    import json

    from patching import cli
    base = ["circuit", "--model", "default", "--device", "cpu", "--pairs", _pairs_csv(tmp_path),
            "--saes", str(random_saes)]
    assert cli.main([*base, "--components", "L0F1,L3ERR", "--ablation", "corrupt", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    want = faithfulness(model, prompts, CircuitSpec(parse_components("L0F1,L3ERR"), "corrupt", saes=str(random_saes)))
    assert doc["circuit"]["components"] == "L0F1,L3ERR" and doc["circuit"]["saes"] == str(random_saes)
    assert doc["circuit"]["faithfulness"] == pytest.approx(want.faithfulness, abs=1e-6)
    assert cli.main([*base, "--curve-from", "feature", "--top", "4", "--keep", "L0ERR,L1ERR", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    ranked = rank_components(sweep(model, prompts, PatchSpec(kind="feature", saes=str(random_saes))))
    assert [row["added"] for row in doc["curve"]][1:] == [c.name for c, _ in ranked[:4]]
    kept = {"L0ERR", "L1ERR"} | {c.name for c, _ in ranked[:4]}
    assert doc["curve"][0]["circuit"] == "L0ERR,L1ERR" and doc["circuit"]["n_components"] == len(kept)


@pytest.mark.parametrize("extra, message", [
    (["--components", "L0H1,L1F3"], "not both"),
    (["--components", f"L1F{D_SAE}"], f"component L1F{D_SAE}: feature {D_SAE} out of range"),
    (["--curve-from", "head_out,feature"], "not both"),
])
def test_cli_feature_circuit_bad_input_exits_2(model, random_saes, tmp_path, capsys, extra, message):
    from patching import cli
    code = cli.main(["circuit", "--model", "default", "--device", "cpu", "--pairs", _pairs_csv(tmp_path),
                     "--saes", str(random_saes), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
