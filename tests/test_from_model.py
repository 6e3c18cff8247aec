"""Bring your own model (issue 21): a Hugging Face model + tokenizer or a TransformerLens bridge
already in memory becomes a Patchboard Model without reloading weights, and gives the same numbers
as loading the same weights by path.

- the same parameter tensors (by identity and `data_ptr`), no read of the model's files (an audit
  hook on Python's `open`: config, tokenizer and the provenance's weights hash would all show);
- sweep values equal to loading by path, for the tiny GPT-2, Llama (GQA) and NeoX models saved to
  tmp and for the shipped model, from an HF object and from a bridge object;
- the runner where the family has one; TransformerLens' hooks otherwise (OPT, a compat-mode bridge);
- bad objects refused by name.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from patching import PatchSpec, PromptSet, from_model, load_model, sweep
from patching.model.resolve import resolve_model
from tests.conftest import IOI
from tests.tiny_models import build_tokenizer

SPECS = (PatchSpec(kind="head_out"), PatchSpec(kind="resid_pre"),
         PatchSpec(kind="mlp_out", direction="noise"))


def _hf(directory: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return (AutoModelForCausalLM.from_pretrained(str(directory), attn_implementation="eager"),
            AutoTokenizer.from_pretrained(str(directory)))


def _bridge(directory: Path):
    from transformer_lens.model_bridge import TransformerBridge
    return TransformerBridge.boot_transformers(str(directory), device="cpu", dtype=torch.float32)


@contextmanager
def reads_under(directory: Path):
    """Collects every Python-level open() of a path under `directory` while inside the block."""
    opened: list[str] = []
    root = str(Path(directory).resolve())

    def hook(event, args):
        if event == "open" and active and isinstance(args[0], (str, bytes, Path)):
            path = str(Path(args[0] if not isinstance(args[0], bytes) else args[0].decode()).resolve())
            if path.startswith(root):
                opened.append(path)
    active = True
    sys.addaudithook(hook)          # cannot be removed: it goes quiet when the block ends
    try:
        yield opened
    finally:
        active = False


def _sweeps(model, pairs):
    prompts = PromptSet.from_pairs(model, pairs)
    return [sweep(model, prompts, spec) for spec in SPECS]


def _assert_same_numbers(a, b):
    for x, y in zip(a, b):
        assert x.axes == y.axes and x.coords == y.coords
        torch.testing.assert_close(x.per_pair, y.per_pair, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x.clean_baseline, y.clean_baseline, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x.corrupt_baseline, y.corrupt_baseline, rtol=1e-5, atol=1e-5)
    assert any(bool(x.effect.abs().max() > 1e-3) for x in a)        # the sweeps measured something


@pytest.fixture(scope="module")
def shipped():
    return load_model("default")


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
def test_hf_object_gives_the_numbers_of_loading_by_path(tiny_dirs, tiny_models, family):
    hf, tok = _hf(tiny_dirs[family])
    originals = list(hf.parameters())
    ptrs = [p.data_ptr() for p in originals]
    with reads_under(tiny_dirs[family]) as opened:
        model = from_model(hf, tok)
        ours = _sweeps(model, IOI)
    assert opened == []
    assert model.hf is hf and model.runner is not None and model.source == "object"
    # the model's own tensors, not copies (the bridge adds split q/k/v pieces of its own, as it
    # does when loading by path; the runner reads the model's own modules)
    kept = {id(p): p.data_ptr() for p in model.hf.parameters()}
    assert [kept.get(id(p)) for p in originals] == ptrs
    _assert_same_numbers(ours, _sweeps(tiny_models[family], IOI))
    assert ours[0].provenance["weights_sha256"] is None          # no file speaks for in-memory weights


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_bridge_object_gives_the_numbers_of_loading_by_path(tiny_dirs, tiny_models, family):
    bridge = _bridge(tiny_dirs[family])
    ptrs = [p.data_ptr() for p in bridge.original_model.parameters()]
    with reads_under(tiny_dirs[family]) as opened:
        model = load_model(bridge)
        ours = _sweeps(model, IOI)
    assert opened == []
    assert model.bridge is bridge and model.runner is not None
    assert [p.data_ptr() for p in model.hf.parameters()] == ptrs
    _assert_same_numbers(ours, _sweeps(tiny_models[family], IOI))


def test_shipped_model_as_hf_object_and_as_bridge(shipped):
    directory = resolve_model("default")
    hf, tok = _hf(directory)
    reference = _sweeps(shipped, IOI)
    with reads_under(directory) as opened:
        by_hf = from_model(hf, tok, name="my-tiny")
        ours = _sweeps(by_hf, IOI)
    assert opened == [] and by_hf.name == "my-tiny"
    _assert_same_numbers(ours, reference)
    _assert_same_numbers(_sweeps(from_model(_bridge(directory)), IOI), reference)
    assert from_model(shipped) is shipped            # a Model is taken as it is


def test_family_without_a_runner_goes_through_hooks():
    """OPT has no runner: the hooked fallback patches it. With one differing token, patching the
    residual stream at that position before layer 0 turns the corrupt run into the clean one."""
    from transformers import OPTConfig, OPTForCausalLM
    tok = build_tokenizer()
    torch.manual_seed(3)
    hf = OPTForCausalLM(OPTConfig(vocab_size=len(tok), hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                  num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=32,
                                  bos_token_id=0, eos_token_id=0, pad_token_id=0))
    model = from_model(hf, tok)
    assert model.runner is None and not model.hf.training     # put in eval mode (no dropout)
    prompts = PromptSet.from_pairs(model, IOI[:1])
    result = sweep(model, prompts, PatchSpec(kind="resid_pre", layers=(0,)))
    clean, corrupt = prompts.clean_tokens[0], prompts.corrupt_tokens[0]
    (diff,) = (clean != corrupt).nonzero()[:, 0].tolist()
    assert result.values[0, diff] == pytest.approx(result.clean_value, abs=1e-5)
    assert result.clean_value != pytest.approx(result.corrupt_value, abs=1e-4)
    with torch.no_grad():           # the baseline is the model's own logit difference
        logits = hf(clean[None]).logits[0, -1]
    a, w = tok(IOI[0][2])["input_ids"][0], tok(IOI[0][3])["input_ids"][0]
    assert result.clean_value == pytest.approx(float(logits[a] - logits[w]), abs=1e-5)


def test_bridge_in_compatibility_mode_uses_its_hooks(tiny_dirs, tiny_models):
    bridge = _bridge(tiny_dirs["gpt2"])
    bridge.enable_compatibility_mode()
    model = from_model(bridge)
    assert model.runner is None
    ours, reference = _sweeps(model, IOI[:1])[:1], _sweeps(tiny_models["gpt2"], IOI[:1])[:1]
    torch.testing.assert_close(ours[0].per_pair, reference[0].per_pair, rtol=1e-4, atol=1e-4)


def test_bad_objects_are_refused_by_name(tiny_dirs):
    from transformers import GPT2Model
    hf, tok = _hf(tiny_dirs["gpt2"])
    with pytest.raises(ValueError, match=r"cannot use a builtins.dict as a model; pass a name"):
        from_model({"weights": 1})
    with pytest.raises(ValueError, match=r"needs its tokenizer.*got no tokenizer"):
        from_model(hf)
    with pytest.raises(ValueError, match=r"needs its tokenizer.*got a str"):
        from_model(hf, "gpt2")
    with pytest.raises(ValueError, match=r"GPT2Model has no language-model head"):
        from_model(GPT2Model(hf.config), tok)
    with pytest.raises(ValueError, match=r"not 'float16'; load_model does not cast"):
        load_model(hf, tokenizer=tok, dtype="float16")
    with pytest.raises(ValueError, match=r"device_map / max_memory / offload_folder"):
        load_model(hf, tokenizer=tok, device_map="auto")
    with pytest.raises(ValueError, match=r"tokenizer= goes with a model object"):
        load_model("default", tokenizer=tok)
    with pytest.raises(ValueError, match=r"name must be a non-empty string, not ''"):
        from_model(hf, tok, name="")
    from transformers import GPT2Config, GPT2LMHeadModel
    with torch.device("meta"):
        empty = GPT2LMHeadModel(hf.config)
    with pytest.raises(ValueError, match=r"its weights are on the meta device"):
        from_model(empty, tok)
    small = GPT2LMHeadModel(GPT2Config(vocab_size=10, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match=r"its tokenizer has \d+ tokens but the model's embedding has 10 rows"):
        from_model(small, tok)
    with torch.no_grad():
        hf.transformer.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite weights .*transformer.h.0.mlp.c_fc.weight"):
        from_model(hf, tok)
    hf2, _ = _hf(tiny_dirs["gpt2"])
    model = from_model(hf2, tok)
    with pytest.raises(ValueError, match=r"already wrapped by a TransformerBridge.*model.bridge"):
        from_model(hf2, tok)
    with pytest.raises(ValueError, match=r"carries its own tokenizer"):
        from_model(model.bridge, build_tokenizer())
