"""The training script keeps working: a few steps of a tiny configuration, files that load."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_default_model.py"
TINY = ["--steps", "4", "--d-model", "32", "--n-layer", "1", "--n-head", "2", "--items", "1500",
        "--n-ctx", "64", "--batch-size", "4", "--log-every", "1"]


@pytest.fixture(scope="module")
def train():
    spec = importlib.util.spec_from_file_location("train_default_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_default_model", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(train, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    result = train.main([*TINY, "--out", str(out)])
    return out, result


def test_tiny_run_writes_hugging_face_files(tiny_run):
    out, result = tiny_run
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "train_log.jsonl"):
        assert (out / name).exists(), name
    assert result["steps"] == 4 and torch.isfinite(torch.tensor(result["final_loss_ema"]))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "step"] == [0, 1, 2, 3]


def test_tiny_run_loads_like_any_hub_model(tiny_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = tiny_run
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)
    assert tok.bos_token == tok.eos_token == "<|endoftext|>"
    assert len(tok.encode(" Mary", add_special_tokens=False)) == 1
    assert tok.encode("When Mary", add_special_tokens=False)[0] != tok.bos_token_id
    assert model.config.n_layer == 1 and model.config.n_positions == 64
    tokens = torch.tensor([[tok.bos_token_id] + tok.encode("The war lasted from the year 1732")])
    assert model(tokens).logits.shape == (1, tokens.shape[1], len(tok))


def test_training_is_deterministic(train, tiny_run, tmp_path):
    from safetensors.torch import load_file

    out, _ = tiny_run
    train.main([*TINY, "--out", str(tmp_path)])
    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "tokenizer.json").read_text() == (tmp_path / "tokenizer.json").read_text()


def test_every_row_is_bos_then_one_item_and_padding_is_ignored(train):
    batches = train.make_batches([[5, 6, 7], [8, 9], [1, 2, 3, 4]], [[1.0] * 3, [1.0] * 2,
                                 [1.0] * 4], bos_id=0, batch_size=2, max_len=16, seed=0)
    rows = sorted(r for ids, _, _ in batches for r in ids.tolist())
    assert rows == [[0, 1, 2, 3, 4], [0, 5, 6, 7], [0, 8, 9, 0]]   # similar lengths together
    for ids, targets, weights in batches:
        assert (ids[:, 0] == 0).all() and torch.equal(targets, ids[:, 1:])
        assert weights.shape == targets.shape
    (ids, _, weights), = [b for b in batches if b[0].shape[0] == 2]
    assert weights.tolist() == [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]


def test_loss_weights_stress_answers_and_skip_random_first_passes(train):
    assert train.token_weights("factual", [3, 4, 8, 1], 1, 3.0) == [1.0, 1.0, 3.0, 1.0]
    assert train.token_weights("filler", [3, 4, 8, 1], 1, 3.0) == [1.0] * 4
    assert train.token_weights("induction", [3, 4, 8, 3, 4, 1], 1, 3.0) == [
        1.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def test_missing_single_tokens_are_a_clear_error(train):
    with pytest.raises(ValueError, match="not single tokens"):
        train.build_tokenizer(["a b c"], vocab_size=300)


def test_recipe_chains_stages_from_the_previous_weights(train, tmp_path):
    from safetensors.torch import load_file

    stages = (tuple(TINY), (*TINY[:2], "--lr", "1e-3", "--seed", "1", "--items", "1500",
                            "--batch-size", "4", "--mix", "induction=0.5,filler=0.5"))
    result = train.run_recipe(tmp_path / "final", threads=1, stages=stages)
    assert result["stages"] == 2 and result["recipe_train_s"] >= result["train_s"] >= 0
    # stage 2 kept stage 1's architecture and tokenizer (it started from its files)
    config = json.loads((tmp_path / "final" / "config.json").read_text())
    assert config["n_layer"] == 1 and config["n_embd"] == 32
    assert Path(result["args"]["init_from"]).name == "1"     # stage 2 started from stage 1
    assert sorted(load_file(tmp_path / "final" / "model.safetensors"))
    assert not list(tmp_path.glob("*stages*"))        # intermediate stages are not left behind


def test_shipped_recipe_is_well_formed(train):
    for flags in train.SHIPPED_STAGES:
        args = train.parse_args(list(flags))
        if args.mix:
            shares = [float(kv.split("=")[1]) for kv in args.mix.split(",")]
            assert abs(sum(shares) - 1.0) < 1e-9, args.mix


def test_attention_only_run_with_a_previous_token_start_is_deterministic(train, tmp_path):
    """--attn-only keeps every MLP weight at exactly zero (frozen), --prev-token-init starts L0H0
    attending to the previous position; two runs give the same bytes."""
    from safetensors.torch import load_file

    flags = [*TINY, "--attn-only", "--prev-token-init", "3", "--random-repeat", "0.2"]
    for name in ("a", "b"):
        train.main([*flags, "--out", str(tmp_path / name)])
    a, b = (load_file(tmp_path / name / "model.safetensors") for name in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == \
        (tmp_path / "b" / "model.safetensors").read_bytes()
    mlp = [k for k in a if ".mlp." in k]
    assert mlp and all(not a[k].any() for k in mlp)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["n_inner"] == 1


def test_previous_token_init_attends_to_the_previous_position(train):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=300, n_positions=64, n_embd=64, n_layer=1, n_head=2,
                        n_inner=1, initializer_range=0.08, bos_token_id=0, eos_token_id=0)
    config._attn_implementation = "eager"
    model = GPT2LMHeadModel(config).eval()
    tokens = torch.randint(1, 300, (8, 40))
    prev = lambda m: m(tokens, output_attentions=True).attentions[0][:, 0].diagonal(-1, -2, -1).mean()
    with torch.no_grad():
        before = float(prev(model))
        train.previous_token_init(model, 3.0, 0.5)
        after = float(prev(model))
    assert before < 0.2 and after > 0.5, (before, after)


def test_previous_token_init_refuses_a_second_stage(train, capsys):
    with pytest.raises(SystemExit) as exc:
        train.parse_args(["--init-from", "/tmp/x", "--prev-token-init", "3"])
    assert exc.value.code == 2
    assert "--prev-token-init 3 would overwrite" in capsys.readouterr().err
