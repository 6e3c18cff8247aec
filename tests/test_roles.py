"""Sets of mixed token length, aligned by named role positions (issue #20 item 1).

The contract (DESIGN.md, Semantics): a role's value is the mean over pairs of each pair's value
at that role's token index, exactly as if each length group were run alone. Checked here
against each length group swept alone, against TransformerLens' own patching.py run on each pair
alone, and against a plain hook written here.
"""
import pandas as pd
import pytest
import torch
from transformer_lens import patching as tlp

from metrics import MetricInputs, get_metric
from patching import PatchSpec, PromptPair, PromptSet, sweep
from patching.cli import main
from patching.core.prompts import read_pairs_csv
from patching.core.results import PatchResult
from patching.figures.results import grid
from patching.model import hooks

ROLES = ("IO", "S1", "S1+1", "S2", "END")
# (clean, corrupt, io, s): three token lengths on the tiny tokenizer
TEXTS = [
    ("When Mary and John went to the store, John gave a drink to",
     "When Mary and John went to the store, Mary gave a drink to", "Mary", "John"),
    ("When John and Mary went, Mary gave it to", "When John and Mary went, John gave it to", "John", "Mary"),
    ("When John and Mary went to the park, Mary gave a book to",
     "When John and Mary went to the park, John gave a book to", "John", "Mary"),
    ("Then, Alice and Bob had a long argument, and afterwards Bob said to",
     "Then, Alice and Bob had a long argument, and afterwards Alice said to", "Alice", "Bob"),
    ("When Mary and John went, John gave it to", "When Mary and John went, Mary gave it to", "Mary", "John"),
]


def roles_of(model, clean: str, io: str, s: str) -> dict[str, int]:
    """IO, S1, S1+1, S2, END found in the clean prompt's tokens (BOS at 0), written independently
    of patching.tasks."""
    toks = model.to_str_tokens([model.bos_token_id] + model.encode(clean))
    s_at = [i for i, t in enumerate(toks) if t == " " + s]
    return {"IO": toks.index(" " + io), "S1": s_at[0], "S1+1": s_at[0] + 1, "S2": s_at[-1], "END": len(toks) - 1}


@pytest.fixture(scope="module")
def mixed(gpt2_model):
    pairs = [PromptPair(c, k, " " + io, " " + s, roles_of(gpt2_model, c, io, s)) for c, k, io, s in TEXTS]
    ps = PromptSet.from_pairs(gpt2_model, pairs)
    assert len(set(ps.lengths)) == 3, ps.lengths          # the set really mixes lengths
    return ps


def _picked(result: PatchResult, at: list[list[int]]) -> torch.Tensor:
    """A one-length result over every position [layer, pos, *rest, pairs] read at each pair's
    role positions -> [layer, role, *rest, pairs] (written without the engine's gather)."""
    out = torch.empty((result.per_pair.shape[0], len(ROLES), *result.per_pair.shape[2:]), dtype=torch.float64)
    for j, pair_at in enumerate(at):
        for r, p in enumerate(pair_at):
            out[:, r, ..., j] = result.per_pair[:, result.coords["pos"].index(p), ..., j]
    return out


@pytest.mark.parametrize("kind,per_position,direction", [("resid_pre", False, "denoise"),
                                                         ("attn_out", False, "noise"),
                                                         ("head_out", True, "denoise")])
def test_role_value_is_each_length_group_run_alone(gpt2_model, mixed, kind, per_position, direction):
    spec = PatchSpec(kind=kind, per_position=per_position, direction=direction)
    ours = sweep(gpt2_model, mixed, spec)
    assert ours.roles == ROLES and ours.coords["pos"] == tuple(range(5))
    at = mixed.role_positions()
    weighted, per_pair = 0, torch.empty_like(ours.per_pair)
    for idx, group in mixed.by_length():
        alone = sweep(gpt2_model, group, spec)                 # every position of this length
        picked = _picked(alone, [at[i] for i in idx])
        per_pair[..., idx] = picked
        weighted = weighted + picked.mean(-1) * len(idx)       # the group's mean, weighted by its pairs
        assert torch.equal(ours.clean_baseline[idx], alone.clean_baseline)
    assert (ours.per_pair - per_pair).abs().max() < 1e-6
    assert (ours.values - weighted / mixed.n_pairs).abs().max() < 1e-6
    assert (ours.effect.abs() > 1e-3).any()                    # not vacuous


def _metric(prompts):
    ld = get_metric("logit_diff")
    return lambda logits: ld(logits[:, -1], MetricInputs(prompts.answer_ids, prompts.wrong_ids, None)).mean()


@pytest.mark.slow
def test_role_values_match_transformer_lens_on_each_pair_alone(gpt2_model, mixed):
    ours = sweep(gpt2_model, mixed, PatchSpec(kind="resid_pre"))
    per_pair = []
    for j, at in enumerate(mixed.role_positions()):
        one = mixed.subset([j])
        _, clean_cache = gpt2_model.bridge.run_with_cache(one.clean_tokens)
        ref = tlp.get_act_patch_resid_pre(gpt2_model.bridge, one.corrupt_tokens, clean_cache, _metric(one))
        per_pair.append(ref[:, at].double())                  # [layer, role]
    assert (ours.values - torch.stack(per_pair, -1).mean(-1)).abs().max() < 1e-4


@pytest.mark.slow
def test_head_values_match_a_plain_hook_on_each_pair_alone(gpt2_model, mixed):
    """head_out per position, noising, against z patched by a hand-written TransformerLens hook."""
    heads = (0, 2)
    ours = sweep(gpt2_model, mixed, PatchSpec(kind="head_out", per_position=True, direction="noise",
                                              heads=tuple((1, h) for h in heads)))
    want = torch.zeros(len(ROLES), len(heads), mixed.n_pairs, dtype=torch.float64)
    for j, at in enumerate(mixed.role_positions()):
        one = mixed.subset([j])
        _, corrupt_cache = gpt2_model.bridge.run_with_cache(one.corrupt_tokens)
        for r, pos in enumerate(at):
            for hi, h in enumerate(heads):
                def hook(z, hook, pos=pos, h=h):
                    z[:, pos, h] = corrupt_cache[hooks.z(1)][:, pos, h]
                    return z
                logits = gpt2_model.bridge.run_with_hooks(one.clean_tokens, fwd_hooks=[(hooks.z(1), hook)])
                want[r, hi, j] = _metric(one)(logits).item()
    assert (ours.per_pair[0] - want).abs().max() < 1e-4


def test_all_position_kind_joins_the_groups_in_pair_order(gpt2_model, mixed):
    ours = sweep(gpt2_model, mixed, PatchSpec(kind="head_out"))
    assert ours.roles is None and ours.axes == ("layer", "head")
    for idx, group in mixed.by_length():
        alone = sweep(gpt2_model, group, PatchSpec(kind="head_out"))
        assert (ours.per_pair[..., idx] - alone.per_pair).abs().max() < 1e-6
    assert ours.to_dataframe()["pos"].isna().all()


def test_csv_names_the_role_and_intervals_are_on_the_paired_effect(gpt2_model, mixed):
    r = sweep(gpt2_model, mixed, PatchSpec(kind="resid_pre"))
    df = r.to_dataframe()
    assert list(df.columns[:9]) == ["kind", "direction", "metric", "layer", "pos", "head", "token", "value", "normalized"]
    assert df["pos"].tolist()[:5] == list(ROLES) and (df["pos"] == df["token"]).all()
    effect = r.per_pair - r.corrupt_baseline                   # denoise: patched - corrupt, pair by pair
    want_se = effect.std(-1, unbiased=True) / mixed.n_pairs ** 0.5
    assert torch.allclose(torch.tensor(df["stderr"].values), want_se.reshape(-1), atol=1e-9)
    assert (df["ci_low"] <= df["effect"] + 1e-12).all() and (df["effect"] <= df["ci_high"] + 1e-12).all()
    back = pd.read_csv(pd.io.common.StringIO(r.to_csv()))
    assert back["pos"].tolist()[:5] == list(ROLES)
    again = PatchResult.from_json(r.to_json())
    assert again.roles == ROLES and torch.equal(again.per_pair, r.per_pair)


def test_heatmap_position_axis_shows_the_roles(gpt2_model, mixed):
    g = grid(sweep(gpt2_model, mixed, PatchSpec(kind="resid_pre")))
    assert [label.split(": ")[1].strip("'") for label in g.x_labels] == list(ROLES)


def test_one_length_set_with_roles_keeps_token_positions(gpt2_model):
    c, k, io, s = TEXTS[0]
    ps = PromptSet.from_pairs(gpt2_model, [PromptPair(c, k, " " + io, " " + s, roles_of(gpt2_model, c, io, s))])
    r = sweep(gpt2_model, ps, PatchSpec(kind="resid_pre"))
    assert r.roles is None and r.coords["pos"] == tuple(range(ps.n_pos))


# -- refusals ------------------------------------------------------------------------------------
def test_mixed_set_without_roles_is_refused_naming_lengths_and_how_to_add_roles(gpt2_model):
    with pytest.raises(ValueError) as exc:
        PromptSet.from_pairs(gpt2_model, [(c, k, " " + io, " " + s) for c, k, io, s in TEXTS])
    msg = str(exc.value)
    for want in ("15 tokens (pairs 0, 2), 12 tokens (pairs 1, 4), 17 tokens (pair 3)", "`positions` column", "roles="):
        assert want in msg, msg


@pytest.mark.parametrize("roles,message", [
    ([{"IO": 2, "END": 14}, {"IO": 2}], r"pair 1 names roles IO, pair 0 names IO END; missing END"),
    ([{"IO": 2}, {"IO": 12}], r"pair 1: role IO at token 12 is past the prompt's last token \(12 tokens, 0-11"),
    ([{"IO": 2}], r"roles has 1 entries for 2 pairs"),
    (["IO:2", "IO=3"], r"role position 'IO=3' is not ROLE:INDEX"),
    (["IO:2", "1X:3"], r"role name '1X' is not accepted"),
])
def test_bad_roles_are_refused_by_name(gpt2_model, roles, message):
    pairs = [(c, k, " " + io, " " + s) for c, k, io, s in (TEXTS[0], TEXTS[1])]
    with pytest.raises(ValueError, match=message):
        PromptSet.from_pairs(gpt2_model, pairs, roles=roles)


def test_token_positions_and_cells_are_refused_on_a_mixed_set(gpt2_model, mixed):
    with pytest.raises(ValueError, match=r"positions \[1\] are token indices.*aligned by its roles \(IO S1"):
        sweep(gpt2_model, mixed, PatchSpec(kind="resid_pre", positions=(1,)))
    with pytest.raises(ValueError, match="cells are token positions of one length"):
        sweep(gpt2_model, mixed, PatchSpec(kind="resid_pre"), cells=[(0, 0)])


def test_methods_of_one_length_refuse_a_mixed_set_naming_the_lengths(gpt2_model, mixed):
    from patching.methods.path import PathSpec, run_path
    with pytest.raises(ValueError, match=r"needs pairs of one token length; this set has 15 tokens \(pairs 0, 2\)"):
        run_path(gpt2_model, mixed, PathSpec(receivers=("q:1.0",)))


# -- CSV in, CSV out -----------------------------------------------------------------------------
def _pairs_csv(model, tmp_path, with_positions: bool):
    rows = [{"clean": c, "corrupt": k, "answer": " " + io, "wrong": " " + s,
             **({"positions": " ".join(f"{n}:{i}" for n, i in roles_of(model, c, io, s).items())}
                if with_positions else {})} for c, k, io, s in TEXTS]
    path = tmp_path / ("roles.csv" if with_positions else "plain.csv")
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_pairs_csv_positions_column_is_read(gpt2_model, tmp_path):
    pairs = read_pairs_csv(_pairs_csv(gpt2_model, tmp_path, True))
    assert pairs[0].positions == tuple(roles_of(gpt2_model, *TEXTS[0][:1], *TEXTS[0][2:]).items())


def test_cli_sweeps_a_mixed_csv_by_role(gpt2_model, tiny_dirs, tmp_path, capsys):
    out = tmp_path / "out.csv"
    assert main(["sweep", "--model", str(tiny_dirs["gpt2"]), "--pairs", str(_pairs_csv(gpt2_model, tmp_path, True)),
                 "--kind", "resid_pre", "--out", str(out), "--quiet"]) == 0
    df = pd.read_csv(out)
    assert df["pos"].tolist()[:5] == list(ROLES) and (df["token"] == df["pos"]).all()
    assert (df["n_pairs"] == 5).all()


def test_cli_refuses_a_mixed_csv_without_positions(gpt2_model, tiny_dirs, tmp_path, capsys):
    assert main(["sweep", "--model", str(tiny_dirs["gpt2"]), "--pairs", str(_pairs_csv(gpt2_model, tmp_path, False)),
                 "--kind", "resid_pre", "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert "15 tokens (pairs 0, 2)" in err and "positions" in err and not (tmp_path / "o.csv").exists()


# -- the task presets ----------------------------------------------------------------------------
def test_aligned_ioi_pairs_of_the_shipped_model_run_by_role():
    from patching import load_model
    from patching.tasks.presets import aligned_pairs
    model = load_model("default")
    ps = PromptSet.from_pairs(model, aligned_pairs(model, "ioi", 12))
    assert ps.role_names == ROLES and len(set(ps.lengths)) > 1
    for pair, at in zip(ps.pairs, ps.role_positions()):
        toks = model.to_str_tokens([model.bos_token_id] + model.encode(pair.clean))
        assert toks[at[0]] == pair.answer and toks[at[1]] == toks[at[3]] == pair.wrong   # IO, S1 = S2
        assert at[4] == len(toks) - 1
    r = sweep(model, ps, PatchSpec(kind="resid_pre"))
    assert torch.isfinite(r.values).all() and r.roles == ROLES


def test_cost_estimate_counts_every_length_group(gpt2_model, mixed):
    from patching.methods.cost import estimate_cost
    from patching.methods.sweep import length_groups
    spec = PatchSpec(kind="resid_pre")
    est = estimate_cost(gpt2_model, mixed, spec)
    groups = [estimate_cost(gpt2_model, g, s) for _, g, s in length_groups(mixed, spec)]
    assert est.cells == gpt2_model.n_layers * len(ROLES) and est.n_pairs == mixed.n_pairs
    assert est.patched_rows == sum(g.patched_rows for g in groups) > 0
    with pytest.raises(ValueError, match="positions \\[2\\] are token indices"):
        estimate_cost(gpt2_model, mixed, PatchSpec(kind="resid_pre", positions=(2,)))


def test_dashboard_attention_of_a_role_cell_reads_the_pairs_own_index(gpt2_model, mixed, registry, tiny_dirs):
    """A clicked (layer, role, head) cell of a mixed run shows the pair's attention patched at its
    own token index of that role."""
    from types import SimpleNamespace

    from dataclasses import replace

    from dashboard.views import attention_for_cell
    from patching.methods.attention import downstream_attention
    from patching.runs.store import RunStore
    spec = PatchSpec(kind="head_out", per_position=True, model=str(tiny_dirs["gpt2"]))
    result = sweep(gpt2_model, mixed, spec)
    run = SimpleNamespace(result=result, pairs=[tuple(p) for p in RunStore._pairs(mixed.pairs)])
    view = attention_for_cell(registry, run, {"layer": 0, "pos": 3, "head": 1}, pair=3)   # S2 of pair 3
    s2 = mixed.role_positions()[3][3]
    # head_out: the view shows the receiver head whose pattern the patch changed most
    down = downstream_attention(gpt2_model, mixed.subset([3]), replace(spec, positions=None),
                                {"layer": 0, "pos": s2, "head": 1}, pair=0)
    want = down.head(*view.receiver)
    assert view.receiver == tuple(down.ranked()[0][:2])
    assert f"at S2 (position {s2})" in view.title and "pair 3" in view.title
    assert torch.allclose(torch.as_tensor(view.patched), want.patched.float())
    assert len(view.str_tokens) == mixed.lengths[3]            # that pair's tokens, no padding


def test_run_store_and_run_file_keep_each_pairs_roles(gpt2_model, mixed, tmp_path):
    from patching.runs.bundle import bundle_bytes, read_bundle
    from patching.runs.store import RunStore
    result = sweep(gpt2_model, mixed, PatchSpec(kind="resid_pre"))
    store = RunStore(tmp_path)
    run = store.get(store.save(result, mixed.pairs))
    back = read_bundle(bundle_bytes([result], mixed.pairs))
    for pairs in (run.pairs, back.pairs):
        again = PromptSet.from_pairs(gpt2_model, [PromptPair(*p) for p in pairs])
        assert again.roles == mixed.roles and again.lengths == mixed.lengths
    assert back.result.roles == ROLES and run.result.roles == ROLES


def test_dashboard_presets_and_uploads_carry_roles_to_the_run_and_token_view():
    import base64

    from dashboard import forms
    from patching import load_model
    model = load_model("default")
    preset = forms.preset_pairs("ioi", 3, model=model)
    assert all(p["positions"].split()[0].startswith("IO:") for p in preset)
    form = forms.Form.from_page("default", "", "", "", "", ["bos"], preset, kind="resid_pre")
    _, prompts = forms.parse_form(model, form)
    assert prompts.role_names == ROLES
    assert forms.token_view(model, form).roles == prompts.roles[0]
    from patching.tasks.presets import aligned_pairs
    mixed_csv = "clean,corrupt,answer,wrong,positions\n" + "".join(
        f'"{p.clean}","{p.corrupt}",{p.answer},{p.wrong},{" ".join(f"{n}:{i}" for n, i in p.positions)}\n'
        for p in aligned_pairs(model, "ioi", 8))
    uploaded = forms.parse_upload("data:text/csv;base64," + base64.b64encode(mixed_csv.encode()).decode(), "m.csv")
    spec, prompts = forms.parse_form(model, forms.Form.from_page("default", "", "", "", "", ["bos"], uploaded,
                                                                 kind="resid_pre"))
    assert prompts.is_mixed and prompts.role_names == ROLES
    with pytest.raises(ValueError, match="positions \\[3\\] are token indices"):
        forms.parse_form(model, forms.Form.from_page("default", "", "", "", "", ["bos"], uploaded,
                                                     kind="resid_pre", positions="3"))
