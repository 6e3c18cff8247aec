"""patching/inspect/datasets.py (the neuron explorer's datasets): reading text / CSV files, the
memory-budget refusal, search, every layer at one token, a neuron's histogram and the cluster
view coloured by a neuron — numbers checked against TransformerLens' hook_post on each prompt
alone and against plain counting; the CLI views."""
from __future__ import annotations

import io
import re
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from patching.cli import common
from patching.cli import neurons as cli_neurons
from patching.inspect import datasets as D
from patching.inspect import neurons as N

LONG_ODD = ("  Ünïcödé  résumé — naïve café 🙂🚀 tabs\there, \"quotes\" & <tags> =SUM(A1) " * 1).strip()
TEXTS = ["Paris is a city in the country of", "When Mary and John went to the store", "The war lasted",
         "Alice and Bob had a long argument, and afterwards Bob said to", LONG_ODD]
LABELS = ["France", "x", "y", "x", "odd"]


@pytest.fixture(scope="module")
def texts(gpt2_model):
    return N.encode_texts(gpt2_model, TEXTS, LABELS)


@pytest.fixture(scope="module")
def acts(gpt2_model, texts):
    return N.collect_activations(gpt2_model, texts, batch_size=2)


def hook_post(model, texts, i: int) -> torch.Tensor:
    """[layer, pos, d_mlp] of prompt i run alone (unpadded) through TransformerLens' hooks."""
    n = texts.lengths[i]
    _, cache = model.bridge.run_with_cache(texts.tokens[i:i + 1, :n])
    return torch.stack([cache[f"blocks.{l}.mlp.hook_post"][0].float() for l in range(model.n_layers)])


# -- reading --------------------------------------------------------------------------------------
def test_read_texts_lines_and_csv():
    assert D.read_texts(b"one\n\n  \ntwo  \n", "p.txt") == (["one", "two  "], None)
    data = "text,label\n\"a, b\",L1\n,skipped\nc,\n".encode()
    assert D.read_texts(data, "P.CSV") == (["a, b", "c"], ["L1", ""])
    assert D.read_texts("\ufefftext\nx\n".encode("utf-8"), "bom.csv") == (["x"], [""])


@pytest.mark.parametrize("data, name, message", [
    (b"\xff\xfe\x00a", "bad.txt", "'bad.txt' is not UTF-8 text (byte 0 is b'\\xff')"),
    (b"PK\x03\x04\x00\x00", "x.txt", "holds NUL bytes: it looks like a binary file"),
    (b"prompt,label\nx,y\n", "p.csv", "needs a 'text' column (and optionally 'label'); its columns are prompt, label"),
    (b"\n \n", "empty.txt", "'empty.txt' has no prompts"),
])
def test_read_texts_names_a_bad_file(data, name, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        D.read_texts(data, name)


# -- memory budget --------------------------------------------------------------------------------
def test_activation_bytes_is_the_tensor_collected_and_over_budget_is_refused(gpt2_model, texts, acts):
    assert N.activation_bytes(gpt2_model, texts) == acts.acts.numel() * acts.acts.element_size()
    cap_mb = N.activation_bytes(gpt2_model, texts) / 2**20 / 2
    with pytest.raises(ValueError) as err:
        N.collect_activations(gpt2_model, texts, max_memory_mb=cap_mb)
    msg = str(err.value)
    T = texts.tokens.shape[1]
    assert f"5 prompts × {T} tokens (the longest, padded) × {gpt2_model.n_layers} layers × {gpt2_model.d_mlp} " \
           "neurons × 4 bytes" in msg
    assert "the memory budget is" in msg and f"({int(cap_mb * 2**20):,} bytes)" in msg
    assert "load fewer or shorter prompts" in msg


# -- search ---------------------------------------------------------------------------------------
def test_search_substring_and_regex(texts):
    assert D.search(texts, "BOB") == [3]
    assert D.search(texts, "") == list(range(5))
    assert D.search(texts, r"\bthe (store|country)\b", regex=True) == [0, 1]
    assert D.search(texts, "🙂") == [4]
    with pytest.raises(ValueError, match=r"search pattern '\[a' is not a regular expression"):
        D.search(texts, "[a", regex=True)
    with pytest.raises(ValueError, match="search text is 201 characters; at most 200"):
        D.search(texts, "x" * 201)
    slow = ["x" * 3000 + "!"] * 3                         # backtracks for minutes without a time cap
    with pytest.raises(ValueError, match=r"took longer than 0.2 s over 3 prompts; simplify it"):
        D.search(slow, r"(x+x+)+y", regex=True, timeout=0.2)


# -- views vs TransformerLens' hooks on each prompt alone --------------------------------------------
def test_token_activations_are_every_layer_at_that_token(gpt2_model, texts, acts):
    for prompt, pos in ((4, -1), (4, 7), (2, 0)):
        df = D.token_activations(acts, prompt, pos)
        ref = hook_post(gpt2_model, texts, prompt)
        p = pos % texts.lengths[prompt]
        assert len(df) == gpt2_model.n_layers * gpt2_model.d_mlp and (df.pos == p).all()
        grid = df.pivot(index="layer", columns="neuron", values="activation").to_numpy()
        np.testing.assert_allclose(grid, ref[:, p].numpy(), atol=1e-5, rtol=1e-5)
        assert df.token.iloc[0] == texts.str_tokens[prompt][p]


def test_histogram_counts_are_plain_counts(gpt2_model, texts, acts):
    layer, neuron = 1, 9
    values = torch.cat([hook_post(gpt2_model, texts, i)[layer, :, neuron] for i in range(len(TEXTS))]).numpy()
    h = D.activation_histogram(acts, layer, neuron, bins=7)
    edges = np.linspace(values.min(), values.max(), 8)
    assert np.allclose(h.bin_low, edges[:-1], atol=1e-6) and np.allclose(h.bin_high, edges[1:], atol=1e-6)
    plain = [int(((values >= lo) & ((values < hi) if i < 6 else (values <= hi))).sum())
             for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))]
    assert h["count"].tolist() == plain and sum(plain) == sum(texts.lengths)
    last = D.activation_histogram(acts, layer, neuron, pos=-1, bins=3)
    assert last["count"].sum() == len(TEXTS)


def test_cluster_is_coloured_by_the_neuron_at_each_prompts_token(gpt2_model, texts, acts):
    df = D.cluster_by_neuron(acts, 1, 11, -1)
    last = [hook_post(gpt2_model, texts, i)[1, -1, 11].item() for i in range(len(TEXTS))]
    assert np.allclose(df.activation, last, atol=1e-5) and (df.neuron == 11).all()
    assert df[["x", "y"]].equals(N.cluster_prompts(acts, 1, -1)[["x", "y"]])


def test_top_activating_gives_context_on_both_sides_of_a_long_odd_prompt(acts, texts):
    df = N.top_activating(acts, 0, 3, k=50, context=4)
    row = df[(df.prompt == 4) & (df.pos > 5) & (df.pos < texts.lengths[4] - 5)].iloc[0]
    toks = texts.str_tokens[4]
    p = int(row.pos)
    assert row.left == "".join(toks[p - 4:p]) and row.right == "".join(toks[p + 1:p + 5])


def test_bad_indices_are_named(acts, texts):
    with pytest.raises(ValueError, match="prompt 5 is out of range: the dataset has 5 prompts"):
        D.token_activations(acts, 5, 0)
    with pytest.raises(ValueError, match=f"token 99 is out of range: prompt 2 has {texts.lengths[2]} tokens"):
        D.token_activations(acts, 2, 99)
    with pytest.raises(ValueError, match="bins must be from 1 to 1000, not 0"):
        D.activation_histogram(acts, 0, 0, bins=0)


# -- CLI -----------------------------------------------------------------------------------------------
def run(argv: list[str]) -> int:
    parser = common.Parser(prog="python -m patching")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=common.Parser)
    cli_neurons.add_commands(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return common.EXIT_BAD_INPUT


@pytest.fixture
def texts_csv(tmp_path):
    path = tmp_path / "prompts.csv"
    pd.DataFrame({"text": TEXTS, "label": LABELS}).to_csv(path, index=False)
    return path


def _csv(capsys) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(capsys.readouterr().out), keep_default_na=False)


def test_cli_search_token_histogram_cluster(tiny_dirs, texts_csv, acts, capsys):
    m = ["--model", str(tiny_dirs["gpt2"]), "--texts", str(texts_csv)]
    assert run(["neurons", *m, "--view", "search", "--search", "^(paris|the)", "--regex"]) == 0
    df = _csv(capsys)
    assert df.prompt.tolist() == [0, 2] and df.tokens.tolist() == [acts.texts.lengths[0], acts.texts.lengths[2]]
    assert run(["neurons", *m, "--view", "token", "--prompt", "4", "--pos", "-1"]) == 0
    df = _csv(capsys)
    assert np.allclose(df.activation, D.token_activations(acts, 4, -1).activation, atol=1e-5)
    assert run(["neurons", *m, "--view", "histogram", "--layer", "1", "--neuron", "9", "--bins", "7",
                "--pos", "all"]) == 0
    assert _csv(capsys)["count"].tolist() == D.activation_histogram(acts, 1, 9, bins=7)["count"].tolist()
    assert run(["neurons", *m, "--view", "cluster", "--layer", "1", "--neuron", "11"]) == 0
    assert np.allclose(_csv(capsys).activation, D.cluster_by_neuron(acts, 1, 11).activation, atol=1e-5)


def test_cli_refuses_a_bad_file_and_an_over_budget_set(tiny_dirs, tmp_path, texts_csv, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfebinary")
    m = ["--model", str(tiny_dirs["gpt2"])]
    assert run(["neurons", *m, "--texts", str(bad)]) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err
    assert run(["neurons", *m, "--texts", str(texts_csv), "--max-memory", "0.01"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the memory budget is 10.2 KiB" in err
    assert run(["neurons", *m, "--texts", str(texts_csv), "--view", "histogram"]) == 2
    assert "--view histogram needs --neuron N" in capsys.readouterr().err
