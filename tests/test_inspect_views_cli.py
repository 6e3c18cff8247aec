"""`python -m patching attention-overview|highlight|norms --all-pairs`: CSV (and HTML) out, the
engine's numbers, exit 2 with one line naming the bad value."""
from __future__ import annotations

import csv
import io

import numpy as np
import pandas as pd
import pytest

from patching import PatchSpec, PromptSet, sweep
from patching.cli import main
from patching.inspect.highlight import HighlightSpec, effect_values, highlight_values
from patching.inspect.lens import attention_overview, residual_norm_bands
from tests.conftest import IOI


@pytest.fixture(scope="module")
def model_flag(tiny_dirs, gpt2_model):          # gpt2_model: loaded once, so the tiny dir is warm
    return ["--model", str(tiny_dirs["gpt2"])]


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clean", "corrupt", "answer", "wrong"])
        w.writerows(IOI)
    return str(path)


def _csv(capsys) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(capsys.readouterr().out), keep_default_na=False, na_values=[""])


def test_attention_overview_csv_is_the_engines_frame(model_flag, pairs_csv, gpt2_model, capsys, tmp_path):
    out = tmp_path / "overview.csv"
    assert main(["attention-overview", *model_flag, "--pairs", pairs_csv, "--pair", "1", "--run", "corrupt",
                 "--out", str(out)]) == 0
    got = pd.read_csv(out, keep_default_na=False)
    ref = attention_overview(gpt2_model, PromptSet.from_pairs(gpt2_model, IOI), pair=1, run="corrupt")
    assert list(got.columns) == list(ref.columns) and len(got) == len(ref)
    np.testing.assert_allclose(got.value, ref.value, rtol=1e-5)
    assert main(["attention-overview", *model_flag, "--clean", IOI[0][0], "--layers", "-1"]) == 0
    assert set(_csv(capsys).layer) == {1}


def test_highlight_csv_and_html(model_flag, pairs_csv, gpt2_model, capsys, tmp_path):
    page = tmp_path / "text.html"
    assert main(["highlight", *model_flag, "--pairs", pairs_csv, "--pair", "1", "--source", "attention",
                 "--layer", "1", "--head", "2", "--dest", "6", "--html", str(page)]) == 0
    got = _csv(capsys)
    ps = PromptSet.from_pairs(gpt2_model, IOI)
    ref = highlight_values(gpt2_model, ps, HighlightSpec("attention", layer=1, head=2, dest=6, pair=1))
    assert list(got.columns) == ["source", "label", "run", "pair", "pos", "token", "value"]
    np.testing.assert_allclose(got.value[:7], ref.value[:7], rtol=1e-5)
    assert got.value[7:].isna().all() and got.label[0] == "L1H2 attention from 6: ' to'"
    text = page.read_text()
    assert text.count("<span") == ps.n_pos and "outline" in text and "L1H2 attention" in text
    assert main(["highlight", *model_flag, "--clean", "When  Mary\nand", "--source", "neuron", "--layer", "0",
                 "--neuron", "3"]) == 0
    tokens = _csv(capsys).token.tolist()
    assert "\n" in tokens or any("\n" in t for t in tokens)


def test_highlight_by_a_saved_runs_effect(model_flag, gpt2_model, capsys, tmp_path):
    clean, corrupt, answer, wrong = IOI[0]
    run_file = tmp_path / "run.patchboard.zip"
    assert main(["sweep", *model_flag, "--clean", clean, "--corrupt", corrupt, "--answer", answer, "--wrong", wrong,
                 "--kind", "resid_pre", "--quiet", "--save-run", str(run_file), "--out", str(tmp_path / "r.csv")]) == 0
    capsys.readouterr()
    assert main(["highlight", "--source", "effect", "--result", str(run_file), "--layer", "1"]) == 0
    got = _csv(capsys)
    ps = PromptSet.single(gpt2_model, *IOI[0])
    ref = effect_values(sweep(gpt2_model, ps, PatchSpec(kind="resid_pre")), layer=1)
    np.testing.assert_allclose(got.value, ref.value, atol=1e-5)
    assert got.label[0] == "effect of resid_pre L1 · logit_diff · denoise"


def test_norms_all_pairs(model_flag, pairs_csv, gpt2_model, capsys):
    assert main(["norms", *model_flag, "--pairs", pairs_csv, "--all-pairs"]) == 0
    got = _csv(capsys)
    ref = residual_norm_bands(gpt2_model, PromptSet.from_pairs(gpt2_model, IOI))
    assert list(got.columns) == list(ref.columns) and set(got.n_pairs) == {2}
    np.testing.assert_allclose(got["mean"], ref["mean"], rtol=1e-5)
    np.testing.assert_allclose(got["std"], ref["std"], rtol=1e-4)


@pytest.mark.parametrize("argv, message", [
    (["attention-overview", "--layers", "0,x"], "--layers must be comma-separated layer numbers, e.g. 0,3, not '0,x'"),
    (["attention-overview", "--layers", "5"], "layer 5 is out of range: the model has 2 layers"),
    (["highlight", "--source", "neuron", "--neuron", "999"], "neuron 999 is out of range: layer 0 has 128 neurons"),
    (["highlight", "--source", "attention", "--dest", "40"], "dest 40 is out of range"),
    (["highlight", "--source", "effect"], "--source effect needs --result RUN.patchboard.zip"),
    (["highlight", "--source", "neuron", "--result", "x.zip"], "--result is read by --source effect only"),
    (["norms", "--all-pairs", "--pair", "1"], "--all-pairs summarises every pair; leave out --pair"),
])
def test_bad_input_exits_2_naming_the_value(model_flag, pairs_csv, capsys, argv, message):
    assert main([argv[0], *model_flag, "--pairs", pairs_csv, *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_highlight_source_is_checked_by_the_parser(model_flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["highlight", *model_flag, "--clean", "A", "--source", "logit"])
    assert exc.value.code == 2 and "invalid choice: 'logit'" in capsys.readouterr().err
