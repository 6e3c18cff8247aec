"""`python -m patching neurons|weights`: CSV out, exit 2 with one line on bad input.

Drives the commands through a parser built like cli.build_parser's, with
`cli_neurons.add_commands(sub)` (the call build_parser makes), and cli.main once it is wired.
"""
from __future__ import annotations

import io
import sys

import pandas as pd
import pytest

from patching.cli import common
from patching.cli import neurons as cli_neurons
from tests.conftest import IOI


def run(argv: list[str]) -> int:
    parser = common.Parser(prog="python -m patching")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=common.Parser)
    cli_neurons.add_commands(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:            # cli.main's handling: one line, exit 2
        print(f"error: {exc}", file=sys.stderr)
        return common.EXIT_BAD_INPUT


@pytest.fixture(scope="module")
def model_args(tiny_dirs, gpt2_model):
    return ["--model", str(tiny_dirs["gpt2"])]


@pytest.fixture(scope="module")
def pair_args():
    clean, corrupt, answer, wrong = IOI[0]
    return ["--clean", clean, "--corrupt", corrupt, "--answer", answer, "--wrong", wrong]


def _csv(capsys) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(capsys.readouterr().out), keep_default_na=False)


def test_neurons_top_and_top_activating_from_a_texts_file(model_args, tmp_path, capsys):
    texts = tmp_path / "t.csv"
    texts.write_text("text,label\nParis is a city in the country of,France\nThe war lasted,war\n")
    assert run(["neurons", *model_args, "--texts", str(texts), "--layer", "1", "--k", "3"]) == 0
    df = _csv(capsys)
    assert list(df["rank"]) == [1, 2, 3] and (df.layer == 1).all()
    assert run(["neurons", *model_args, "--texts", str(texts), "--view", "top-activating",
                "--neuron", "5", "--k", "2", "--pos", "all"]) == 0
    df = _csv(capsys)
    assert len(df) == 2 and set(df.label) <= {"France", "war"}


def test_weights_composition_and_rank_k(model_args, pair_args, capsys, tmp_path):
    out = tmp_path / "c.csv"
    assert run(["weights", *model_args, "--composition", "k", "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert set(df.composition) == {"k"} and len(df) == 16
    assert run(["weights", *model_args, *pair_args, "--view", "rank-k", "--layer", "1", "--head", "0",
                "--ranks", "1,8"]) == 0
    df = _csv(capsys)
    assert list(df["rank"]) == [1, 8] and abs(df.change.iloc[-1]) < 1e-5


def test_bad_input_is_one_line_and_exit_2(model_args, capsys):
    assert run(["weights", *model_args, "--view", "svd-tokens", "--layer", "9", "--head", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "layer 9 is out of range" in err
