"""Sparse autoencoders in sae-lens' format (patching/model/sae.py): the format, the encode /
decode formulas of each architecture, the errors, and the identity a model with its SAEs spliced
in (reconstruction + error) is the model itself."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from patching.model.sae import CFG_FILE, WEIGHTS_FILE, Sae, load_sae, load_saes, save_sae
from patching.paths import models_dir

SHIPPED_SAES = models_dir() / "patchboard-tiny" / "saes"
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_saes.py"


def train_script():
    spec = importlib.util.spec_from_file_location("train_saes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_round_trip_keeps_every_tensor_and_the_sae_lens_cfg(tmp_path):
    sae = Sae.random("blocks.3.hook_resid_pre", d_in=6, d_sae=20, seed=1)
    folder = save_sae(sae, tmp_path / "s")
    cfg = json.loads((folder / CFG_FILE).read_text())
    # sae-lens 6's StandardSAEConfig fields, and the hook where sae-lens 6 keeps it
    assert {"architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input",
            "normalize_activations", "metadata"} <= set(cfg)
    assert cfg["architecture"] == "standard" and (cfg["d_in"], cfg["d_sae"]) == (6, 20)
    assert cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_pre"
    back = load_sae(folder)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(back, name), getattr(sae, name))
    assert (back.layer, back.site) == (3, "resid_pre")


def test_an_older_sae_lens_cfg_with_hook_point_loads(tmp_path):
    sae = Sae.random("blocks.0.hook_resid_post", d_in=4, d_sae=8)
    folder = save_sae(sae, tmp_path)
    cfg = json.loads((folder / CFG_FILE).read_text())
    old = {k: v for k, v in cfg.items() if k != "metadata"} | {"hook_point": "blocks.0.hook_resid_post"}
    (folder / CFG_FILE).write_text(json.dumps(old))
    assert load_sae(folder).hook_name == "blocks.0.hook_resid_post"


def _hand_encode(sae: Sae, x: torch.Tensor) -> torch.Tensor:
    """sae-lens' formulas written out element by element."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    if sae.architecture == "standard":
        return torch.where(pre > 0, pre, torch.zeros_like(pre))
    if sae.architecture == "jumprelu":
        return torch.where((pre > sae.threshold) & (pre > 0), pre, torch.zeros_like(pre))
    out = torch.zeros_like(pre)
    for row in range(pre.shape[0]):
        top = pre[row].argsort(descending=True)[: sae.k]
        out[row, top] = pre[row, top].clamp(min=0)
    return out


@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "topk"])
def test_each_architecture_encodes_as_sae_lens_and_survives_the_round_trip(architecture, tmp_path):
    base = Sae.random("blocks.1.hook_resid_pre", d_in=5, d_sae=12, seed=2)
    g = torch.Generator().manual_seed(3)
    extra = {"jumprelu": {"threshold": torch.rand(12, generator=g) * 0.2}, "topk": {"k": 3}}.get(architecture, {})
    sae = Sae(base.hook_name, base.W_enc, torch.randn(12, generator=g) * 0.1, base.W_dec,
              torch.randn(5, generator=g) * 0.1, architecture=architecture, **extra)
    x = torch.randn(7, 5, generator=g)
    want = _hand_encode(sae, x)
    assert torch.allclose(sae.encode(x), want, atol=1e-6)
    assert (want > 0).any() and (want == 0).any()          # the test sees both regimes
    back = load_sae(save_sae(sae, tmp_path))
    assert back.architecture == architecture
    assert torch.allclose(back.encode(x), want, atol=1e-6)


@pytest.mark.parametrize("change, message", [
    (dict(architecture="gated"), "architecture 'gated' is not supported"),
    (dict(hook_name="blocks.1.attn.hook_z"), "not a residual-stream hook"),
    (dict(b_dec=torch.zeros(3)), "b_dec has shape (3,), expected (4,)"),
    (dict(architecture="jumprelu"), "needs its `threshold`"),
    (dict(architecture="topk", k=0), "k in 1..8"),
])
def test_bad_saes_are_refused_naming_the_value(change, message):
    base = dict(hook_name="blocks.1.hook_resid_pre", W_enc=torch.zeros(4, 8), b_enc=torch.zeros(8),
                W_dec=torch.zeros(8, 4), b_dec=torch.zeros(4))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("`", ".")):
        Sae(**(base | change))


def test_a_folder_without_an_sae_says_what_it_expects(tmp_path):
    with pytest.raises(ValueError, match="cfg.json is missing"):
        load_sae(tmp_path)
    with pytest.raises(ValueError, match="no SAE under"):
        load_saes(tmp_path)


def test_normalised_activations_are_refused(tmp_path):
    folder = save_sae(Sae.random("blocks.0.hook_resid_pre", 4, 8), tmp_path)
    cfg = json.loads((folder / CFG_FILE).read_text()) | {"normalize_activations": "expected_average_only_in"}
    (folder / CFG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="normalize_activations='expected_average_only_in' is not supported"):
        load_sae(folder)


# -- the shipped SAEs -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped():
    from patching.model.loading import load_model
    return load_model("default", device="cpu"), load_saes(SHIPPED_SAES)


def test_the_shipped_model_has_one_sae_per_layer_in_sae_lens_files(shipped):
    model, saes = shipped
    assert list(saes) == [f"blocks.{layer}.hook_resid_pre" for layer in range(model.n_layers)]
    for hook in saes:
        assert {p.name for p in (SHIPPED_SAES / hook).iterdir()} == {CFG_FILE, WEIGHTS_FILE}


def test_splicing_every_sae_with_its_error_leaves_the_model_unchanged(shipped):
    """Through TransformerLens hooks: each block input x -> decode(encode(x)) + error(x)."""
    model, saes = shipped
    from patching.inspect.neurons import encode_texts
    tokens = encode_texts(model, ["When Mary and John went to the store, John gave a drink to",
                                  "Paris is a city in the country of"]).tokens
    clean = model.bridge(tokens)

    def splice(sae):
        return lambda x, hook: sae.decode(sae.encode(x)) + sae.error(x)
    spliced = model.bridge.run_with_hooks(tokens, fwd_hooks=[(h, splice(s)) for h, s in saes.items()])
    assert torch.allclose(spliced, clean, atol=1e-4, rtol=0)

    def without_error(sae):
        return lambda x, hook: sae.decode(sae.encode(x))
    lossy = model.bridge.run_with_hooks(tokens, fwd_hooks=[(h, without_error(s)) for h, s in saes.items()])
    assert (lossy - clean).abs().max() > 1e-2       # the error term is what makes it exact


def test_the_shipped_quality_numbers_are_the_weights_numbers(shipped):
    """quality.json's explained variance, recomputed on fresh corpus items with plain transformers."""
    from patching.tasks.families import training_examples
    script = train_script()
    model, saes = shipped
    report = json.loads((SHIPPED_SAES / "quality.json").read_text())
    items = [text for _, text in training_examples(200, seed=4242)]
    xs = script.residuals(model.hf.eval(), script.token_rows(model.tokenizer, items))
    for q, x in zip(report["saes"], xs):
        sae = saes[q["hook_name"]]
        acts = sae.encode(x)
        ev = 1 - ((x - sae.decode(acts)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        assert abs(float(ev) - q["explained_variance"]) < 0.05, q["hook_name"]
        assert abs(float((acts > 0).float().sum(-1).mean()) - q["l0"]) < 0.25 * q["l0"] + 1, q["hook_name"]


@pytest.mark.slow
def test_sae_training_is_seeded_byte_for_byte(tmp_path):
    import hashlib
    script = train_script()
    digests = []
    threads = torch.get_num_threads()          # the script sets its own; give the rest of the suite its own back
    for run in ("a", "b"):
        try:
            script.main(["--steps", "15", "--items", "200", "--d-sae", "64", "--out", str(tmp_path / run)])
        finally:
            torch.set_num_threads(threads)
        digests.append([hashlib.sha256((tmp_path / run / f"blocks.{layer}.hook_resid_pre" / WEIGHTS_FILE)
                                       .read_bytes()).hexdigest() for layer in range(4)])
    assert digests[0] == digests[1]
    assert len(set(digests[0])) == 4
