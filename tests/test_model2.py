"""The circuits recipe of scripts/train_default_model.py (issue #19): its new data (repeated
random tokens, IOI sentences counting cannot solve), its own output folder; the model list puts
the default first; scripts/head_scores.py (plain transformers) agrees with the engine's
detectors."""

import importlib.util
import random
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NAME = "patchboard-circuits"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


def test_shipped_models_list_the_default_first(tmp_path, monkeypatch):
    from patching.model import loading

    for name in ("a-model", loading.DEFAULT_MODEL, "z-model"):      # "a-model" sorts first
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    monkeypatch.setattr(loading, "MODELS_DIR", tmp_path)
    shipped = [m["name"] for m in loading.available_models() if m["source"] == "shipped"]
    assert shipped == ["default", "a-model", "z-model"]


def test_plain_transformers_scores_agree_with_the_engine():
    """scripts/head_scores.py (AutoModelForCausalLM, output_attentions) against the engine's
    detectors on the default model: different random sequences, so equal up to sampling noise;
    and its best heads are the ones issue #19 measured (no induction head: best 0.07, L0H1)."""
    from patching import load_model
    from patching.inspect.detectors import head_scores

    tiny = ROOT / "assets" / "models" / "patchboard-tiny"
    plain = _script("head_scores").main([str(tiny), "--n", "32", "--json"])
    engine = head_scores(load_model("default", device="cpu"))
    for name in ("previous_token", "duplicate_token", "induction"):
        grid = engine[engine.detector == name].pivot(index="layer", columns="head", values="score")
        assert abs(grid.to_numpy() - np.array(plain[name])).max() < 0.05, name
    induction = np.array(plain["induction"])
    assert induction.max() < 0.15 and np.unravel_index(induction.argmax(), induction.shape) == (0, 1)


def test_random_repeat_items_and_weights():
    train = _script("train_default_model")
    seqs = train.random_repeat_items(50, vocab=2032, bos_id=0, seed=3)
    assert all(10 <= len(s) // 2 <= 30 and s[: len(s) // 2] == s[len(s) // 2:] for s in seqs)
    assert all(0 not in s and len(set(s)) == len(s) // 2 for s in seqs)
    assert seqs == train.random_repeat_items(50, vocab=2032, bos_id=0, seed=3)
    assert seqs != train.random_repeat_items(50, vocab=2032, bos_id=0, seed=4)
    w = train.random_repeat_weights(seqs[0])
    assert sum(w) == len(seqs[0]) // 2 - 1 and w[-1] == 1.0


def test_ioi_variants_need_more_than_counting_names():
    """Either the indirect object occurs as often as the subject (counting ties), or two names
    are duplicated (the group and the subject both hold a third name); the answer is always the
    one name of the first group that is not the subject now."""
    train = _script("train_default_model")
    from patching.tasks.families import NAMES

    rng = random.Random(0)
    kinds = set()
    for _ in range(200):
        text = train.ioi_variant_item(rng)
        words = text.rstrip(".").replace(",", "").replace(".", "").split()
        names, answer = [w for w in words[:-1] if w in NAMES], words[-1]
        counts = {n: names.count(n) for n in names}
        if len(counts) == 2:
            kinds.add("tie")
            assert counts[answer] == 2 and sorted(counts.values()) == [2, 2], text
        else:
            kinds.add("three")
            assert sorted(counts.values()) == [1, 2, 2] and counts[answer] == 1, text
    assert kinds == {"tie", "three"}


def test_circuits_recipe_writes_its_own_folder():
    """From scratch, attention-only in every stage (a stage without --attn-only would train the
    zero MLPs' biases), the previous-token start only in the first stage."""
    train = _script("train_default_model")
    assert "circuits" in train.RECIPES and "shipped" in train.RECIPES
    stages = [train.parse_args(list(flags)) for flags in train.CIRCUITS_STAGES]
    assert all(args.init_from is None and args.attn_only for args in stages)
    assert all(args.prev_token_init == 0 for args in stages[1:])
    assert train.CIRCUITS_OUT.name == NAME
