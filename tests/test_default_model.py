"""The shipped default model: files, size, offline loading, and the issue's eval targets on
held-out items."""

import json
from pathlib import Path

import pytest

from patching.tasks.evaluate import evaluate, format_table

MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "models" / "patchboard-tiny"
N = 200          # items per task; the whole evaluation takes a few seconds


@pytest.fixture(scope="module")
def scores():
    return evaluate(MODEL_DIR, n=N)


def test_shipped_files_exist_and_fit_the_budget():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "MODEL_CARD.md"):
        assert (MODEL_DIR / name).exists(), name
    assert (MODEL_DIR / "model.safetensors").stat().st_size <= 25 * 2**20
    config = json.loads((MODEL_DIR / "config.json").read_text())
    assert config["model_type"] == "gpt2"
    assert config["n_layer"] >= 4 and config["n_head"] >= 4 and config["n_positions"] >= 64


def test_tokenizer_loads_offline_with_bos(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    assert tok.bos_token == "<|endoftext|>" and tok.bos_token_id is not None
    assert tok.convert_ids_to_tokens(tok.encode(" Mary", add_special_tokens=False)) == ["ĠMary"]
    assert tok.decode(tok.encode("When Mary and John went to the store")) == \
        "When Mary and John went to the store"


def test_eval_result_has_the_contract_shape(scores):
    assert set(scores) == {"ioi", "factual", "greater_than", "induction", "n"}
    assert set(scores["ioi"]) == {"accuracy", "logit_diff"}
    assert set(scores["factual"]) == {"accuracy"} == set(scores["induction"])
    assert set(scores["greater_than"]) == {"prob_mass"}
    assert scores["n"] == {"ioi": N, "factual": N, "greater_than": N, "induction": N}
    table = format_table(scores)
    assert "logit_diff" in table and "prob_mass" in table


def test_ioi_targets(scores):
    assert scores["ioi"]["accuracy"] >= 0.95, format_table(scores)
    assert scores["ioi"]["logit_diff"] >= 3.0, format_table(scores)


def test_factual_target(scores):
    assert scores["factual"]["accuracy"] >= 0.90, format_table(scores)


def test_greater_than_target(scores):
    assert scores["greater_than"]["prob_mass"] >= 0.80, format_table(scores)


def test_induction_target(scores):
    assert scores["induction"]["accuracy"] >= 0.90, format_table(scores)


def test_bad_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no model at"):
        evaluate(tmp_path)
    with pytest.raises(ValueError, match="n must be a positive int"):
        evaluate(MODEL_DIR, n=0)
