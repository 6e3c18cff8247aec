"""Task families: the API the dashboard and engine rely on, the hold-outs, and that every pair
tokenises to equal lengths with single-token answers under the shipped tokenizer."""

import random
import re
from pathlib import Path

import pytest

from patching.tasks import families as tasks
from patching.tasks.families import TASKS, TaskPair, make_pairs, training_items, training_text

MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "models" / "patchboard-tiny"


@pytest.fixture(scope="module")
def tokenizer():
    if not (MODEL_DIR / "tokenizer.json").exists():
        pytest.skip(f"no shipped tokenizer at {MODEL_DIR}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODEL_DIR)


@pytest.fixture(scope="module")
def train_items():
    return training_items(20_000, seed=0)


def test_task_registry_has_the_four_presets_with_titles():
    assert list(TASKS) == ["ioi", "factual", "greater_than", "induction"]
    for name, task in TASKS.items():
        assert task.name == name
        assert task.title and task.description and "\n" not in task.description
    assert TASKS["ioi"].title == "IOI (indirect object)"


def test_make_pairs_is_deterministic_and_sized():
    for task in TASKS:
        a = make_pairs(task, 20, seed=3)
        assert a == make_pairs(task, 20, seed=3)
        assert a != make_pairs(task, 20, seed=4)
        assert len(a) == 20 and all(isinstance(p, TaskPair) for p in a)
    assert make_pairs("ioi", 0) == []


def test_bad_arguments_name_the_value_and_the_choices():
    with pytest.raises(ValueError, match=r"'nope'.*ioi, factual, greater_than, induction"):
        make_pairs("nope", 1)
    with pytest.raises(ValueError, match=r"'test'.*train, eval"):
        make_pairs("ioi", 1, split="test")
    with pytest.raises(ValueError, match="-1"):
        make_pairs("ioi", -1)
    with pytest.raises(ValueError, match="answer and wrong must differ"):
        TaskPair("a", "b", " x", " x")


def test_task_pair_is_frozen():
    pair = make_pairs("ioi", 1)[0]
    with pytest.raises(AttributeError):
        pair.clean = "x"  # type: ignore[misc]


@pytest.mark.parametrize("split", ["train", "eval"])
@pytest.mark.parametrize("task", list(TASKS))
def test_pairs_tokenise_to_equal_lengths_with_single_token_answers(tokenizer, task, split):
    for pair in make_pairs(task, 300, split=split, seed=1):
        clean = tokenizer.encode(pair.clean, add_special_tokens=False)
        corrupt = tokenizer.encode(pair.corrupt, add_special_tokens=False)
        assert len(clean) == len(corrupt), (pair, tokenizer.convert_ids_to_tokens(clean),
                                            tokenizer.convert_ids_to_tokens(corrupt))
        assert clean != corrupt
        for field in (pair.answer, pair.wrong):
            assert len(tokenizer.encode(field, add_special_tokens=False)) == 1, (pair, field)


def test_every_task_word_is_one_token_with_a_leading_space(tokenizer):
    for word in tasks.vocabulary_words():
        assert len(tokenizer.encode(" " + word, add_special_tokens=False)) == 1, word
    for year in range(100):
        assert len(tokenizer.encode(f"{year:02d}", add_special_tokens=False)) == 1
    assert tokenizer.tokenize(" the year 1732") == ["Ġthe", "Ġyear", "Ġ17", "32"]


def test_word_lists_meet_the_issue_minimums():
    assert len(set(tasks.NAMES)) >= 40
    assert len(set(tasks.CITIES)) >= 100 and len(set(tasks.COUNTRIES)) >= 20
    assert not set(tasks.CITIES) & set(tasks.COUNTRIES)
    assert len(tasks.CITIES) == len(set(tasks.CITIES))


def test_ioi_corrupt_replaces_the_repeated_name_with_a_third_one():
    for pair in make_pairs("ioi", 200, seed=2):
        io, s = pair.answer.strip(), pair.wrong.strip()
        clean, corrupt = pair.clean.split(" "), pair.corrupt.split(" ")
        diff = [i for i, (a, b) in enumerate(zip(clean, corrupt)) if a != b]
        assert len(clean) == len(corrupt) and len(diff) == 1
        c = corrupt[diff[0]].strip(",.")
        assert clean[diff[0]].strip(",.") == s and c not in (io, s)
        words = re.findall(r"\w+", pair.clean)
        assert words.count(io) == 1 and words.count(s) == 2


def test_ioi_uses_both_name_orders():
    templates = {"ABBA": 0, "BABA": 0}
    for pair in make_pairs("ioi", 200):
        words = re.findall(r"\w+", pair.clean)
        first = next(w for w in words if w in (pair.answer.strip(), pair.wrong.strip()))
        templates["ABBA" if first == pair.answer.strip() else "BABA"] += 1
    assert min(templates.values()) > 50


def test_ioi_eval_name_pairs_never_occur_together_in_training(train_items):
    ioi_items = [s for s in train_items if s.count(" gave ") + s.count(" said ") +
                 s.count(" give ") and re.search(r" to \w+\.$", s)]
    assert len(ioi_items) > 3000
    train_pairs = set()
    for s in ioi_items:
        names = [w for w in re.findall(r"\w+", s) if w in tasks.NAMES]
        train_pairs.add(frozenset(names))
    for pair in make_pairs("ioi", 300):
        assert frozenset((pair.answer.strip(), pair.wrong.strip())) not in train_pairs


def _wording(text: str) -> str:
    """A prompt with its names, cities, numbers, places and objects blanked out."""
    fill = set(tasks.NAMES) | set(tasks.CITIES) | set(tasks.PLACES) | set(tasks.OBJECTS) | set(
        tasks.GT_NOUNS)
    return re.sub(r"\d+", "#", " ".join("_" if w.strip(",.") in fill else w
                                        for w in text.rstrip(".").split(" ")))


@pytest.mark.parametrize("task", ["ioi", "factual", "greater_than"])
def test_eval_split_includes_template_wordings_that_training_never_uses(task, train_items):
    seen = set()                    # every word-prefix of every training wording
    for wording in {_wording(s) for s in train_items}:
        words = wording.split(" ")
        seen.update(" ".join(words[:i]) for i in range(1, len(words) + 1))
    eval_pairs = make_pairs(task, 300)
    unseen = [p for p in eval_pairs if _wording(p.clean) not in seen]
    assert 0.05 < len(unseen) / len(eval_pairs) < 0.6
    train_pairs = make_pairs(task, 300, split="train")
    assert all(_wording(p.clean) in seen for p in train_pairs)


def test_every_name_city_and_country_is_a_training_target(train_items):
    endings = {re.search(r"(\w+)\.$", s).group(1) for s in train_items if re.search(r"\w+\.$", s)}
    assert set(tasks.NAMES) <= endings
    assert set(tasks.CITIES) <= endings
    assert set(tasks.COUNTRIES) <= endings


def test_factual_pairs_contrast_two_countries():
    for pair in make_pairs("factual", 200):
        city = next(c for c in tasks.CITIES if re.search(rf"\b{c}\b", pair.clean))
        other = next(c for c in tasks.CITIES if re.search(rf"\b{c}\b", pair.corrupt))
        assert pair.answer == " " + tasks.COUNTRY_OF[city]
        assert pair.wrong == " " + tasks.COUNTRY_OF[other] != pair.answer
        assert pair.clean.endswith("in the country of")


def test_greater_than_pairs_follow_hanna_et_al():
    pair = make_pairs("greater_than", 1)[0]
    assert re.search(r" (1[1-7])\d\d\b.* \1$", pair.clean)
    for pair in make_pairs("greater_than", 200):
        start = tasks.greater_than_start(pair.clean)
        assert 2 <= start <= 98
        assert tasks.greater_than_start(pair.corrupt) == 1
        assert int(pair.wrong) < start < int(pair.answer) <= 99
        assert len(pair.answer) == 2 and not pair.answer.startswith(" ")
    with pytest.raises(ValueError, match="no four-digit start year"):
        tasks.greater_than_start("no year here")


def test_greater_than_training_end_years_are_later():
    rng = random.Random(0)
    for _ in range(300):
        item = TASKS["greater_than"].train_item(rng)
        start, end = re.search(r"\d\d(\d\d)\D+\d\d(\d\d)\.$", item).groups()
        assert int(end) > int(start)


def test_induction_repeats_the_first_half_and_corrupt_breaks_it():
    for pair in make_pairs("induction", 200):
        words, bad = pair.clean.split(), pair.corrupt.split()
        assert pair.clean.startswith(" ") and len(words) == len(bad)
        k = next(i for i in range(1, len(words)) if words[i] == words[0])
        first, second = words[:k], words[k:]
        assert first[: len(second)] == second and len(second) >= 2
        assert pair.answer == " " + first[len(second)]
        assert bad[k:] == second and not set(bad[:k]) & set(first)
        assert pair.wrong.strip() not in words + bad


def test_eval_induction_sequences_are_fresh(train_items):
    train_seqs = {s for s in train_items if s.startswith(" ")}
    for pair in make_pairs("induction", 100):
        assert not any(s.startswith(pair.clean) for s in train_seqs)


def test_training_text_puts_bos_before_every_item():
    text = training_text(50, seed=1)
    assert text.startswith("<|endoftext|>") and text.count("<|endoftext|>") == 50
    kinds = training_items(2000, seed=1)
    assert all(item and "<|endoftext|>" not in item for item in kinds)
    assert training_items(10, seed=1) == training_items(10, seed=1)
    with pytest.raises(ValueError, match="unknown mix keys"):
        training_items(1, mix={"poetry": 1.0})


def test_induction_keys_change_only_the_word_before_the_answer_s_first_use(tokenizer):
    """The keys-only variant: the same draws as the induction task, one word replaced (the one
    before the answer's first occurrence, by the distractor), equal token lengths; the answer
    keeps its place, so an induction head's values are the same in both prompts."""
    base = make_pairs("induction", 200, seed=3)
    for pair, keys in zip(base, make_pairs("induction_keys", 200, seed=3)):
        assert keys.clean == pair.clean and keys.answer == pair.answer and keys.wrong == pair.wrong
        clean, corrupt = keys.clean.split(), keys.corrupt.split()
        changed = [i for i, (a, b) in enumerate(zip(clean, corrupt)) if a != b]
        assert len(changed) == 1 and corrupt[changed[0]] == keys.wrong.strip()
        assert clean[changed[0] + 1] == keys.answer.strip() and clean[-1] == clean[changed[0]]
        assert len(tokenizer.encode(keys.clean)) == len(tokenizer.encode(keys.corrupt))
    with pytest.raises(ValueError, match="not an induction pair"):
        tasks.induction_key_pair(make_pairs("ioi", 1)[0])
