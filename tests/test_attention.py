"""Counterfactual attention: clean / corrupt / patched patterns of one head, against the
TransformerLens bridge's hook_pattern in plain hooked forwards."""

import io

import pandas as pd
import pytest
import torch

from patching import PatchSpec, PromptSet
from patching.model import hooks
from patching.methods.attention import (AttentionDiff, counterfactual_attention, downstream_attention,
                                      reshapes_own_pattern)
from tests.conftest import IOI

FAMILIES = ("gpt2", "llama", "neox")


@pytest.fixture(scope="module")
def prompt_sets(tiny_models):
    return {f: PromptSet.from_pairs(m, IOI) for f, m in tiny_models.items()}


def bridge_pattern(model, tokens, layer, head, fwd_hooks=()):
    """hook_pattern of (layer, head) in a bridge forward with the given hooks, [dest, src]."""
    seen = {}

    def grab(act, hook):
        seen["p"] = act.detach().clone()
    model.bridge.run_with_hooks(tokens, fwd_hooks=[*fwd_hooks, (hooks.pattern(layer), grab)])
    return seen["p"][0, head]


def replace_hook(donor_act, pos=None, head=None):
    """A hook putting donor values in: at pos (or all positions), at head (or all heads)."""
    def hook(act, hook):
        act = act.clone()
        sel = (slice(None), slice(None) if pos is None else pos)
        if head is not None:
            if act.dim() == 4 and "pattern" in hook.name:        # [b, head, dest, src]
                act[:, head, sel[1]] = donor_act[:, head, sel[1]]
                return act
            sel = sel + (head,)
        act[sel] = donor_act[sel]
        return act
    return hook


def caches(model, ps, pair=0):
    c = ps.clean_tokens[pair:pair + 1]
    k = ps.corrupt_tokens[pair:pair + 1]
    return c, k, model.bridge.run_with_cache(c)[1], model.bridge.run_with_cache(k)[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_clean_and_corrupt_patterns_match_bridge_hook_pattern(tiny_models, prompt_sets, family):
    model, ps = tiny_models[family], prompt_sets[family]
    for pair in (0, 1):
        diff = counterfactual_attention(model, ps, 1, 2, pair=pair)
        c, k, cc, kc = caches(model, ps, pair)
        assert (diff.clean - cc[hooks.pattern(1)][0, 2]).abs().max() < 1e-5
        assert (diff.corrupt - kc[hooks.pattern(1)][0, 2]).abs().max() < 1e-5
        assert torch.equal(diff.patched, diff.corrupt)          # no spec: the corrupt run
        assert diff.clean_minus_corrupt.abs().max() > 0
        assert diff.str_tokens == tuple(model.to_str_tokens(c[0].tolist()))


CASES = [
    # (spec kwargs, index, bridge hook name, hook position, hook head)
    (dict(kind="resid_pre"), {"layer": 0, "pos": 8}, hooks.resid_pre(0), 8, None),
    (dict(kind="resid_pre"), {"layer": 1, "pos": 8}, hooks.resid_pre(1), 8, None),
    (dict(kind="attn_out"), {"layer": 0, "pos": 5}, hooks.attn_out(0), 5, None),
    (dict(kind="mlp_out"), {"layer": 0, "pos": 5}, hooks.mlp_out(0), 5, None),
    (dict(kind="head_out", per_position=True), {"layer": 0, "pos": 8, "head": 1}, hooks.z(0), 8, 1),
    (dict(kind="head_out"), {"layer": 0, "head": 3}, hooks.z(0), None, 3),
    (dict(kind="head_q", per_position=True), {"layer": 1, "pos": 9, "head": 2}, hooks.q(1), 9, 2),
    (dict(kind="head_k"), {"layer": 1, "head": 1}, hooks.k(1), None, 1),
    (dict(kind="head_pattern", per_position=True), {"layer": 1, "pos": 11, "head": 2}, hooks.pattern(1), 11, 2),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0]["kind"] + str(c[1]))
def test_patched_pattern_matches_bridge_hooked_forward(tiny_models, prompt_sets, family, direction, case):
    spec_kw, index, hook_name, pos, head = case
    model, ps = tiny_models[family], prompt_sets[family]
    if family == "neox" and spec_kw["kind"] == "resid_mid":
        pytest.skip("no resid_mid on parallel models")
    if spec_kw["kind"] == "head_k" and model.n_kv_heads != model.n_heads:
        index = {"layer": 1, "head": 1}          # key/value head 1 serves query heads 2 and 3
    spec = PatchSpec(direction=direction, **spec_kw)
    diff = counterfactual_attention(model, ps, 1, 2, spec=spec, index=index)
    c, k, cc, kc = caches(model, ps)
    base_tokens, donor_cache = (k, cc) if direction == "denoise" else (c, kc)
    ref = bridge_pattern(model, base_tokens, 1, 2,
                         [(hook_name, replace_hook(donor_cache[hook_name], pos, head))])
    assert (diff.patched - ref).abs().max() < 1e-5
    assert diff.direction == direction and spec_kw["kind"] in diff.patch_label


def test_patch_that_cannot_reach_the_pattern_leaves_the_base_run(tiny_models, prompt_sets):
    model, ps = tiny_models["gpt2"], prompt_sets["gpt2"]
    for spec, index in [(PatchSpec(kind="resid_pre"), {"layer": 1, "pos": 3}),     # a later layer
                        (PatchSpec(kind="head_v"), {"layer": 0, "head": 0})]:
        assert counterfactual_attention(model, ps, 0, 1, spec=spec, index=index).patched_minus_corrupt.abs().max() == 0
    diff = counterfactual_attention(model, ps, 1, 0, spec=PatchSpec(kind="head_q"), index={"layer": 1, "head": 3})
    assert torch.equal(diff.patched, diff.corrupt) and "does not reach" in diff.patch_label


def test_neuron_patch_at_chosen_positions(tiny_models, prompt_sets):
    model, ps = tiny_models["gpt2"], prompt_sets["gpt2"]
    spec = PatchSpec(kind="neuron", positions=(6, 8))
    diff = counterfactual_attention(model, ps, 1, 0, spec=spec, index={"layer": 0, "neuron": 7})
    c, k, cc, kc = caches(model, ps)

    def hook(act, hook):
        act = act.clone()
        act[:, [6, 8], 7] = cc[hooks.mlp_post(0)][:, [6, 8], 7]
        return act
    ref = bridge_pattern(model, k, 1, 0, [(hooks.mlp_post(0), hook)])
    assert (diff.patched - ref).abs().max() < 1e-5


def test_dataframe_and_csv(tiny_models, prompt_sets):
    model, ps = tiny_models["gpt2"], prompt_sets["gpt2"]
    diff = counterfactual_attention(model, ps, 1, 2, spec=PatchSpec(kind="resid_pre"),
                                    index={"layer": 0, "pos": 8})
    df = diff.to_dataframe()
    n = ps.n_pos
    assert len(df) == n * (n + 1) // 2 and (df["src"] <= df["dest"]).all()
    assert list(df.columns[:11]) == ["layer", "head", "dest", "src", "dest_token", "src_token", "clean",
                                     "corrupt", "patched", "clean_minus_corrupt", "patched_minus_corrupt"]
    row = df[(df.dest == 9) & (df.src == 3)].iloc[0]
    assert row.clean == pytest.approx(float(diff.clean[9, 3]))
    assert row.patched_minus_corrupt == pytest.approx(float(diff.patched[9, 3] - diff.corrupt[9, 3]), abs=1e-7)
    assert row.dest_token == diff.str_tokens[9]
    back = pd.read_csv(io.StringIO(diff.to_csv()))
    assert len(back) == len(df)


def test_csv_neutralises_formula_tokens():
    t = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    diff = AttentionDiff(0, 0, ("=cmd()", "+1"), t, t, t, patch_label="@x")
    text = diff.to_csv()
    assert "'=cmd()" in text and "'+1" in text and "'@x" in text
    assert ",=cmd()" not in text


@pytest.mark.parametrize("kwargs, message", [
    (dict(layer=9, head=0), "layer 9 out of range"),
    (dict(layer=0, head=7), "head 7 out of range"),
    (dict(layer=0, head=0, pair=5), "pair 5 out of range"),
    (dict(layer=0, head=0, index={"layer": 0}), "index given without spec"),
    (dict(layer=1, head=0, spec=PatchSpec(kind="head_out")), "needs an index"),
    (dict(layer=1, head=0, spec=PatchSpec(kind="head_out"), index={"layer": 0}), "missing head"),
    (dict(layer=1, head=0, spec=PatchSpec(kind="resid_pre"), index={"layer": 0, "pos": 1, "head": 0}),
     "unexpected head"),
    (dict(layer=1, head=0, spec=PatchSpec(kind="resid_pre"), index={"layer": 0, "pos": 99}),
     "pos 99 out of range"),
])
def test_bad_input_is_named(tiny_models, prompt_sets, kwargs, message):
    with pytest.raises(ValueError, match=message):
        counterfactual_attention(tiny_models["gpt2"], prompt_sets["gpt2"], **kwargs)


PATH_CASES = [
    # (family, PathSpec kwargs, index, (layer, head) watched, sender, receivers)
    ("gpt2", dict(receivers=("q:1.2",)), {"layer": 0, "head": 1}, (1, 2), "head:0.1", ("q:1.2",)),
    ("llama", dict(receivers=("k:1.1",), mode="direct"), {"layer": 0, "head": 3}, (1, 2), "head:0.3", ("k:1.1",)),
    ("neox", dict(receivers=("q:1.0", "k:1.1"), per_position=True), {"layer": 0, "pos": 10, "head": 2}, (1, 0),
     "head:0.2@10", ("q:1.0", "k:1.1")),
    ("gpt2", dict(senders=("mlp:0", "head:0.1"), receivers=("q:1.3",)), {"sender": 0}, (1, 3), "mlp:0", ("q:1.3",)),
    ("llama", dict(senders=("head:0.0",), sweep="receivers"), {"receiver": 5}, (1, 1), "head:0.0", None),
]


@pytest.mark.parametrize("case", PATH_CASES, ids=lambda c: f"{c[0]}-{c[4]}")
def test_path_patched_pattern_matches_naive_step_two(tiny_models, prompt_sets, case):
    from patching.methods.path import PathSpec, all_receivers, parse_node
    from tests.test_path import naive_path
    family, kw, index, (layer, head), sender, receivers = case
    model, ps = tiny_models[family], prompt_sets[family]
    spec = PathSpec(**kw)
    diff = counterfactual_attention(model, ps, layer, head, spec=spec, index=index)
    if receivers is None:
        nodes = [all_receivers(model, parse_node(sender, "sender"))[index["receiver"]]]
    else:
        nodes = [parse_node(r, "receiver") for r in receivers]
    seen = {}

    def grab(act, hook):
        seen["p"] = act.detach().clone()
    naive_path(model, ps, parse_node(sender, "sender"), nodes, spec.mode,
               step2_hooks=[(hooks.pattern(layer), grab)])
    assert (diff.patched - seen["p"][0, head]).abs().max() < 1e-5
    assert "path" in diff.patch_label and diff.patched_minus_corrupt.abs().max() > 0


def test_path_pattern_before_the_receivers_is_unchanged(tiny_models, prompt_sets):
    from patching.methods.path import PathSpec
    model, ps = tiny_models["gpt2"], prompt_sets["gpt2"]
    diff = counterfactual_attention(model, ps, 0, 1, spec=PathSpec(receivers=("q:1.0",)), index={"layer": 0, "head": 2})
    assert torch.equal(diff.patched, diff.corrupt) and "does not reach" in diff.patch_label
    with pytest.raises(ValueError, match="needs exactly layer, head"):
        counterfactual_attention(model, ps, 1, 0, spec=PathSpec(receivers=("q:1.0",)), index={"sender": 0})


def test_the_corrupt_panel_and_csv_carry_the_corrupt_prompts_tokens(tiny_models, prompt_sets):
    """Issue 17 item 3: the corrupt panel (and its CSV) showed the clean prompt's tokens."""
    model, ps = tiny_models["gpt2"], prompt_sets["gpt2"]
    diff = counterfactual_attention(model, ps, 1, 2, spec=PatchSpec(kind="resid_pre"), index={"layer": 0, "pos": 8})
    (pos,) = [p for p in ps.differing_positions()][:1]
    clean_tok = model.to_str_tokens(ps.clean_tokens[0].tolist())[pos]
    corrupt_tok = model.to_str_tokens(ps.corrupt_tokens[0].tolist())[pos]
    assert clean_tok != corrupt_tok and diff.corrupt_str_tokens[pos] == corrupt_tok
    assert diff.patched_str_tokens == diff.corrupt_str_tokens            # denoise patches the corrupt run
    df = diff.to_dataframe()
    row = df[(df.dest == pos) & (df.src == pos)].iloc[0]
    assert row.dest_token == clean_tok and row.corrupt_dest_token == corrupt_tok
    noise = counterfactual_attention(model, ps, 1, 2, spec=PatchSpec(kind="resid_pre", direction="noise"),
                                     index={"layer": 0, "pos": 8})
    assert noise.patched_str_tokens == noise.str_tokens                  # noise patches the clean run


# -- every head under one patch (the receivers of a sender) --------------------------------------
def bridge_patterns(model, tokens, fwd_hooks=()):
    """hook_pattern of every layer in one bridge forward with the given hooks, [layer, head, dest, src]."""
    seen = {}

    def grab(act, hook):
        seen[hook.name] = act.detach().clone()
    names = [hooks.pattern(l) for l in range(model.n_layers)]
    model.bridge.run_with_hooks(tokens, fwd_hooks=[*fwd_hooks, *((n, grab) for n in names)])
    return torch.stack([seen[n][0] for n in names])


DOWNSTREAM = [
    (dict(kind="head_out"), {"layer": 0, "head": 1}, hooks.z(0), None, 1),
    (dict(kind="head_out", per_position=True), {"layer": 0, "pos": 10, "head": 3}, hooks.z(0), 10, 3),
    (dict(kind="head_out", per_position=True), {"layer": 0, "pos": 12, "head": 0}, hooks.z(0), 12, 0),
    (dict(kind="head_v"), {"layer": 0, "head": 1}, hooks.v(0), None, 1),
    (dict(kind="resid_pre"), {"layer": 1, "pos": 10}, hooks.resid_pre(1), 10, None),
    (dict(kind="head_q"), {"layer": 0, "head": 2}, hooks.q(0), None, 2),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("case", DOWNSTREAM, ids=lambda c: c[0]["kind"] + str(c[1]))
def test_downstream_attention_matches_naive_hooked_forward(tiny_models, prompt_sets, family, direction, case):
    """Every head's pattern under one patch == the bridge's hook_pattern with the patch hooked in."""
    spec_kw, index, hook_name, pos, head = case
    model, ps = tiny_models[family], prompt_sets[family]
    if spec_kw["kind"] == "head_v" and model.n_kv_heads != model.n_heads:
        head = index["head"]                       # key/value head 1 on the grouped model
    spec = PatchSpec(direction=direction, **spec_kw)
    for pair in (0, 1):
        d = downstream_attention(model, ps, spec, index, pair=pair)
        c, k, cc, kc = caches(model, ps, pair)
        base_tokens, donor_cache = (k, cc) if direction == "denoise" else (c, kc)
        ref = bridge_patterns(model, base_tokens, [(hook_name, replace_hook(donor_cache[hook_name], pos, head))])
        base = bridge_patterns(model, base_tokens)
        assert (d.patched - ref).abs().max() < 1e-5
        assert (d.base - base).abs().max() < 1e-5
        naive_change = (ref - base).abs().amax(dim=(-2, -1))
        assert (d.change - naive_change).abs().max() < 1e-5
        assert d.most_changed() is not None and naive_change.max() > 1e-5
        layer, h = d.most_changed()
        assert naive_change[layer, h] == pytest.approx(float(naive_change.max()), abs=1e-6)


def test_patch_where_the_prompts_agree_moves_no_receiver(tiny_models, prompt_sets):
    """IOI pairs differ at position 10 only: clean and corrupt z agree at position 8, so patching
    it changes nothing — no receiver is offered (float noise of the recomputed rows is not a change)."""
    model, ps = tiny_models["gpt2"], prompt_sets["gpt2"]
    d = downstream_attention(model, ps, PatchSpec(kind="head_out", per_position=True),
                             {"layer": 0, "pos": 8, "head": 3})
    assert d.ranked() == [] and d.most_changed() is None and float(d.change.max()) < 1e-6
    assert "leaves this head's pattern unchanged" in d.head(1, 0).patch_label


def test_head_out_sender_changes_receivers_not_itself(tiny_models, prompt_sets):
    model, ps = tiny_models["gpt2"], prompt_sets["gpt2"]
    d = downstream_attention(model, ps, PatchSpec(kind="head_out"), {"layer": 0, "head": 1})
    assert float(d.change[0].abs().max()) == 0          # layer 0: no head's pattern can move
    assert float(d.change[1].max()) > 0                 # layer 1 reads the patched head
    assert d.ranked()[0][0] == 1 and d.most_changed() == d.ranked()[0][:2]
    one = d.head(*d.most_changed())
    ref = counterfactual_attention(model, ps, *d.most_changed(), spec=PatchSpec(kind="head_out"),
                                   index={"layer": 0, "head": 1})
    assert torch.allclose(one.patched, ref.patched, atol=1e-6) and torch.equal(one.corrupt, ref.corrupt)
    assert "leaves this head's pattern unchanged" in d.head(0, 1).patch_label
    assert reshapes_own_pattern("head_k") and not reshapes_own_pattern("head_v")


@pytest.mark.parametrize("kwargs, message", [
    (dict(spec=PatchSpec(kind="head_out"), index={"layer": 5, "head": 0}), "layer 5 out of range"),
    (dict(spec=PatchSpec(kind="head_out"), index={"layer": 0}), "missing head"),
    (dict(spec=PatchSpec(kind="head_out"), index={"layer": 0, "head": 1}, pair=9), "pair 9 out of range"),
])
def test_downstream_bad_input_is_named(tiny_models, prompt_sets, kwargs, message):
    with pytest.raises(ValueError, match=message):
        downstream_attention(tiny_models["gpt2"], prompt_sets["gpt2"], **kwargs)
