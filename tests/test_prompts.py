"""Prompt validation: every message shows the bad value and what would be accepted."""
import pytest

from patching import PromptPair, PromptSet
from patching.core.prompts import read_pairs_csv

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


def test_single_pair_tokenises_with_bos(gpt2_model):
    ps = PromptSet.single(gpt2_model, CLEAN, CORRUPT, " Mary", " John")
    assert ps.clean_tokens.shape == ps.corrupt_tokens.shape == (1, 15)
    assert ps.clean_tokens[0, 0].item() == gpt2_model.bos_token_id
    assert ps.str_tokens[1] == "When" and ps.str_tokens[10] == " John"
    assert ps.differing_positions() == [10]


def test_no_bos(gpt2_model):
    ps = PromptSet.single(gpt2_model, CLEAN, CORRUPT, " Mary", " John", prepend_bos=False)
    assert ps.n_pos == 14 and ps.str_tokens[0] == "When"


def test_different_lengths_show_both_tokenisations(gpt2_model):
    with pytest.raises(ValueError) as err:
        PromptSet.single(gpt2_model, CLEAN, "When Mary went to the store, Mary gave a drink to", " Mary", " John")
    msg = str(err.value)
    assert "same number of tokens" in msg and "clean 15 tokens" in msg and "corrupt 13 tokens" in msg
    assert "' Mary'" in msg and "first differ at position 3" in msg


def test_multi_token_answer_shows_split(gpt2_model):
    with pytest.raises(ValueError) as err:
        PromptSet.single(gpt2_model, CLEAN, CORRUPT, " Maryland", " John")
    assert "answer ' Maryland' is" in str(err.value) and "not a single token" in str(err.value)


def test_answer_without_leading_space_gets_a_hint(gpt2_model):
    with pytest.raises(ValueError, match=r"did you mean ' Mary' with a leading space"):
        PromptSet.single(gpt2_model, CLEAN, CORRUPT, "Mary", " John")


def test_wrong_token_checked_too(gpt2_model):
    with pytest.raises(ValueError, match=r"wrong ' Johnathan'"):
        PromptSet.single(gpt2_model, CLEAN, CORRUPT, " Mary", " Johnathan")


def test_empty_prompt(gpt2_model):
    with pytest.raises(ValueError, match="clean prompt is empty"):
        PromptSet.single(gpt2_model, "  ", CORRUPT, " Mary", " John")


def test_prompt_longer_than_context(gpt2_model):
    long = " Mary" * (gpt2_model.n_ctx + 5)
    with pytest.raises(ValueError, match=rf"longer than the model's context of {gpt2_model.n_ctx} tokens"):
        PromptSet.single(gpt2_model, long, long, " Mary", " John")


def test_pairs_of_different_lengths_refused_naming_the_pair(gpt2_model):
    with pytest.raises(ValueError, match=r"15 tokens \(pair 0\), 10 tokens \(pair 1\); add a `positions` column"):
        PromptSet.from_pairs(gpt2_model, [(CLEAN, CORRUPT, " Mary", " John"),
                                          ("When Mary and John went, John gave to", "When Mary and John went, Mary gave to",
                                           " Mary", " John")])


def test_error_names_the_pair_in_a_set(gpt2_model):
    with pytest.raises(ValueError, match=r"^pair 1: answer"):
        PromptSet.from_pairs(gpt2_model, [(CLEAN, CORRUPT, " Mary", " John"), (CLEAN, CORRUPT, "Maryland", " John")])


def test_csv_round_trip(gpt2_model):
    text = f'clean,corrupt,answer,wrong\n"{CLEAN}","{CORRUPT}", Mary, John\n'
    ps = PromptSet.from_csv(gpt2_model, text.encode())
    assert ps.n_pairs == 1 and ps.pairs[0].answer == " Mary"


@pytest.mark.parametrize("text,message", [
    ("", "pairs CSV is empty"),
    ("clean,corrupt,answer\na,b,c\n", "missing column(s) wrong"),
    ("clean,corrupt,answer,wrong\n", "has a header but no rows"),
    ("clean,corrupt,answer,wrong\na,b,c\n", "row 2 has 3 cells, expected 4"),
    ("clean,corrupt,answer,wrong\na,b, c, d\n,b, c, d\n", "row 3: the clean prompt is empty"),
])
def test_bad_csv_names_the_problem(text, message):
    with pytest.raises(ValueError) as err:
        read_pairs_csv(text)
    assert message in str(err.value)


def test_csv_not_utf8():
    with pytest.raises(ValueError, match="not UTF-8"):
        read_pairs_csv(b"clean,corrupt,answer,wrong\n\xff\xfe\xfa,b,c,d\n")


def test_prompt_pair_rejects_empty_answer():
    with pytest.raises(ValueError, match="answer token is empty"):
        PromptPair("a", "b", "", " c")


def test_a_pairs_file_is_streamed_and_refused_before_its_end(tmp_path):
    # More than MAX_PAIRS rows, then bytes that are not UTF-8: a reader that loaded the whole file
    # would complain about the bytes; the streamed one stops at row MAX_PAIRS + 1.
    from patching.core.prompts import MAX_PAIRS, read_pairs_csv
    path = tmp_path / "huge.txt"                       # any suffix: the CLI passes a Path
    with open(path, "wb") as f:
        f.write(b"clean,corrupt,answer,wrong\n" + b"A B,A C, B, C\n" * (MAX_PAIRS + 5000) + b"\xff\xfe" * 1000)
    with pytest.raises(ValueError, match=f"too many pairs: more than {MAX_PAIRS}"):
        read_pairs_csv(path)
    with pytest.raises(ValueError, match="is a directory"):
        read_pairs_csv(tmp_path)
