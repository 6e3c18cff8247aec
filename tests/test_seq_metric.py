"""seq_logprob_diff (multi-token answers) against a plain `transformers` computation.

The reference runs each continuation as its own sequence (prompt + answer tokens but the last,
prompt + wrong tokens but the last) through AutoModelForCausalLM, sums the teacher-forced token
log-probabilities, and patches with plain forward hooks at the prompt's positions only; the
engine runs both continuations as two branches of one sequence (patching.model.branches).
"""
import pytest
import torch
from transformers import AutoModelForCausalLM

from metrics import get_metric
from patching import PatchSpec, PromptSet, sweep
from patching.core.prompts import NO_TOKEN

TOL = 1e-4
# answers of different token lengths (1 to 4 tokens on the tiny tokenizer) and one single-token pair
PAIRS = [("When Mary and John went to the store, John gave a drink to",
          "When Mary and John went to the store, Mary gave a drink to", " Maryanne Smith", " Johnny"),
         ("When John and Mary went to the park, Mary gave a book to",
          "When John and Mary went to the park, John gave a book to", " John", " Mary Ann")]
BLOCKS = {"gpt2": "transformer.h", "llama": "model.layers", "neox": "gpt_neox.layers"}
O_PROJ = {"gpt2": "attn.c_proj", "llama": "self_attn.o_proj", "neox": "attention.dense"}


@pytest.fixture(scope="module")
def hf_models(tiny_dirs):
    return {f: AutoModelForCausalLM.from_pretrained(d, use_safetensors=True).eval() for f, d in tiny_dirs.items()}


def _ids(model, text):
    return model.encode(text)


def _seq_logprob(hf, prompt_ids, cont_ids, hooks=()):
    """sum_i log p(cont_i | prompt, cont_<i) with the given (module, pre-hook) pairs installed."""
    handles = [m.register_forward_pre_hook(h, with_kwargs=True) for m, h in hooks]
    try:
        with torch.no_grad():
            tokens = torch.tensor([prompt_ids + cont_ids[:-1]])
            logprobs = hf(tokens).logits[0].float().log_softmax(-1)
    finally:
        for handle in handles:
            handle.remove()
    start = len(prompt_ids) - 1
    return sum(float(logprobs[start + i, t]) for i, t in enumerate(cont_ids))


def _reference(model, hf, pair, base, hooks=()):
    """seq_logprob_diff of one pair on its `base` ('clean' / 'corrupt') prompt."""
    prompt = [model.bos_token_id] + _ids(model, getattr(pair, base))
    return (_seq_logprob(hf, prompt, _ids(model, pair.answer), hooks)
            - _seq_logprob(hf, prompt, _ids(model, pair.wrong), hooks))


def _module(hf, path):
    for name in path.split("."):
        hf = hf[int(name)] if name.isdigit() else getattr(hf, name)
    return hf


def _captured_input(hf, module, tokens):
    """The first positional input of `module` in a run of tokens [1, T]."""
    seen = {}

    def grab(mod, args, kwargs):
        seen["x"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
    handle = module.register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        hf(tokens)
    handle.remove()
    return seen["x"]


def _replacing(n_pos, donor, cols=slice(None), positions=None):
    """A pre-hook replacing the first input's prompt positions (all, or `positions`) and columns."""
    def hook(mod, args, kwargs):
        x = (args[0] if args else kwargs["hidden_states"]).clone()
        where = range(n_pos) if positions is None else positions
        for p in where:
            x[:, p, cols] = donor[:, p, cols]
        if args:
            return (x, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": x}
    return hook


@pytest.fixture(scope="module")
def multi(tiny_models):
    return {f: PromptSet.from_pairs(m, PAIRS, multi_token=True) for f, m in tiny_models.items()}


def test_the_pairs_mix_continuation_lengths(tiny_models, multi):
    m = tiny_models["gpt2"]
    lengths = [(len(_ids(m, p.answer)), len(_ids(m, p.wrong))) for p in multi["gpt2"].pairs]
    assert lengths[0][0] >= 3 and lengths[1][1] >= 2 and lengths[1][0] == 1, lengths
    assert int(multi["gpt2"].answer_ids[0]) == NO_TOKEN and int(multi["gpt2"].answer_ids[1]) != NO_TOKEN


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
def test_baselines_match_transformers(tiny_models, hf_models, multi, family):
    result = sweep(tiny_models[family], multi[family], PatchSpec(kind="resid_pre", layers=(1,), positions=(0,),
                                                                 metric="seq_logprob_diff"))
    for n, pair in enumerate(PAIRS):
        pair = multi[family].pairs[n]
        assert result.clean_baseline[n].item() == pytest.approx(_reference(tiny_models[family], hf_models[family], pair, "clean"), abs=TOL)
        assert result.corrupt_baseline[n].item() == pytest.approx(_reference(tiny_models[family], hf_models[family], pair, "corrupt"), abs=TOL)


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_patched_resid_pre_matches_a_forward_hook(tiny_models, hf_models, multi, family, direction):
    model, hf, prompts = tiny_models[family], hf_models[family], multi[family]
    layer, pos = 1, prompts.differing_positions()[0]
    result = sweep(model, prompts, PatchSpec(kind="resid_pre", layers=(layer,), positions=(pos,),
                                             metric="seq_logprob_diff", direction=direction))
    base, donor = ("corrupt", "clean") if direction == "denoise" else ("clean", "corrupt")
    block = _module(hf, f"{BLOCKS[family]}.{layer}")
    for n, pair in enumerate(prompts.pairs):
        donor_x = _captured_input(hf, block, torch.tensor([[model.bos_token_id] + _ids(model, getattr(pair, donor))]))
        want = _reference(model, hf, pair, base, [(block, _replacing(prompts.n_pos, donor_x, positions=[pos]))])
        assert result.per_pair[0, 0, n].item() == pytest.approx(want, abs=TOL)
        assert abs(want - getattr(result, f"{base}_baseline")[n].item()) > 1e-3     # the patch does something


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
def test_head_out_at_every_position_patches_the_prompt_only(tiny_models, hf_models, multi, family):
    """An all-position head patch reaches the prompt's positions; the continuation is computed after it."""
    model, hf, prompts = tiny_models[family], hf_models[family], multi[family]
    layer, head, d_head = 0, 1, model.cfg.d_model // model.n_heads
    result = sweep(model, prompts, PatchSpec(kind="head_out", layers=(layer,), heads=((layer, head),),
                                             metric="seq_logprob_diff"))
    o_proj = _module(hf, f"{BLOCKS[family]}.{layer}.{O_PROJ[family]}")
    cols = slice(head * d_head, (head + 1) * d_head)
    for n, pair in enumerate(prompts.pairs):
        donor_z = _captured_input(hf, o_proj, torch.tensor([[model.bos_token_id] + _ids(model, pair.clean)]))
        want = _reference(model, hf, pair, "corrupt", [(o_proj, _replacing(prompts.n_pos, donor_z, cols))])
        assert result.per_pair[0, 0, n].item() == pytest.approx(want, abs=TOL)


def test_head_k_uses_the_branch_mask(tiny_models, multi):
    """head_k recomputes attention itself (kinds.py): with the branches' mask it matches the same
    patch measured by running each continuation alone, i.e. patched q/k never see the other branch."""
    model, prompts = tiny_models["llama"], multi["llama"]
    spec = PatchSpec(kind="head_k", per_position=True, layers=(1,), metric="seq_logprob_diff")
    together = sweep(model, prompts, spec)
    for n in range(prompts.n_pairs):
        alone = sweep(model, prompts.subset([n]), spec)
        assert torch.allclose(together.per_pair[..., n], alone.per_pair[..., 0], atol=TOL, equal_nan=True)


def test_single_token_answers_equal_logit_diff(gpt2_model, ioi_prompts):
    spec = PatchSpec(kind="head_out", per_position=True)
    seq = sweep(gpt2_model, ioi_prompts, spec, metric="seq_logprob_diff")
    ld = sweep(gpt2_model, ioi_prompts, spec, metric="logit_diff")
    assert torch.allclose(seq.per_pair, ld.per_pair, atol=1e-4)
    assert torch.allclose(seq.clean_baseline, ld.clean_baseline, atol=1e-4)


def test_other_metrics_refuse_multi_token_answers_naming_seq_logprob_diff(gpt2_model, multi):
    with pytest.raises(ValueError, match=r"pair 0: answer ' Maryanne Smith' is several tokens; metric "
                                         r"'logit_diff' reads one token: use seq_logprob_diff"):
        sweep(gpt2_model, multi["gpt2"], PatchSpec(kind="resid_pre"))
    with pytest.raises(ValueError, match=r"answer ' Maryanne Smith' is \d+ tokens .*not a single token.*"
                                         r"need the metric seq_logprob_diff"):
        PromptSet.from_pairs(gpt2_model, PAIRS)


def test_methods_reading_the_last_position_refuse_multi_token_answers(gpt2_model, multi):
    from patching import run_attribution
    with pytest.raises(ValueError, match="exact sweeps .* compute them"):
        run_attribution(gpt2_model, multi["gpt2"], kinds=["resid_pre"], metric="seq_logprob_diff")


def test_the_metric_reads_the_branch_layout():
    """Row 0: the prompt's last position; then the answer's slots, then the wrong's (-1: padding)."""
    logits = torch.randn(1, 4, 6)
    lp = logits.log_softmax(-1)[0]
    from metrics import MetricInputs
    inp = MetricInputs(None, None, None, answer_seq=torch.tensor([[1, 2, 3]]), wrong_seq=torch.tensor([[4, 5]]))
    want = (lp[0, 1] + lp[1, 2] + lp[2, 3]) - (lp[0, 4] + lp[3, 5])
    assert get_metric("seq_logprob_diff")(logits, inp).item() == pytest.approx(want.item(), abs=1e-6)
    short = MetricInputs(None, None, None, answer_seq=torch.tensor([[1, -1, -1]]), wrong_seq=torch.tensor([[4, 5]]))
    assert get_metric("seq_logprob_diff")(logits, short).item() == pytest.approx((lp[0, 1] - lp[0, 4] - lp[3, 5]).item(), abs=1e-6)


def test_cli_takes_multi_token_answers_with_seq_logprob_diff(tiny_dirs, gpt2_model, multi, tmp_path, capsys):
    import io

    import pandas as pd

    from patching.cli import main
    pairs = tmp_path / "pairs.csv"
    pd.DataFrame(PAIRS, columns=["clean", "corrupt", "answer", "wrong"]).to_csv(pairs, index=False)
    args = ["sweep", "--model", str(tiny_dirs["gpt2"]), "--pairs", str(pairs), "--kind", "mlp_out", "--quiet"]
    assert main(args + ["--metric", "seq_logprob_diff"]) == 0
    df = pd.read_csv(io.StringIO(capsys.readouterr().out))
    want = sweep(gpt2_model, multi["gpt2"], PatchSpec(kind="mlp_out", metric="seq_logprob_diff"))
    assert df["value"].to_numpy() == pytest.approx(want.values.flatten().numpy(), rel=1e-5)   # CSV: 6 digits
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "pair 0: answer ' Maryanne Smith' is" in err and "need the metric seq_logprob_diff" in err, err


def test_the_same_multi_token_answer_and_wrong_are_refused(gpt2_model):
    clean, corrupt = PAIRS[0][:2]
    with pytest.raises(ValueError, match="answer and wrong are the same token ' Maryanne Smith'"):
        PromptSet.from_pairs(gpt2_model, [(clean, corrupt, " Maryanne Smith", " Maryanne Smith")], multi_token=True)
    assert PromptSet.from_pairs(gpt2_model, [(clean, corrupt, " Maryanne Smith", " Maryanne")], multi_token=True).n_pairs == 1
