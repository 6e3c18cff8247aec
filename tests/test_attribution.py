"""Attribution patching: gradients against a hooked-bridge reference (Nanda's recipe), agreement
with exact patching per kind (Pearson r, top-10 overlap), EAP-IG completeness, EAP edges that
add up to node attributions, CSV and bad input."""

import io

import pandas as pd
import pytest
import torch

from metrics import MetricInputs, get_metric
from patching import PatchSpec, PromptSet, sweep
from patching.model import hooks
from patching.methods.attribution import (EdgeScores, agreement, attribution_csv, attribution_kinds, edge_attribution,
                                  run_attribution)
from patching.core.results import CSV_COLUMNS
from tests.conftest import IOI

FAMILIES = ("gpt2", "llama", "neox")


@pytest.fixture(scope="module")
def prompt_sets(tiny_models):
    return {f: PromptSet.from_pairs(m, IOI) for f, m in tiny_models.items()}


HOOK_OF = {"resid_pre": hooks.resid_pre, "resid_post": hooks.resid_post, "attn_out": hooks.attn_out,
           "mlp_out": hooks.mlp_out, "head_out": hooks.z, "head_q": hooks.q, "head_k": hooks.k,
           "head_v": hooks.v, "head_pattern": hooks.pattern, "neuron": hooks.mlp_post}


def bridge_attribution(model, ps, kind, direction):
    """(donor - base) . d logit_diff / d activation with TransformerLens hooks, per pair, on the
    kind's full axes with pairs last (head kinds per position)."""
    bridge = model.bridge
    base_tokens, donor_tokens = ((ps.corrupt_tokens, ps.clean_tokens) if direction == "denoise"
                                 else (ps.clean_tokens, ps.corrupt_tokens))
    _, donor = bridge.run_with_cache(donor_tokens)
    names = [HOOK_OF[kind](l) for l in range(model.n_layers)]
    store = {}

    def keep_as(name):
        def keep(act, hook):
            act.retain_grad()
            store[name] = act
            return act
        return keep
    logits = bridge.run_with_hooks(base_tokens, fwd_hooks=[(n, keep_as(n)) for n in names])
    metric = get_metric("logit_diff")(logits[:, -1], MetricInputs(ps.answer_ids, ps.wrong_ids, None))
    metric.sum().backward()
    out = []
    for n in names:
        v = ((donor[n] - store[n].detach()) * store[n].grad)
        if kind == "head_pattern":
            v = v.sum(-1).transpose(1, 2)           # [b, dest, head]
        elif kind == "neuron":
            v = v.sum(1)                            # [b, neuron]
        else:
            v = v.sum(-1)                           # [b, pos] or [b, pos, head]
        out.append(v.movedim(0, -1))
    return torch.stack(out).double(), metric.detach().double()


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_gradients_match_hooked_bridge_reference(tiny_models, prompt_sets, family, direction):
    model, ps = tiny_models[family], prompt_sets[family]
    kinds = [k for k in HOOK_OF]
    results = run_attribution(model, ps, kinds=kinds, direction=direction, per_position=True)
    for r in results:
        ref, base_metric = bridge_attribution(model, ps, r.spec.kind, direction)
        ours = r.per_pair - base_metric
        scale = max(1.0, float(ref.abs().max()))
        assert (ours - ref).abs().max() / scale < 1e-4, r.spec.kind


def _check_agreement(model, ps, direction, method, per_position, min_r, min_overlap, skip=()):
    rows = []
    for r in run_attribution(model, ps, direction=direction, method=method, per_position=per_position, steps=16):
        if r.spec.kind in skip:
            continue
        a = agreement(r, sweep(model, ps, r.spec))
        rows.append(a)
        assert a["pearson"] >= min_r and a["topk_overlap"] >= min_overlap, a
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("per_position", [False, True])
def test_plain_attribution_agrees_with_exact_patching(tiny_models, prompt_sets, family, per_position):
    """Measured on the tiny random models (r, top-10 overlap, denoise): >= 0.88 / 0.9 for every
    kind; the lowest are NeoX mlp_out (0.88) and Llama resid_pre (0.96)."""
    _check_agreement(tiny_models[family], prompt_sets[family], "denoise", "plain", per_position, 0.85, 0.8)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_plain_attribution_agrees_when_noising(tiny_models, prompt_sets, family):
    """Noising swaps a token embedding at layer 0, far outside the linear regime on Llama:
    resid_pre's r drops to ~0.2 there (the IG variant recovers it, see below)."""
    _check_agreement(tiny_models[family], prompt_sets[family], "noise", "plain", False, 0.85, 0.8,
                     skip=("resid_pre",) if family == "llama" else ())


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_ig_attribution_agrees_with_exact_patching(tiny_models, prompt_sets, family, direction):
    _check_agreement(tiny_models[family], prompt_sets[family], direction, "ig", False, 0.75, 0.7)
    r = run_attribution(tiny_models[family], prompt_sets[family], kinds=["resid_pre"], direction=direction,
                        method="ig")[0]
    assert agreement(r, sweep(tiny_models[family], prompt_sets[family], r.spec))["pearson"] > 0.98


@pytest.mark.parametrize("family", FAMILIES)
def test_ig_is_complete_at_the_embeddings(tiny_models, prompt_sets, family):
    """Integrated gradients along the embedding path add up to metric(donor) - metric(base)."""
    model, ps = tiny_models[family], prompt_sets[family]
    r = run_attribution(model, ps, kinds=["resid_pre"], method="ig", steps=64)[0]
    total = (r.per_pair[0] - r.corrupt_baseline).sum(0)           # layer 0, every position
    gap = r.clean_baseline - r.corrupt_baseline
    assert (total - gap).abs().max() < 2e-3 * max(1.0, float(gap.abs().max()))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["plain", "ig"])
def test_edges_add_up_to_node_attributions(tiny_models, prompt_sets, family, method):
    """An upstream node's edges to every reader sum to its own attribution (the residual stream
    is a sum, so d metric / d output = sum over readers of d metric / d their input)."""
    model, ps = tiny_models[family], prompt_sets[family]
    edges = edge_attribution(model, ps, method=method, steps=4)
    nodes = {r.spec.kind: r for r in run_attribution(model, ps, kinds=["resid_pre", "head_out", "mlp_out"],
                                                     method=method, steps=4)}
    total = torch.nan_to_num(edges.per_pair).sum(1)                  # [U, pairs]
    up = list(edges.upstream)
    base = nodes["head_out"].corrupt_baseline
    checks = [(up.index("embed"), nodes["resid_pre"].per_pair[0].sum(0) - base * (ps.n_pos - 1))]
    for layer in range(model.n_layers):
        checks.append((up.index(f"mlp:{layer}"), nodes["mlp_out"].per_pair[layer].sum(0) - base * (ps.n_pos - 1)))
        for h in range(model.n_heads):
            checks.append((up.index(f"head:{layer}.{h}"), nodes["head_out"].per_pair[layer, h]))
    for i, node_value in checks:
        assert (total[i] - (node_value - base)).abs().max() < 1e-4, up[i]


def test_edge_scores_shape_labels_and_csv(tiny_models, prompt_sets):
    model, ps = tiny_models["llama"], prompt_sets["llama"]
    edges = edge_attribution(model, ps)
    assert isinstance(edges, EdgeScores)
    n_up = 1 + model.n_layers * (model.n_heads + 1)
    n_down = model.n_layers * (model.n_heads + 2 * model.n_kv_heads + 1) + 1
    assert edges.per_pair.shape == (n_up, n_down, ps.n_pairs)
    up, down = list(edges.upstream), list(edges.downstream)
    assert torch.isnan(edges.scores[up.index("head:1.0"), down.index("q:1.0")])      # same layer: no edge
    assert not torch.isnan(edges.scores[up.index("head:0.0"), down.index("k:1.1")])  # key/value head 1
    assert not torch.isnan(edges.scores[up.index("head:1.0"), down.index("mlp:1")])
    assert "k:1.2" not in down
    df = edges.to_dataframe()
    assert {"upstream", "downstream", "score", "abs_score", "normalized", "method"} <= set(df.columns)
    assert df["score"].notna().all() and (df["method"] == "eap").all()
    top = edges.top(10)
    assert len(top) == 10 and top["abs_score"].is_monotonic_decreasing
    assert len(pd.read_csv(io.StringIO(edges.to_csv()))) == len(df)
    assert edge_attribution(model, ps, method="ig", steps=2).to_dataframe()["method"].iloc[0] == "eap_ig"
    import json
    back = EdgeScores.from_json(json.loads(json.dumps(edges.to_json())))
    assert torch.equal(torch.isnan(back.per_pair), torch.isnan(edges.per_pair))
    assert torch.allclose(torch.nan_to_num(back.per_pair), torch.nan_to_num(edges.per_pair))
    assert back.to_csv() == edges.to_csv()


def test_parallel_model_has_no_head_to_same_layer_mlp_edge(tiny_models, prompt_sets):
    edges = edge_attribution(tiny_models["neox"], prompt_sets["neox"])
    up, down = list(edges.upstream), list(edges.downstream)
    assert torch.isnan(edges.scores[up.index("head:0.1"), down.index("mlp:0")])
    assert not torch.isnan(edges.scores[up.index("head:0.1"), down.index("mlp:1")])


def test_all_kinds_csv(tiny_models, prompt_sets):
    model, ps = tiny_models["gpt2"], prompt_sets["gpt2"]
    results = run_attribution(model, ps)
    assert [r.spec.kind for r in results] == list(attribution_kinds(model))
    text = attribution_csv(results)
    df = pd.read_csv(io.StringIO(text))
    assert tuple(df.columns[:len(CSV_COLUMNS)]) == CSV_COLUMNS
    assert set(df["kind"]) == set(attribution_kinds(model)) and (df["method"] == "attribution").all()
    head = df[df["kind"] == "head_out"]
    assert len(head) == model.n_layers * model.n_heads and head["pos"].isna().all()
    neuron = df[df["kind"] == "neuron"]
    assert len(neuron) == model.n_layers * model.d_mlp and neuron["neuron"].notna().all()
    assert "resid_mid" not in attribution_kinds(tiny_models["neox"])
    ig = run_attribution(model, ps, kinds=["attn_out"], method="ig", steps=3)[0].to_dataframe()
    assert (ig["method"] == "attribution_ig").all() and (ig["steps"] == 3).all()


def test_normalized_and_baselines_match_exact_sweep(tiny_models, prompt_sets):
    model, ps = tiny_models["gpt2"], prompt_sets["gpt2"]
    for direction in ("denoise", "noise"):
        r = run_attribution(model, ps, kinds=["head_out"], direction=direction)[0]
        e = sweep(model, ps, r.spec)
        assert torch.allclose(r.clean_baseline, e.clean_baseline, atol=1e-5)
        assert torch.allclose(r.corrupt_baseline, e.corrupt_baseline, atol=1e-5)


def test_neuron_positions_and_filters(tiny_models, prompt_sets):
    model, ps = tiny_models["gpt2"], prompt_sets["gpt2"]
    r = run_attribution(model, ps, kinds=["neuron"], positions=(14,))[0]
    e = sweep(model, ps, PatchSpec(kind="neuron", positions=(14,)))
    assert r.spec.positions == e.spec.positions == (14,) and agreement(r, e)["pearson"] > 0.9


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="exact"), "method must be one of plain, ig, not 'exact'"),
    (dict(method="ig", steps=0), "steps must be a whole number from 1 to 1024, not 0"),
    (dict(direction="sideways"), "direction must be 'denoise' or 'noise'"),
    (dict(kinds=["head_x"]), "unknown kind 'head_x'"),
    (dict(metric="nope"), "unknown metric 'nope'"),
    (dict(kinds=["neuron"], positions=(99,)), "positions [99] out of range"),
])
def test_bad_input_is_named(tiny_models, prompt_sets, kwargs, message):
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        run_attribution(tiny_models["gpt2"], prompt_sets["gpt2"], **kwargs)


def test_resid_mid_refused_on_parallel_models(tiny_models, prompt_sets):
    with pytest.raises(ValueError, match="resid_mid"):
        run_attribution(tiny_models["neox"], prompt_sets["neox"], kinds=["resid_mid"])


SHIPPED = __import__("pathlib").Path(__file__).resolve().parents[1] / "assets" / "models" / "patchboard-tiny"


@pytest.mark.slow
@pytest.mark.skipif(not (SHIPPED / "model.safetensors").exists(), reason="the shipped default model is not built yet")
def test_agreement_on_the_shipped_model():
    """Attribution vs exact patching on the default model, held-out IOI pairs (the numbers the
    closing note reports; printed with -s)."""
    from patching import load_model
    from patching.methods.attribution import measure_agreement
    from patching.tasks.families import make_pairs
    model = load_model("default")
    by_len = {}
    for p in make_pairs("ioi", 60, split="eval", seed=0):
        n = len(model.encode(p.clean))
        if len(model.encode(p.corrupt)) == n:
            by_len.setdefault(n, []).append((p.clean, p.corrupt, p.answer, p.wrong))
    ps = PromptSet.from_pairs(model, max(by_len.values(), key=len)[:8])
    df = measure_agreement(model, ps, methods=("plain", "ig"), directions=("denoise",))
    print("\n" + df.to_string())
    plain = df[df["method"] == "attribution"].set_index("kind")
    for kind in ("attn_out", "head_out", "head_v", "mlp_out"):
        assert plain.loc[kind, "pearson"] > 0.6, plain.loc[kind]
    assert plain["pearson"].median() > 0.7


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["plain", "ig"])
def test_eap_edges_agree_with_exact_direct_path_patching(tiny_models, prompt_sets, family, method):
    """EAP's score of u -> v estimates direct-mode path patching of sender u into receiver v
    (everything else frozen). Measured on the tiny models: r >= 0.98, top-10 overlap >= 0.8."""
    from patching.methods.path import PathSpec, run_path
    model, ps = tiny_models[family], prompt_sets[family]
    edges = edge_attribution(model, ps, method=method, steps=16)
    est, exact = [], []
    for ui, u in enumerate(edges.upstream):
        if u == "embed":
            continue
        res = run_path(model, ps, PathSpec(senders=(u,), receivers=edges.downstream, sweep="receivers", mode="direct"))
        for j, label in enumerate(res.receiver_labels):
            if not torch.isnan(res.values[j]):
                est.append(float(edges.scores[ui, edges.downstream.index(label)]))
                exact.append(float(res.values[j]) - res.corrupt_value)
    a, b = torch.tensor(est), torch.tensor(exact)
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.95
    assert len(set(a.abs().topk(10).indices.tolist()) & set(b.abs().topk(10).indices.tolist())) >= 7


def test_ig_in_chunks_equals_one_batch(tiny_models, prompt_sets):
    from patching.methods.attribution import _attribute
    model, ps = tiny_models["llama"], prompt_sets["llama"]
    one = _attribute(model, ps, "logit_diff", "denoise", "ig", 5, edges=True, max_rows=1000)
    chunked = _attribute(model, ps, "logit_diff", "denoise", "ig", 5, edges=True, max_rows=4)   # 2 steps a chunk
    for key in ("z", "resid_pre", "qkv_in"):
        for a, b in zip(one.grads[key], chunked.grads[key]):
            assert (a - b).abs().max() < 1e-5
    assert (one.grads["final_in"] - chunked.grads["final_in"]).abs().max() < 1e-5
