"""Path patching against references: TransformerLens' get_act_patch_direct_path (direct mode),
a naive two-step reference written here with plain hooked bridge forwards (both modes), and
plain head_out patching (a last-layer sender into the logits)."""

import pytest
import torch
from transformer_lens import patching as tlp

from metrics import MetricInputs, get_metric
from patching import PatchSpec, PromptSet, sweep
from patching.model import hooks
from patching.methods.path import Node, PathResult, PathSpec, all_receivers, parse_node, run_path
from tests.conftest import IOI
from tests.tiny_models import save_tiny_model

TOL = 1e-4
FAMILIES = ("gpt2", "llama", "neox")


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory):
    """The session's 2-layer models plus 3-layer GPT-2 and Llama (paths through a middle layer)."""
    from patching import load_model
    out = dict(tiny_models)
    root = tmp_path_factory.mktemp("path-models")
    for f in ("gpt2", "llama"):
        out[f + "3"] = load_model(str(save_tiny_model(f, root / f, n_layers=3)))
    return out


@pytest.fixture(scope="module")
def prompt_sets(models):
    return {f: PromptSet.from_pairs(m, IOI) for f, m in models.items()}


def metric_of(ps, pair=slice(None)):
    m = get_metric("logit_diff")
    return lambda logits: m(logits[:, -1], MetricInputs(ps.answer_ids[pair], ps.wrong_ids[pair], None))


def naive_path(model, ps, sender: Node, receivers: list, mode: str, direction: str = "denoise",
               receiver_positions=None, step2_hooks=()):
    """Two plain hooked forwards: (1) sender patched, every head frozen (and every MLP in direct
    mode), receivers' inputs recorded; (2) the base run with the receivers' inputs replaced."""
    bridge = model.bridge
    clean_tokens, corrupt_tokens = ps.clean_tokens, ps.corrupt_tokens
    _, clean_c = bridge.run_with_cache(clean_tokens)
    _, corrupt_c = bridge.run_with_cache(corrupt_tokens)
    base_tokens, base_c, donor_c = ((corrupt_tokens, corrupt_c, clean_c) if direction == "denoise"
                                    else (clean_tokens, clean_c, corrupt_c))
    sel = slice(None) if sender.pos is None else sender.pos
    rpos = slice(None) if receiver_positions is None else list(receiver_positions)
    seen = {}

    def freeze_z(act, hook, layer):
        new = base_c[hooks.z(layer)].clone()
        if sender.kind == "head" and sender.layer == layer:
            new[:, sel, sender.head] = donor_c[hooks.z(layer)][:, sel, sender.head]
        return new

    def mlp_out(act, hook, layer):
        seen[("mlp", layer)] = act.clone()
        new = base_c[hooks.mlp_out(layer)].clone() if mode == "direct" else act.clone()
        if sender.kind == "mlp" and sender.layer == layer:
            new[:, sel] = donor_c[hooks.mlp_out(layer)][:, sel]
        return new

    def resid_pre(act, hook, layer):
        act = act.clone()
        act[:, sel] = donor_c[hooks.resid_pre(layer)][:, sel]
        return act

    def record(act, hook, key):
        seen[key] = act.clone()

    step1 = []
    for layer in range(model.n_layers):
        step1.append((hooks.z(layer), lambda a, hook, l=layer: freeze_z(a, hook, l)))
        step1.append((hooks.mlp_out(layer), lambda a, hook, l=layer: mlp_out(a, hook, l)))
        for which, name in (("q", hooks.q), ("k", hooks.k), ("v", hooks.v)):
            step1.append((name(layer), lambda a, hook, key=(which, layer): record(a, hook, key)))
    if sender.kind == "resid":
        step1.append((hooks.resid_pre(sender.layer), lambda a, hook: resid_pre(a, hook, sender.layer)))
    logits1 = bridge.run_with_hooks(base_tokens, fwd_hooks=step1)
    if any(r.kind == "logits" for r in receivers):
        assert len(receivers) == 1
        return logits1

    def put(act, hook, r):
        act = act.clone()
        if r.kind == "mlp":
            act[:, rpos] = seen[("mlp", r.layer)][:, rpos]
        else:
            act[:, rpos, r.head] = seen[(r.kind, r.layer)][:, rpos, r.head]
        return act

    name = {"q": hooks.q, "k": hooks.k, "v": hooks.v, "mlp": hooks.mlp_out}
    step2 = [(name[r.kind](r.layer), lambda a, hook, r=r: put(a, hook, r)) for r in receivers]
    return bridge.run_with_hooks(base_tokens, fwd_hooks=step2 + list(step2_hooks))


CASES = [
    # (sender, receivers)
    ("head:0.1", ("q:1.2",)),
    ("head:0.1", ("q:1.0", "q:1.2")),
    ("head:0.3@8", ("k:1.1", "v:1.0")),
    ("head:0.2", ("v:1.1",)),
    ("mlp:0", ("q:1.3", "k:1.0")),
    ("resid:0@5", ("mlp:1",)),
    ("resid:1@5", ("q:1.1",)),
    ("head:0.0", ("mlp:1", "q:1.1")),
    ("head:0.2", ("logits",)),
    ("head:1.2", ("logits",)),
    ("mlp:0", ("logits",)),
    ("head:0.1", ("mlp:0",)),            # same layer: a path on sequential blocks, none on NeoX
]
CASES3 = [
    ("head:0.1", ("q:2.2",)),            # through layer 1's MLP in heads_frozen mode
    ("head:0.1", ("q:1.0", "k:2.1")),    # receivers in two layers
    ("mlp:0", ("mlp:1", "v:2.0")),
    ("head:1.3@9", ("logits",)),
]


def check_against_naive(model, ps, sender, receivers, mode, direction="denoise", receiver_positions=None):
    spec = PathSpec(senders=(sender,), receivers=receivers, mode=mode, direction=direction,
                    receiver_positions=receiver_positions)
    ours = run_path(model, ps, spec).per_pair[0]
    ref = metric_of(ps)(naive_path(model, ps, parse_node(sender, "sender"),
                                   [parse_node(r, "receiver") for r in receivers], mode, direction,
                                   receiver_positions))
    if torch.isnan(ours).all():     # no path: the reference must be the unpatched run
        base = ps.corrupt_tokens if direction == "denoise" else ps.clean_tokens
        assert torch.allclose(ref, metric_of(ps)(model.bridge(base)), atol=TOL)
        return 0.0
    err = (ours - ref.double()).abs().max().item()
    assert err < TOL, (sender, receivers, mode, ours, ref)
    return err


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["heads_frozen", "direct"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}->{'+'.join(c[1])}")
def test_matches_naive_hooked_reference(models, prompt_sets, family, mode, case):
    check_against_naive(models[family], prompt_sets[family], *case, mode)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt23", "llama3"])
@pytest.mark.parametrize("mode", ["heads_frozen", "direct"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("case", CASES3, ids=lambda c: f"{c[0]}->{'+'.join(c[1])}")
def test_matches_naive_reference_three_layers(models, prompt_sets, family, mode, direction, case):
    check_against_naive(models[family], prompt_sets[family], *case, mode, direction)


@pytest.mark.parametrize("family", FAMILIES)
def test_receiver_positions_match_naive(models, prompt_sets, family):
    for mode in ("heads_frozen", "direct"):
        check_against_naive(models[family], prompt_sets[family], "head:0.1", ("q:1.2", "k:1.0"), mode,
                            receiver_positions=(9, 14))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "gpt23", "neox", "llama"])
@pytest.mark.parametrize("component", ["q", "k", "v"])
def test_direct_mode_matches_transformer_lens_direct_path(models, prompt_sets, family, component):
    model, ps = models[family], prompt_sets[family]
    _, clean_c = model.bridge.run_with_cache(ps.clean_tokens)
    _, corrupt_c = model.bridge.run_with_cache(ps.corrupt_tokens)
    metric = lambda logits: metric_of(ps)(logits).mean()     # noqa: E731
    worst = 0.0
    for src_layer in range(model.n_layers - 1):
        for src_head in range(model.n_heads):
            try:
                ref = tlp.get_act_patch_direct_path(model.bridge, ps.corrupt_tokens, clean_c, corrupt_c,
                                                    metric, src_layer, src_head, component, verbose=False)
            except (ValueError, NotImplementedError) as exc:
                pytest.skip(f"TransformerLens refuses this model: {exc}")
            receivers = tuple(f"{component}:{l}.{h}" for l in range(src_layer + 1, model.n_layers)
                              for h in range(model.n_heads))
            res = run_path(model, ps, PathSpec(senders=(f"head:{src_layer}.{src_head}",), receivers=receivers,
                                               sweep="receivers", mode="direct"))
            ours = res.values.view(-1, model.n_heads)
            worst = max(worst, (ours - ref[src_layer + 1:].double()).abs().max().item())
    assert worst < TOL


def test_gqa_key_value_receivers_work(models, prompt_sets):
    """TransformerLens refuses k/v direct paths on grouped-query models; we compute them (checked
    against the naive reference above) over key/value heads."""
    model, ps = models["llama"], prompt_sets["llama"]
    res = run_path(model, ps, PathSpec(senders=("head:0.3",), receivers=None, sweep="receivers", mode="direct"))
    labels = [res.receiver_labels[i] for i in range(len(res.receiver_labels))]
    assert "k:1.1" in labels and "k:1.2" not in labels
    assert not torch.isnan(res.values[labels.index("k:1.1")])


@pytest.mark.parametrize("family", FAMILIES)
def test_last_layer_sender_into_logits_equals_head_out_patching(models, prompt_sets, family):
    model, ps = models[family], prompt_sets[family]
    last = model.n_layers - 1
    exact = sweep(model, ps, PatchSpec(kind="head_out", layers=(last,)))
    path = run_path(model, ps, PathSpec(receivers=("logits",), mode="heads_frozen"))
    assert (path.per_pair[last] - exact.per_pair[0]).abs().max() < TOL
    exact_pos = sweep(model, ps, PatchSpec(kind="head_out", per_position=True, layers=(last,)))
    path_pos = run_path(model, ps, PathSpec(receivers=("logits",), per_position=True))
    assert (path_pos.per_pair[last] - exact_pos.per_pair[0]).abs().max() < TOL
    if model.parallel_attn_mlp:   # the MLP does not read the head: direct equals it too
        direct = run_path(model, ps, PathSpec(receivers=("logits",), mode="direct"))
        assert (direct.per_pair[last] - exact.per_pair[0]).abs().max() < TOL


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["heads_frozen", "direct"])
def test_every_head_sweep_matches_naive_per_cell(models, prompt_sets, mode):
    model, ps = models["gpt23"], prompt_sets["gpt23"]
    receivers = ("q:2.0", "v:2.3")
    res = run_path(model, ps, PathSpec(receivers=receivers, mode=mode), max_memory_mb=0.05)   # many chunks
    assert res.axes == ("layer", "head") and res.values.shape == (3, model.n_heads)
    assert torch.isnan(res.values[2]).all()          # layer 2 heads write after the receivers read
    for layer in range(2):
        for head in range(model.n_heads):
            ref = metric_of(ps)(naive_path(model, ps, Node("head", layer, head),
                                           [parse_node(r, "receiver") for r in receivers], mode))
            assert (res.per_pair[layer, head] - ref.double()).abs().max() < TOL


def test_per_position_sweep_matches_naive_per_cell(models, prompt_sets):
    model, ps = models["llama"], prompt_sets["llama"]
    res = run_path(model, ps, PathSpec(receivers=("q:1.1", "k:1.0"), per_position=True, positions=(3, 8, 14)))
    assert res.axes == ("layer", "pos", "head") and res.values.shape == (2, 3, model.n_heads)
    for pi, pos in enumerate((3, 8, 14)):
        for head in range(model.n_heads):
            ref = metric_of(ps)(naive_path(model, ps, Node("head", 0, head, pos),
                                           [parse_node("q:1.1", "receiver"), parse_node("k:1.0", "receiver")],
                                           "heads_frozen"))
            assert (res.per_pair[0, pi, head] - ref.double()).abs().max() < TOL


def test_csv_rows_carry_sender_receiver_and_mode(models, prompt_sets):
    model, ps = models["gpt2"], prompt_sets["gpt2"]
    res = run_path(model, ps, PathSpec(receivers=("q:1.0", "q:1.1"), mode="direct"))
    df = res.to_dataframe()
    assert list(df.columns[:9]) == ["kind", "direction", "metric", "layer", "pos", "head", "token", "value",
                                    "normalized"]
    cols = list(df.columns)
    assert cols.index("sender") > cols.index("normalized") and {"receiver", "mode"} <= set(cols)
    assert (df["kind"] == "path").all() and (df["mode"] == "direct").all()
    assert len(df) == model.n_heads                  # layer-1 senders have no path: left out
    assert df.loc[0, "sender"] == "head:0.0" and df.loc[0, "receiver"] == "q:1.0+q:1.1"
    text = res.to_csv()
    assert text.splitlines()[0].startswith("kind,direction,metric,layer,pos,head,token,value,normalized")
    one = run_path(model, ps, PathSpec(senders=("mlp:0",), sweep="receivers"))
    df1 = one.to_dataframe()
    assert set(df1["sender"]) == {"mlp:0"} and "logits" in set(df1["receiver"])
    assert df1["head"].isna().all() and (df1["layer"] == 0).all()
    row = df1[df1["receiver"] == "q:1.2"].iloc[0]
    assert row["receiver_layer"] == 1 and row["receiver_head"] == 2


def test_result_json_round_trip(models, prompt_sets):
    model, ps = models["gpt2"], prompt_sets["gpt2"]
    res = run_path(model, ps, PathSpec(senders=("head:0.1", "resid:0@4"), receivers=("q:1.0",)))
    back = PathResult.from_json(res.to_json())
    assert back.spec == res.spec and torch.equal(back.per_pair, res.per_pair)
    assert back.to_csv() == res.to_csv()


def test_spec_round_trip_and_normalisation():
    spec = PathSpec(receivers="q:3.0, q:3.1", senders=None, mode="direct", receiver_positions=[5, 2])
    assert spec.receivers == ("q:3.0", "q:3.1") and spec.receiver_positions == (2, 5)
    assert PathSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["kind"] == "path" and spec.kind == "path"
    assert PathSpec(senders=("1.2@3",), sweep="receivers", receivers=None).senders == ("head:1.2@3",)


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="frozen"), "mode must be one of heads_frozen, direct, not 'frozen'"),
    (dict(sweep="edges"), "sweep must be one of"),
    (dict(direction="both"), "direction must be 'denoise' or 'noise'"),
    (dict(receivers=("q:1",)), "bad receiver 'q:1': q needs LAYER.HEAD"),
    (dict(receivers=("attn:1.0",)), "kind 'attn' is not a receiver kind"),
    (dict(receivers=("q:1.0@3",)), "receivers take no @POS"),
    (dict(receivers=("logits", "q:1.0")), "use it alone"),
    (dict(senders=("mlp:0.1",)), "mlp takes a layer only"),
    (dict(senders=("x",)), "bad sender 'x'"),
    (dict(sweep="receivers"), "a receivers sweep follows one sender"),
    (dict(senders=("head:0.1",), per_position=True), "per_position applies to the every-head sweep"),
    (dict(positions=(1,)), "positions (sender positions) need per_position=True"),
    (dict(receivers=()), "receivers is empty"),
])
def test_bad_spec_is_named(kwargs, message):
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        PathSpec(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(receivers=("q:5.0",)), "layer 5 out of range"),
    (dict(receivers=("k:1.3",)), "head 3 out of range; this model has key/value heads 0-1"),
    (dict(senders=("head:0.1@40",), receivers=("q:1.0",)), "position 40 out of range"),
    (dict(receivers=("q:1.0",), receiver_positions=(99,)), "receiver_positions [99] out of range"),
])
def test_bad_nodes_for_the_model_are_named(models, prompt_sets, kwargs, message):
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        run_path(models["llama"], prompt_sets["llama"], PathSpec(**kwargs))


def test_progress_is_reported(models, prompt_sets):
    seen = []
    run_path(models["gpt2"], prompt_sets["gpt2"], PathSpec(receivers=("logits",)),
             on_progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (8, 8)


def test_all_receivers_downstream_of_a_sender(models):
    model = models["gpt2"]
    labels = [r.label for r in all_receivers(model, Node("head", 0, 1))]
    assert "q:0.0" not in labels and "mlp:0" in labels and labels[-1] == "logits"
    assert len(labels) == 1 + 3 * model.n_heads + 2          # mlp:0, q/k/v of layer 1, mlp:1, logits
