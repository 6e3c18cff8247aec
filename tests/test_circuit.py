"""Circuits: component names, the spec's checks, faithfulness (full set = 1, empty set = the ablated
baseline), the ablated forward against a hand-written TransformerLens hook reference, the curve,
ranking from sweeps, and the EAP edge graph."""
import dataclasses

import pytest
import torch

from metrics import MetricInputs, get_metric
from patching import PatchSpec, PromptSet, sweep
from patching.model import hooks
from patching.methods.attribution import edge_attribution
from patching.methods.circuit import (ABLATIONS, CircuitSpec, Component, CurveResult, all_components, component_effects,
                              edge_graph, faithfulness, faithfulness_curve, format_components, parse_components,
                              rank_components, top_components, _node_ids, _resample_sources)
from tests.conftest import IOI

FAMILIES = ("gpt2", "llama", "neox")


@pytest.fixture(scope="module")
def prompt_sets(tiny_models):
    # three pairs, so resampling has a choice of other pairs
    pairs = IOI + [("When John and Mary went to the store, Mary gave a drink to",
                    "When John and Mary went to the store, John gave a drink to", " John", " Mary")]
    out = {f: PromptSet.from_pairs(m, pairs) for f, m in tiny_models.items()}
    assert all(p.n_pairs == 3 for p in out.values())
    return out


def _reference(model, prompts, circuit: set[str], ablation: str, seed: int = 0) -> torch.Tensor:
    """Written independently of patching.methods.circuit: one pair per forward, a TransformerLens hook per
    layer that overwrites z[:, :, h] (hook_z) of each head not in the circuit and hook_mlp_out of
    each MLP not in it, with the corrupt run's mean / another pair's value / zeros / its own value."""
    bridge = model.bridge
    L, H = model.n_layers, model.n_heads
    names = {hooks.z(l) for l in range(L)} | {hooks.mlp_out(l) for l in range(L)}
    with torch.no_grad():
        clean_logits = bridge(prompts.clean_tokens)[:, -1]
        _, cache = bridge.run_with_cache(prompts.corrupt_tokens, names_filter=lambda n: n in names)
    metric = get_metric("logit_diff")
    n = prompts.n_pairs
    source = _resample_sources(n, seed, "cpu").tolist() if ablation == "resample" else None
    out = []
    for i in range(n):
        def value(name):
            act = cache[name]
            if ablation == "mean":
                return act.mean(0)
            if ablation == "zero":
                return torch.zeros_like(act[0])
            if ablation == "corrupt":           # the pair's own corrupt prompt
                return act[i]
            return act[source[i]]

        fwd = []
        for l in range(L):
            dead = [h for h in range(H) if f"L{l}H{h}" not in circuit]

            def z_hook(z, hook, l=l, dead=dead):
                z = z.clone()
                for h in dead:
                    z[0, :, h] = value(hooks.z(l))[:, h]
                return z
            fwd.append((hooks.z(l), z_hook))
            if f"MLP{l}" not in circuit:
                fwd.append((hooks.mlp_out(l), lambda a, hook, l=l: value(hooks.mlp_out(l))[None].expand_as(a).clone()))
        with torch.no_grad():
            logits = bridge.run_with_hooks(prompts.clean_tokens[i:i + 1], fwd_hooks=fwd)[:, -1]
        inputs = MetricInputs(prompts.answer_ids[i:i + 1], prompts.wrong_ids[i:i + 1],
                              clean_logits[i:i + 1].float().log_softmax(-1))
        out.append(float(metric(logits.float(), inputs)[0]))
    return torch.tensor(out, dtype=torch.float64)


# -- names and the spec ----------------------------------------------------------------------------------
def test_component_names_round_trip():
    cs = parse_components("L0H3, mlp1 ATTN2;L0H3")
    assert [c.name for c in cs] == ["L0H3", "MLP1", "ATTN2"]
    assert cs[0] == Component(0, "head", 3)
    assert parse_components(format_components(cs)) == cs


@pytest.mark.parametrize("bad", ["L0", "H3", "MLP", "L1H", "L-1H0", "head0", "L0H1x"])
def test_bad_component_names_are_named(bad):
    with pytest.raises(ValueError, match=f"bad component '{bad}'.*L<layer>H<head>, MLP<layer> or ATTN<layer>"):
        parse_components(f"L0H0,{bad}")


def test_components_out_of_range_name_the_component_and_range(gpt2_model, ioi_prompts):
    L, H = gpt2_model.n_layers, gpt2_model.n_heads
    with pytest.raises(ValueError, match=f"component L{L}H0: layer {L} out of range; this model has layers 0-{L - 1}"):
        faithfulness(gpt2_model, ioi_prompts, CircuitSpec(f"L0H0,L{L}H0"))
    with pytest.raises(ValueError, match=f"component L0H{H}: head {H} out of range; this model has heads 0-{H - 1}"):
        faithfulness(gpt2_model, ioi_prompts, CircuitSpec(f"L0H{H}"))
    with pytest.raises(ValueError, match=f"component MLP{L}: layer {L}"):
        faithfulness_curve(gpt2_model, ioi_prompts, ["L0H0", f"MLP{L}"])


def test_spec_checks_ablation_and_round_trips():
    with pytest.raises(ValueError, match="unknown ablation 'median'; choose one of mean, resample, zero"):
        CircuitSpec("L0H0", ablation="median")
    with pytest.raises(ValueError, match="seed must be a whole number"):
        CircuitSpec("L0H0", seed="x")
    spec = CircuitSpec("L0H1,MLP0", ablation="resample", seed=3)
    assert CircuitSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["components"] == "L0H1,MLP0"


# -- faithfulness ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_full_set_is_one_and_the_full_run_is_the_clean_run(tiny_models, prompt_sets, family, ablation):
    model, prompts = tiny_models[family], prompt_sets[family]
    r = faithfulness(model, prompts, CircuitSpec(all_components(model), ablation))
    assert r.faithfulness == 1.0
    assert r.m_circuit == r.m_full
    logits = model.bridge(prompts.clean_tokens)[:, -1]                 # TransformerLens' forward
    clean = get_metric("logit_diff")(logits.float(), MetricInputs(prompts.answer_ids, prompts.wrong_ids, None))
    torch.testing.assert_close(r.full, clean.double(), atol=1e-4, rtol=1e-4)
    # ATTN{l} is every head of layer l: the same circuit
    attn = ",".join(f"ATTN{l},MLP{l}" for l in range(model.n_layers))
    assert _node_ids(model, parse_components(attn)) == _node_ids(model, all_components(model))


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_empty_set_is_the_ablated_baseline(gpt2_model, prompt_sets, ablation):
    prompts = prompt_sets["gpt2"]
    r = faithfulness(gpt2_model, prompts, CircuitSpec((), ablation))
    assert r.m_circuit == r.m_empty
    assert r.faithfulness == 0.0
    torch.testing.assert_close(r.empty, _reference(gpt2_model, prompts, set(), ablation), atol=1e-4, rtol=1e-4)
    assert abs(r.m_empty - r.m_full) > 1e-3          # ablating everything does change the metric


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_head_ablation_matches_hand_written_hook_reference(tiny_models, prompt_sets, family, ablation):
    model, prompts = tiny_models[family], prompt_sets[family]
    circuit = {"L0H1", "L1H0", "L1H3", "MLP0"}
    r = faithfulness(model, prompts, CircuitSpec(",".join(sorted(circuit)), ablation, seed=1))
    ref = _reference(model, prompts, circuit, ablation, seed=1)
    torch.testing.assert_close(r.per_pair, ref, atol=1e-4, rtol=1e-4)
    assert 0 < abs(r.faithfulness - 1) and r.faithfulness == pytest.approx(
        (float(ref.mean()) - r.m_empty) / (r.m_full - r.m_empty), abs=1e-4)


def test_the_hook_path_matches_the_runner(gpt2_model, prompt_sets):
    """Models without the engine's runner go through TransformerLens hooks: same numbers."""
    prompts = prompt_sets["gpt2"]
    hooked = dataclasses.replace(gpt2_model, runner=None)
    for ablation in ABLATIONS:
        spec = CircuitSpec("L0H2,L1H1,MLP1", ablation)
        a, b = faithfulness(gpt2_model, prompts, spec), faithfulness(hooked, prompts, spec)
        torch.testing.assert_close(a.per_pair, b.per_pair, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a.empty, b.empty, atol=1e-4, rtol=1e-4)


def test_resample_reads_another_pair_and_is_seeded():
    src = _resample_sources(7, seed=5, device="cpu")
    assert (src != torch.arange(7)).all()
    assert torch.equal(src, _resample_sources(7, seed=5, device="cpu"))
    assert not all(torch.equal(src, _resample_sources(7, seed=s, device="cpu")) for s in range(6, 12))
    assert _resample_sources(1, seed=0, device="cpu").tolist() == [0]


def test_batching_does_not_change_the_numbers(gpt2_model, prompt_sets):
    prompts = prompt_sets["gpt2"]
    ranked = ["L1H2", "MLP0", "L0H0", "L1H0"]
    big = faithfulness_curve(gpt2_model, prompts, ranked)
    tiny = faithfulness_curve(gpt2_model, prompts, ranked, max_memory_mb=1e-6)     # one circuit per forward
    torch.testing.assert_close(big.per_pair, tiny.per_pair, atol=1e-5, rtol=1e-5)


# -- the curve ----------------------------------------------------------------------------------------------
def test_curve_endpoints_and_points_match_single_circuits(gpt2_model, prompt_sets):
    prompts = prompt_sets["gpt2"]
    ranked = list(reversed(all_components(gpt2_model)))
    curve = faithfulness_curve(gpt2_model, prompts, ranked, ablation="mean")
    f = curve.faithfulness
    assert curve.ks == tuple(range(len(ranked) + 1))
    assert f[0] == 0.0 and f[-1] == 1.0
    for k in (1, 3, 7):
        single = faithfulness(gpt2_model, prompts, CircuitSpec(ranked[:k], "mean"))
        assert f[k] == pytest.approx(single.faithfulness, abs=1e-5)
    df = curve.to_dataframe()
    assert list(df.columns[:6]) == ["k", "added", "circuit", "effect", "value", "faithfulness"]
    assert df.added.iloc[1] == ranked[0].name and df.circuit.iloc[2] == format_components(ranked[:2])
    again = CurveResult.from_json(curve.to_json())
    assert again.faithfulness == curve.faithfulness and again.components == curve.components


def test_curve_keep_and_ks(gpt2_model, prompt_sets):
    prompts = prompt_sets["gpt2"]
    mlps = [f"MLP{l}" for l in range(gpt2_model.n_layers)]
    curve = faithfulness_curve(gpt2_model, prompts, ["L0H1", "L1H2"], keep=mlps, ks=[0, 2])
    assert curve.ks == (0, 2)
    only_mlps = faithfulness(gpt2_model, prompts, CircuitSpec(mlps))
    assert curve.faithfulness[0] == pytest.approx(only_mlps.faithfulness, abs=1e-6)
    with pytest.raises(ValueError, match=r"k \[3\] out of range; choose k from 0 to 2"):
        faithfulness_curve(gpt2_model, prompts, ["L0H1", "L1H2"], ks=[3])
    with pytest.raises(ValueError, match="duplicates"):
        faithfulness_curve(gpt2_model, prompts, ["L0H1", "L0H1"])


# -- ranking from sweeps ------------------------------------------------------------------------------------
def test_rank_components_from_head_out_and_mlp_out(gpt2_model, prompt_sets):
    prompts = prompt_sets["gpt2"]
    heads = sweep(gpt2_model, prompts, PatchSpec(kind="head_out"))
    mlps = sweep(gpt2_model, prompts, PatchSpec(kind="mlp_out"))          # [layer, pos]
    eff = component_effects(heads)
    assert eff[Component(1, "head", 2)] == pytest.approx(float(heads.values[1, 2]) - heads.corrupt_value)
    m_sum, m_max = component_effects(mlps, "sum"), component_effects(mlps, "max")
    e = mlps.values[0] - mlps.corrupt_value
    assert m_sum[Component(0, "mlp")] == pytest.approx(float(e.sum()))
    assert m_max[Component(0, "mlp")] == pytest.approx(float(e[e.abs().argmax()]))
    ranked = rank_components(heads, mlps)
    assert len(ranked) == len(all_components(gpt2_model))
    mags = [abs(v) for _, v in ranked]
    assert mags == sorted(mags, reverse=True)
    assert top_components(heads, mlps, k=3) == tuple(c for c, _ in ranked[:3])
    noise = sweep(gpt2_model, prompts, PatchSpec(kind="head_out", direction="noise"))
    assert component_effects(noise)[Component(0, "head", 0)] == pytest.approx(float(noise.values[0, 0]) - noise.clean_value)
    with pytest.raises(ValueError, match="head_out, mlp_out, attn_out or feature result, not 'resid_pre'"):
        rank_components(sweep(gpt2_model, prompts, PatchSpec(kind="resid_pre", layers=(0,))))
    curve = faithfulness_curve(gpt2_model, prompts, ranked[:4])
    assert curve.effects == tuple(v for _, v in ranked[:4])


# -- the EAP edge graph --------------------------------------------------------------------------------------
def test_edge_graph_thresholds_and_lays_out(gpt2_model, prompt_sets):
    edges = edge_attribution(gpt2_model, prompt_sets["gpt2"])
    everything = edge_graph(edges, 0.0)
    assert len(everything.edges) == everything.n_edges_total == len(edges.to_dataframe())
    cut = float(everything.edges.abs_score.median())
    g = edge_graph(edges, cut)
    assert 0 < len(g.edges) < len(everything.edges)
    assert (g.edges.abs_score >= cut).all()
    assert set(g.edges.upstream) | set(g.edges.downstream) <= set(g.nodes.node)
    nodes = everything.nodes.set_index("node")
    H, L = gpt2_model.n_heads, gpt2_model.n_layers
    assert tuple(nodes.loc["L1H2", ["x", "y"]]) == (1.0, 2.0)
    assert tuple(nodes.loc["MLP0", ["x", "y"]]) == (0.5, float(H))
    assert tuple(nodes.loc["embed", ["x", "y"]]) == (-1.0, -1.0)
    assert tuple(nodes.loc["logits", ["x", "y"]]) == (float(L), float(H))
    assert set(everything.edges.via) == {"q", "k", "v", "mlp", "logits"}
    assert len(edge_graph(edges, 0.0, top=5).edges) == 5
    nothing = edge_graph(edges, 1e9)
    assert nothing.edges.empty and nothing.nodes.empty and nothing.n_edges_total == len(everything.edges)
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        edge_graph(edges, -1)
    with pytest.raises(ValueError, match="by must be 'abs' or 'normalized'"):
        edge_graph(edges, 0.1, by="rank")


def test_edge_graph_groups_kv_heads_on_grouped_query_models(tiny_models, prompt_sets):
    model = tiny_models["llama"]
    g = edge_graph(edge_attribution(model, prompt_sets["llama"]), 0.0)
    kv = g.nodes[g.nodes.kind == "kv"]
    assert len(kv) == model.n_layers * model.n_kv_heads
    assert set(g.edges[g.edges.downstream.str.contains("KV")].via) == {"k", "v"}


# -- the CLI ------------------------------------------------------------------------------------------------
def _pairs_csv(tmp_path):
    import csv
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clean", "corrupt", "answer", "wrong"])
        w.writerows(IOI)
    return str(path)


def test_cli_circuit_json_and_curve_csv(tiny_dirs, gpt2_model, tmp_path, capsys):
    import json

    from patching import cli
    out = tmp_path / "curve.csv"
    argv = ["circuit", "--model", str(tiny_dirs["gpt2"]), "--device", "cpu", "--pairs", _pairs_csv(tmp_path),
            "--curve-from", "head_out,mlp_out", "--top", "4", "--ablation", "zero", "--csv", str(out), "--json"]
    assert cli.main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["circuit"]["ablation"] == "zero" and doc["circuit"]["n_components"] == 4
    assert [row["k"] for row in doc["curve"]] == [0, 1, 2, 3, 4]
    assert doc["curve"][0]["faithfulness"] == 0.0
    assert doc["curve"][-1]["faithfulness"] == pytest.approx(doc["circuit"]["faithfulness"], abs=1e-5)
    import pandas as pd
    df = pd.read_csv(out)
    assert list(df.k) == [0, 1, 2, 3, 4] and df.ablation.eq("zero").all()
    assert cli.main(["circuit", "--model", str(tiny_dirs["gpt2"]), "--device", "cpu", "--pairs",
                     _pairs_csv(tmp_path), "--components", "L0H0,MLP1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("circuit: 2 components (L0H0,MLP1)\nfaithfulness ")


def test_cli_circuit_ranks_by_attribution_and_writes_edges(tiny_dirs, gpt2_model, tmp_path, capsys):
    import json

    import pandas as pd

    from patching import cli
    base = ["circuit", "--model", str(tiny_dirs["gpt2"]), "--device", "cpu", "--pairs", _pairs_csv(tmp_path)]
    assert cli.main([*base, "--curve-from", "head_out", "--rank-by", "attribution", "--top", "3",
                     "--keep", "MLP0,MLP1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["circuit"]["n_components"] == 5 and doc["curve"][0]["circuit"] == "MLP0,MLP1"
    out = tmp_path / "edges.csv"
    assert cli.main([*base, "--edges", "0.3", "--csv", str(out)]) == 0
    df = pd.read_csv(out)
    assert list(df.columns[:4]) == ["upstream", "downstream", "via", "score"] and len(df) >= 1
    assert df.abs_score.min() >= 0.3 * df.abs_score.max() - 1e-12
    assert cli.main([*base, "--edges", "1.5"]) == 2


@pytest.mark.parametrize("extra, message", [
    (["--components", "L0H9"], "component L0H9: head 9 out of range; this model has heads 0-3"),
    (["--components", "X1"], "bad component 'X1'"),
    ([], "give --components"),
    (["--curve-from", "resid_pre"], "--curve-from takes head_out, mlp_out, attn_out"),
    (["--components", "L0H0", "--ablation", "median"], "invalid choice: 'median'"),
])
def test_cli_circuit_bad_input_exits_2(tiny_dirs, gpt2_model, tmp_path, capsys, extra, message):
    from patching import cli
    argv = ["circuit", "--model", str(tiny_dirs["gpt2"]), "--device", "cpu", "--pairs", _pairs_csv(tmp_path), *extra]
    try:
        code = cli.main(argv)
    except SystemExit as exc:        # argparse's own errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
