"""The shipped patchboard-circuits model (issue #19): it loads through the same path as the
default, it is attention-only, its textbook heads pass the issue's thresholds when measured with
plain `transformers` and with the engine's detectors, and it meets the task targets."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from patching.tasks.evaluate import evaluate, format_table

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "assets" / "models" / "patchboard-circuits"
N = 100          # items per task (the card quotes n = 500)


def _head_scores_script():
    spec = importlib.util.spec_from_file_location("head_scores", ROOT / "scripts" / "head_scores.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("head_scores", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def plain():
    """Detector grids from scripts/head_scores.py: AutoModelForCausalLM, output_attentions."""
    return {k: np.array(v) for k, v in _head_scores_script().main([str(MODEL_DIR), "--json"]).items()}


@pytest.fixture(scope="module")
def scores():
    return evaluate(MODEL_DIR, n=N)


def test_ships_the_same_files_as_the_default_and_is_offered():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "MODEL_CARD.md", "train_log.jsonl"):
        assert (MODEL_DIR / name).exists(), name
    config = json.loads((MODEL_DIR / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_layer"] >= 2
    from patching.model.loading import available_models

    names = [m["name"] for m in available_models() if m["source"] == "shipped"]
    assert names[0] == "default" and "patchboard-circuits" in names


def test_mlps_are_exactly_zero():
    """Attention-only in GPT-2's format: every MLP weight and bias is zero."""
    from safetensors.torch import load_file

    weights = load_file(MODEL_DIR / "model.safetensors")
    mlp = {k: v for k, v in weights.items() if ".mlp." in k}
    assert mlp and all(not v.any() for v in mlp.values())


def test_induction_head_fed_by_an_earlier_previous_token_head(plain):
    induction, previous = plain["induction"], plain["previous_token"]
    layer, head = np.unravel_index(induction.argmax(), induction.shape)
    assert induction[layer, head] >= 0.5, induction
    assert previous[:layer].max() >= 0.5, previous


def test_engine_detectors_agree_with_plain_transformers(plain):
    from patching import load_model
    from patching.inspect.detectors import head_scores

    engine = head_scores(load_model("patchboard-circuits", device="cpu"))
    for name in ("previous_token", "duplicate_token", "induction"):
        grid = engine[engine.detector == name].pivot(index="layer", columns="head", values="score")
        assert abs(grid.to_numpy() - plain[name]).max() < 0.05, name


def test_task_targets(scores):
    assert scores["ioi"]["accuracy"] >= 0.95, format_table(scores)
    assert scores["ioi"]["logit_diff"] >= 3.0, format_table(scores)
    assert scores["factual"]["accuracy"] >= 0.90, format_table(scores)
    assert scores["greater_than"]["prob_mass"] >= 0.80, format_table(scores)
    assert scores["induction"]["accuracy"] >= 0.90, format_table(scores)
