import io
import json

import pandas as pd
import pytest
import torch

from patching import PatchResult, PatchSpec, sweep
from patching.core.results import CSV_COLUMNS, safe_cell


def test_csv_has_contract_columns_in_order(gpt2_model, ioi_prompts):
    r = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out", per_position=True))
    df = pd.read_csv(io.StringIO(r.to_csv()))
    assert tuple(df.columns[:9]) == CSV_COLUMNS
    assert list(df.columns[9:]) == ["effect", "stderr", "ci_low", "ci_high", "n_pairs"]
    assert len(df) == 2 * 15 * 4
    row = df[(df["layer"] == 1) & (df["pos"] == 10) & (df["head"] == 2)].iloc[0]
    assert row.token == " John" and row.kind == "head_out" and row.direction == "denoise"
    assert abs(row.value - float(r.values[1, 10, 2])) < 1e-5


def test_empty_cells_for_axes_that_do_not_apply(gpt2_model, ioi_prompts):
    r = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out"))
    df = pd.read_csv(io.StringIO(r.to_csv()), keep_default_na=False)
    assert (df["pos"] == "").all() and (df["token"] == "").all()


def test_formula_cells_are_neutralised():
    assert safe_cell("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert safe_cell("+1") == "'+1" and safe_cell("-1") == "'-1" and safe_cell("@x") == "'@x"
    assert safe_cell(" ok") == " ok" and safe_cell(3.0) == 3.0


def test_token_cells_are_neutralised_in_csv(gpt2_model, ioi_prompts):
    r = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="resid_pre", layers=(0,)))
    evil = PatchResult(r.spec, r.axes, r.coords, r.per_pair, r.clean_baseline, r.corrupt_baseline,
                       ("=cmd()",) + r.str_tokens[1:], r.metric_clean_is)
    assert "'=cmd()" in evil.to_csv()


def test_json_round_trip_is_exact(gpt2_model, ioi_prompts):
    r = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_q", per_position=True, layers=(1,)))
    back = PatchResult.from_json(json.loads(json.dumps(r.to_json())))
    assert torch.equal(back.per_pair, r.per_pair) and back.spec == r.spec and back.coords == r.coords


def test_normalized_is_zero_at_corrupt_and_one_at_clean(gpt2_model, ioi_prompts):
    r = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="resid_pre"))
    assert abs(float(r.normalized[0, 0])) < 1e-9
    diff = ioi_prompts.differing_positions()[0]
    assert abs(float(r.normalized[0, diff]) - 1) < 1e-4


@pytest.mark.parametrize("cell", ["a\rb", "a\nb", "a\r\nb", "\r", 'q"\r"', "=cmd\r", "tab\there", ",\r,"])
def test_every_csv_row_parses_back_whole_whatever_a_cell_holds(cell):
    """A carriage return (or any line break) in a token or prompt must not split the row."""
    import csv
    import io

    import pandas as pd

    from patching.core.results import write_csv
    df = pd.DataFrame({"kind": ["resid_pre", "resid_pre"], "token": [cell, "ok"], "value": [1.5, -2.0]})
    text = write_csv(df)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert [len(r) for r in rows] == [3, 3, 3]
    back = rows[1][1]
    assert back.lstrip("'") == cell                     # intact (formula cells keep their leading quote)
    assert pd.read_csv(io.StringIO(text)).shape == (2, 3)
    assert not text.endswith("\r\n") and text.count("\n") >= 3
