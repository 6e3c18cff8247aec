"""A model directory loads exactly as it describes itself, or is refused with what is wrong
(issue 18, classes 1 and 2):

- weights only from safetensors on every path: an index naming a pickle (.bin/.pt/.pth/.ckpt)
  or a file outside the directory, config.json's `transformers_weights`, an adapter: refused
  before anything is opened (no file unpickled, `torch.load` never called);
- no silent garbage: missing (randomly initialised), unexpected and mismatched tensors, a
  config's layer count that differs from the weights', NaN / inf weights, no tokenizer files,
  and a config far larger than its weights (refused before allocating);
- what must still load: the shipped model, the tiny random models, a sharded safetensors
  checkpoint, and a hub-style GPT-2 (no `transformer.` prefix, lm_head tied and absent, the old
  `attn.bias` buffers).

The bad directories are built in tmp_path from one tiny random GPT-2 (4 layers) and Llama.
"""
from __future__ import annotations

import json
import pickle
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from patching.model.loading import load_model
from tests.tiny_models import save_tiny_model

ACCEPTED = r"Patchboard loads weights only from safetensors: model.safetensors, or model.safetensors.index.json"


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("check-bases")
    return {"gpt2": save_tiny_model("gpt2", root / "gpt2", n_layers=4),
            "llama": save_tiny_model("llama", root / "llama", n_layers=4)}


def variant(bases: dict[str, Path], tmp_path: Path, family: str = "gpt2") -> Path:
    """A copy of a good tiny model directory, to be broken by the test."""
    return Path(shutil.copytree(bases[family], tmp_path / f"{family}-variant"))


def tensors(d: Path) -> dict[str, torch.Tensor]:
    return load_file(d / "model.safetensors")


def write_tensors(d: Path, sd: dict[str, torch.Tensor]) -> None:
    save_file({k: v.contiguous() for k, v in sd.items()}, d / "model.safetensors", metadata={"format": "pt"})


def edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


class _Payload:
    """A pickle that writes a file when unpickled."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "unpickled"))


@pytest.fixture
def no_torch_load(monkeypatch):
    """Fails the test if anything calls torch.load (the pickle path)."""
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a) or pytest.fail(f"torch.load{a}"))
    return calls


# -- 1. weights only from safetensors, every path --------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth", ".ckpt"])
def test_an_index_naming_a_pickle_is_refused_before_it_is_opened(bases, tmp_path, no_torch_load, suffix):
    d = variant(bases, tmp_path)
    marker = tmp_path / "unpickled"
    sd = tensors(d)
    (d / "model.safetensors").rename(d / "unused.safetensors")        # a safetensors file is present
    (d / f"weights{suffix}").write_bytes(pickle.dumps(_Payload(str(marker))))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f"weights{suffix}" for k in sd}}))
    with pytest.raises(ValueError, match=rf"cannot load model '.*': model.safetensors.index.json names "
                                         rf"'weights\{suffix}', which is not a safetensors file .*; {ACCEPTED}"):
        load_model(str(d))
    assert not marker.exists() and not no_torch_load


@pytest.mark.parametrize("target", ["../outside.safetensors", "/tmp/outside.safetensors", "sub/../../x.safetensors"])
def test_an_index_naming_a_file_outside_the_directory_is_refused(bases, tmp_path, target):
    d = variant(bases, tmp_path)
    sd = tensors(d)
    shutil.copy(d / "model.safetensors", tmp_path / "outside.safetensors")
    (d / "model.safetensors").unlink()
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: target for k in sd}}))
    with pytest.raises(ValueError, match=rf"names '{target}', outside the model directory; {ACCEPTED}"):
        load_model(str(d))



def test_every_path_into_a_model_is_refused_a_pickle_index(bases, tmp_path, no_torch_load, capsys):
    """The check sits in resolve_model, so `python -m patching eval` (which loads the directory with
    transformers itself) and tokenizer-only hosts refuse the same directory as load_model."""
    from patching.cli import main
    from patching.model.tokenizer_only import load_tokenizer_only
    d = variant(bases, tmp_path)
    sd = tensors(d)
    torch.save(sd, d / "pytorch_model.bin")                   # real weights, in a pickle
    (d / "model.safetensors").unlink()
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: "pytorch_model.bin" for k in sd}}))
    expected = r"model.safetensors.index.json names 'pytorch_model.bin', which is not a safetensors file"
    assert main(["eval", "--model", str(d), "--n", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(expected, err), err
    with pytest.raises(ValueError, match=expected):
        load_tokenizer_only(str(d))


def test_config_transformers_weights_naming_a_pickle_is_refused(bases, tmp_path, no_torch_load):
    d = variant(bases, tmp_path)
    marker = tmp_path / "unpickled"
    (d / "adapter_model.bin").write_bytes(pickle.dumps(_Payload(str(marker))))
    edit_config(d, transformers_weights="adapter_model.bin")
    with pytest.raises(ValueError, match=r"config.json's transformers_weights names 'adapter_model.bin', which is not "
                                         rf"a safetensors file .*; {ACCEPTED}"):
        load_model(str(d))
    assert not marker.exists() and not no_torch_load


def test_only_a_pickle_or_stray_shards_are_refused(bases, tmp_path, no_torch_load):
    d = variant(bases, tmp_path)
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match=r"has no model.safetensors or model.safetensors.index.json \(found "
                                         rf"model-00001-of-00002.safetensors, pytorch_model.bin\); {ACCEPTED}"):
        load_model(str(d))
    (d / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(ValueError, match=r"no \*\.safetensors weights; Patchboard loads weights only from safetensors"):
        load_model(str(d))


def test_an_adapter_directory_is_refused(bases, tmp_path):
    d = variant(bases, tmp_path)
    (d / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "gpt2"}))
    with pytest.raises(ValueError, match=r"adapter_config.json: adapters \(PEFT\) are not supported"):
        load_model(str(d))


def test_a_sharded_safetensors_checkpoint_loads(bases, tmp_path, no_torch_load):
    from transformers import AutoModelForCausalLM
    d = variant(bases, tmp_path)
    AutoModelForCausalLM.from_pretrained(d).save_pretrained(d / "sharded", max_shard_size="20KB")
    for f in d.glob("tokenizer*"):
        shutil.copy(f, d / "sharded")
    assert (d / "sharded" / "model.safetensors.index.json").is_file()
    sharded, whole = load_model(str(d / "sharded")), load_model(str(d))
    x = torch.tensor([[0] + whole.encode(" Mary")])
    assert torch.equal(sharded.hf(x).logits, whole.hf(x).logits)


# -- 2. exactly as described, or refused ----------------------------------------------------------------------
@pytest.mark.parametrize("family,drop", [("gpt2", "transformer.h.1.mlp.c_fc.weight"),
                                         ("llama", "model.layers.2.self_attn.k_proj.weight")])
def test_a_missing_tensor_is_refused_not_randomly_initialised(bases, tmp_path, family, drop):
    d = variant(bases, tmp_path, family)
    sd = tensors(d)
    del sd[drop]
    write_tensors(d, sd)
    with pytest.raises(ValueError, match=rf"1 tensor missing from the weights \(they would be random\): {drop}$"):
        load_model(str(d))


def test_many_missing_tensors_are_named_few_and_counted(bases, tmp_path):
    d = variant(bases, tmp_path)
    sd = {k: v for k, v in tensors(d).items() if ".h.3." not in k and ".h.2." not in k}
    write_tensors(d, sd)
    edit_config(d, n_layer=4)
    with pytest.raises(ValueError, match=r"config.json says n_layer=4 but the weights hold 2 layers \(transformer.h.0-1\)"):
        load_model(str(d))
    # without the layer check's pattern (a stack it cannot see), transformers' own report speaks
    sd = {k: v for k, v in tensors(bases["gpt2"]).items() if ".attn." not in k}
    write_tensors(d, sd)
    with pytest.raises(ValueError) as err:
        load_model(str(d))
    message = str(err.value)
    assert "16 tensors missing from the weights (they would be random): transformer.h.0.attn.c_attn.bias" in message
    assert message.endswith("and 11 more") and len(message) < 500


def test_a_config_counting_more_layers_than_the_weights_is_refused(bases, tmp_path):
    d = variant(bases, tmp_path)
    edit_config(d, n_layer=6)
    with pytest.raises(ValueError, match=r"config.json says n_layer=6 but the weights hold 4 layers "
                                         r"\(transformer.h.0-3\); fix n_layer to match the weights"):
        load_model(str(d))


def test_a_config_counting_fewer_layers_than_the_weights_is_refused(bases, tmp_path):
    d = variant(bases, tmp_path)
    edit_config(d, n_layer=2)
    # 22 of the 24: transformers' GPT-2 ignore pattern 'attn.bias' (the old mask buffers) also
    # matches 'c_attn.bias'
    with pytest.raises(ValueError, match=r"22 unexpected tensors in the weights, which the model described by "
                                         r"config.json does not have: transformer.h.2.attn.c_attn.weight, .* and 17 more; "
                                         r"the weights hold layers transformer.h.2-3 beyond config.json's layer count$"):
        load_model(str(d))


def test_llama_layer_count_is_named_by_its_own_field(bases, tmp_path):
    d = variant(bases, tmp_path, "llama")
    edit_config(d, num_hidden_layers=6)
    with pytest.raises(ValueError, match=r"config.json says num_hidden_layers=6 but the weights hold 4 layers "
                                         r"\(model.layers.0-3\)"):
        load_model(str(d))


def test_an_unexpected_tensor_is_refused(bases, tmp_path):
    d = variant(bases, tmp_path)
    write_tensors(d, {**tensors(d), "transformer.extra.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"1 unexpected tensor in the weights, which the model described by "
                                         r"config.json does not have: transformer.extra.weight"):
        load_model(str(d))


def test_a_tensor_of_the_wrong_shape_is_refused(bases, tmp_path):
    d = variant(bases, tmp_path)
    sd = tensors(d)
    sd["transformer.h.0.mlp.c_fc.weight"] = torch.zeros(32, 64)
    write_tensors(d, sd)
    with pytest.raises(ValueError, match=r"1 tensor of the wrong shape: transformer.h.0.mlp.c_fc.weight is "
                                         r"\[32, 64\] in the weights but \[32, 128\] per config.json"):
        load_model(str(d))


def test_all_nan_weights_are_refused(bases, tmp_path):
    d = variant(bases, tmp_path)
    write_tensors(d, {k: torch.full_like(v, float("nan")) for k, v in tensors(d).items()})
    with pytest.raises(ValueError) as err:
        load_model(str(d))
    message = str(err.value)
    assert "non-finite weights (NaN or inf) in 52 of 52 tensors: transformer.h.0.attn.c_attn.bias (96 of 96 values)" \
        in message, message
    assert message.endswith("and 47 more") and len(message) < 600


def test_one_inf_value_is_refused(bases, tmp_path):
    d = variant(bases, tmp_path, "llama")
    sd = tensors(d)
    sd["model.layers.1.mlp.up_proj.weight"][3, 5] = float("inf")
    write_tensors(d, sd)
    with pytest.raises(ValueError, match=r"non-finite weights \(NaN or inf\) in 1 of \d+ tensors: "
                                         r"model.layers.1.mlp.up_proj.weight \(1 of 2,048 values\)$"):
        load_model(str(d))


def test_a_directory_without_a_tokenizer_is_refused(bases, tmp_path):
    from patching.model.tokenizer_only import load_tokenizer_only
    d = variant(bases, tmp_path)
    for f in d.glob("tokenizer*"):
        f.unlink()
    expected = r"no tokenizer files found in '.*' \(looked for tokenizer.json, tokenizer.model, vocab.json"
    with pytest.raises(ValueError, match=rf"cannot load model '.*': {expected}"):
        load_model(str(d))
    with pytest.raises(ValueError, match=expected):
        load_tokenizer_only(str(d))


def test_a_tokenizer_that_makes_no_tokens_is_refused(bases, tmp_path):
    d = variant(bases, tmp_path)
    tok = json.loads((d / "tokenizer.json").read_text())
    tok["model"]["vocab"], tok["model"]["merges"], tok["added_tokens"] = {}, [], []
    (d / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ValueError, match=r"its tokenizer turns text into no tokens"):
        load_model(str(d))


def test_a_tokenizer_larger_than_the_embedding_is_refused(bases, tmp_path):
    d = variant(bases, tmp_path)
    sd = tensors(d)
    sd["transformer.wte.weight"] = sd["transformer.wte.weight"][:300]
    write_tensors(d, sd)
    edit_config(d, vocab_size=300)
    with pytest.raises(ValueError, match=r"its tokenizer has 400 tokens but the model's embedding has 300 rows "
                                         r"\(config.json's vocab_size\); use the tokenizer the model was trained with"):
        load_model(str(d))


@pytest.mark.parametrize("changes,what", [
    ({"n_layer": 100000}, "100000 layers of width 32"),
    ({"vocab_size": 10**12}, "vocabulary 1000000000000"),
    ({"n_embd": 10**7, "n_head": 1}, "layers of width 10000000"),
    ({"n_embd": 64, "n_inner": 1024}, "4 layers of width 64"),        # twice the width: 4x the parameters
])
def test_a_config_far_larger_than_its_weights_is_refused_before_allocating(bases, tmp_path, changes, what):
    d = variant(bases, tmp_path)
    edit_config(d, **changes)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"config.json describes at least [\d,]+ parameters \(.*{what}.*\) but the "
                                         r"safetensors files hold 67,776 values in [\d,]+ bytes \(.* kB\); "
                                         r"refused before allocating it"):
        load_model(str(d))
    assert time.perf_counter() - start < 10


def test_the_cli_exits_2_with_one_line(bases, tmp_path, capsys):
    from patching.cli import main
    d = variant(bases, tmp_path)
    write_tensors(d, {k: torch.full_like(v, float("nan")) for k, v in tensors(d).items()})
    assert main(["sweep", "--model", str(d), "--clean", "When Mary and John went", "--corrupt",
                 "When John and Mary went", "--answer", " Mary", "--wrong", " John", "--kind", "resid_pre"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "non-finite weights (NaN or inf) in 52 of 52 tensors" in err, err
    assert "Traceback" not in err


# -- what must still load ---------------------------------------------------------------------------------------
def test_the_shipped_and_the_tiny_models_still_load(tiny_models):
    model = load_model("default")
    assert model.n_layers == 4 and model.runner is not None
    assert {f: m.n_layers for f, m in tiny_models.items()} == {"gpt2": 2, "llama": 2, "neox": 2}


def test_a_hub_style_gpt2_with_tied_lm_head_and_attn_bias_buffers_loads(bases, tmp_path):
    """openai-community/gpt2 stores its tensors without the `transformer.` prefix, with each
    layer's causal-mask buffer `h.N.attn.bias`, and no lm_head (tied to wte)."""
    d = variant(bases, tmp_path)
    sd = {k.removeprefix("transformer."): v for k, v in tensors(d).items()}
    assert "lm_head.weight" not in sd
    for i in range(4):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(128, 128, dtype=torch.bool)).view(1, 1, 128, 128)
    write_tensors(d, sd)
    model, reference = load_model(str(d)), load_model(str(bases["gpt2"]))
    assert model.hf.lm_head.weight.data_ptr() == model.hf.transformer.wte.weight.data_ptr()
    x = torch.tensor([[0] + reference.encode(" Mary")])
    assert torch.equal(model.hf(x).logits, reference.hf(x).logits)


# -- a hub model not in the cache: fetched as safetensors only ----------------------------------------------
class FakeHub:
    """huggingface_hub's snapshot_download / hf_hub_download / list_repo_files over local
    "remote" directories (repo id -> directory), with a cache of snapshots; records downloads."""

    def __init__(self, remotes: dict[str, Path], cache: Path):
        self.remotes, self.cache, self.downloaded = remotes, cache, []

    def files(self, repo_id: str) -> list[str]:
        root = self.remotes[repo_id]
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def snapshot(self, repo_id: str) -> Path:
        return self.cache / repo_id.replace("/", "--") / "snapshots" / "0123abcd"

    def get(self, repo_id: str, name: str) -> str:
        target = self.snapshot(repo_id) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.remotes[repo_id] / name, target)
        self.downloaded.append(name)
        return str(target)

    def snapshot_download(self, repo_id: str, allow_patterns=None, **kw) -> str:
        from fnmatch import fnmatch
        for name in self.files(repo_id):
            if allow_patterns is None or any(fnmatch(name, p) for p in allow_patterns):
                self.get(repo_id, name)
        return str(self.snapshot(repo_id))

    def install(self, monkeypatch) -> None:
        import huggingface_hub
        monkeypatch.setattr(huggingface_hub, "snapshot_download", self.snapshot_download)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, name, **kw: self.get(repo_id, name))
        monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda api, repo_id, **kw: self.files(repo_id))
        monkeypatch.setattr("patching.model.loading.resolve_model", lambda name: name)   # not cached, hub reachable


def test_a_hub_model_is_fetched_as_safetensors_only(bases, tmp_path, monkeypatch, no_torch_load):
    good = variant(bases, tmp_path)
    (good / "pytorch_model.bin").write_bytes(b"\x80\x04 a pickle beside the safetensors")
    evil = Path(shutil.copytree(good, tmp_path / "evil"))
    sd = tensors(evil)
    (evil / "model.safetensors").unlink()
    (evil / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: "pytorch_model.bin" for k in sd}}))
    hub = FakeHub({"someone/good": good, "someone/evil": evil}, tmp_path / "hf-cache")
    hub.install(monkeypatch)
    model = load_model("someone/good")
    assert model.name == "someone/good" and model.n_layers == 4
    assert "model.safetensors" in hub.downloaded and "pytorch_model.bin" not in hub.downloaded
    hub.downloaded.clear()
    with pytest.raises(ValueError, match=r"cannot load model 'someone/evil': model.safetensors.index.json names "
                                         rf"'pytorch_model.bin', which is not a safetensors file .*; {ACCEPTED}"):
        load_model("someone/evil")
    assert hub.downloaded and not [f for f in hub.downloaded if not f.endswith(".json")], hub.downloaded
