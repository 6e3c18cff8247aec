"""`python -m patching lens|dla|topk|attention|norms`: CSV out, exit 2 with one line on bad input."""
from __future__ import annotations

import io

import pandas as pd
import pytest

from patching.cli import main
from tests.conftest import IOI


@pytest.fixture(scope="module")
def base(tiny_dirs, gpt2_model):          # gpt2_model: loaded once, so the tiny dir is warm
    clean, corrupt, answer, wrong = IOI[0]
    return ["--model", str(tiny_dirs["gpt2"]), "--clean", clean, "--corrupt", corrupt,
            "--answer", answer, "--wrong", wrong]


def _csv(capsys) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(capsys.readouterr().out), keep_default_na=False)


def test_lens_writes_csv_to_stdout(base, capsys):
    assert main(["lens", *base, "--k", "2", "--mode", "per_layer", "--run", "corrupt"]) == 0
    df = _csv(capsys)
    assert list(df.columns[:4]) == ["run", "pair", "mode", "layer"]
    assert set(df.run) == {"corrupt"} and set(df["mode"]) == {"per_layer"}
    assert set(df.top_rank) == {1, 2}
    assert {"embed", "L0 attn", "L0H3", "L1 mlp"} <= set(df.label)
    assert set(df.answer) == {" Mary"}


def test_topk_attention_norms_dla(base, capsys, tmp_path):
    assert main(["topk", *base, "--pos", "-1", "--k", "4"]) == 0
    df = _csv(capsys)
    assert list(df["rank"]) == [1, 2, 3, 4] and (df.prob.diff().dropna() <= 0).all()

    out = tmp_path / "attention.csv"
    assert main(["attention", *base, "--layer", "1", "--out", str(out)]) == 0
    att = pd.read_csv(out)
    assert set(att.layer) == {1} and set(att["head"]) == {0, 1, 2, 3}
    assert main(["attention", *base, "--layer", "-1", "--heads", "2"]) == 0
    assert set(_csv(capsys)["head"]) == {2}

    assert main(["norms", *base]) == 0
    norms = _csv(capsys)
    assert set(norms.run) == {"clean", "corrupt"} and (norms.norm > 0).all()

    assert main(["dla", *base]) == 0
    dla = _csv(capsys)
    assert {"embed", "attn", "mlp", "head", "final_bias", "total"} == set(dla.kind)


def test_token_cells_are_formula_safe(tiny_dirs, capsys):
    """Prompt text such as '=' lands in token cells; the CSV neutralises it."""
    args = ["--model", str(tiny_dirs["gpt2"]), "--clean", "=A and B", "--corrupt", "=A and C",
            "--answer", " Mary", "--wrong", " John"]
    assert main(["attention", *args, "--layer", "0"]) == 0
    text = capsys.readouterr().out
    assert ",=" not in text and ",'=" in text


@pytest.mark.parametrize("argv, message", [
    (["attention", "--layer", "5"], "layer 5 is out of range"),
    (["attention", "--layer", "1", "--heads", "1,9"], "head 9 is out of range: layer 1 has 4 heads"),
    (["attention", "--layer", "1", "--heads", "1;2"], "--heads must be comma-separated head numbers"),
    (["topk", "--pos", "99"], "pos 99 is out of range"),
    (["topk", "--k", "0"], "k must be an integer from 1"),
    (["lens", "--pair", "3"], "pair 3 is out of range"),
    (["norms", "--pair", "first"], "--pair must be an integer or 'all', not 'first'"),
    (["dla", "--pos", "-40"], "pos -40 is out of range"),
])
def test_bad_input_exits_2_with_one_line(base, capsys, argv, message):
    assert main([argv[0], *base, *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("argv", [["attention"], ["lens", "--mode", "stacked"], ["topk", "--run", "patched"]])
def test_argparse_errors_exit_2(base, capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main([argv[0], *base, *argv[1:]])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_missing_prompt_flags(tiny_dirs, capsys):
    for view in ("dla", "norms"):                  # both read the pair (answer - wrong; clean and corrupt)
        assert main([view, "--model", str(tiny_dirs["gpt2"]), "--clean", "A"]) == 2
        assert "missing --corrupt, --answer, --wrong" in capsys.readouterr().err


def test_one_prompt_is_enough_for_the_views_that_read_one_run(base, tiny_dirs, capsys):
    """lens / topk / attention read one prompt: --clean alone runs (issue 17 item 9); the answer
    columns are empty without --answer and equal the full pair's with it."""
    model, clean, answer = ["--model", str(tiny_dirs["gpt2"])], IOI[0][0], IOI[0][2]
    assert main(["lens", *model, "--clean", clean]) == 0
    alone = _csv(capsys)
    assert set(alone.answer) == {""} and set(alone.answer_rank) == {""} and len(alone) > 0
    assert main(["lens", *model, "--clean", clean, "--answer", answer]) == 0
    with_answer = _csv(capsys)
    assert main(["lens", *base]) == 0
    full = _csv(capsys)
    assert with_answer.answer_rank.tolist() == full.answer_rank.tolist()
    assert with_answer.top_token.tolist() == full.top_token.tolist() == alone.top_token.tolist()
    for view in (["topk"], ["attention", "--layer", "0"]):
        assert main([*view, *model, "--clean", clean]) == 0 and len(_csv(capsys)) > 0
    assert main(["lens", *model, "--clean", clean, "--run", "corrupt"]) == 2
    assert "--run corrupt needs a --corrupt prompt" in capsys.readouterr().err
    assert main(["dla", *model, "--clean", clean]) == 2                    # dla reads answer - wrong
    assert "missing --corrupt, --answer, --wrong" in capsys.readouterr().err
