"""The bad-input corpus: one table of cases, each run against the CLI, the Python API and the
dashboard (handlers and callbacks) by `test_bad_inputs.py`.

A case is what a user types or uploads. `expect` is a regular expression the message must match
(it names the bad value and what is accepted); `None` marks input that is odd but valid (BOM,
CRLF, control characters, formula-like cells) and must simply work. `dashboard` overrides
`expect` where the page answers differently on purpose: it offers only the server's models and
registry metrics, so an arbitrary path or `package.module:function` is refused there by name.

Special values, resolved by the test's fixtures:
- model `@not-a-model` (a directory of text files), `@pickle` (config.json + pytorch_model.bin),
  `@garbage-safetensors` (config.json + a model.safetensors of random bytes), `@custom-code`
  (real weights, but config.json maps to the directory's own Python code), `@file` (a file);
- metric `@raises:<name>` -> a function in a temporary module (`boom`, `scalar`, `import_error`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
HEADER = b"clean,corrupt,answer,wrong\n"
ROW = f'"{CLEAN}","{CORRUPT}", Mary, John\n'.encode()
NOT_OFFERED = r"is not offered by this server; choose one of 'default'"
NO_USER_METRICS = r"unknown metric .*; choose one of logit_diff, "


def _blank_lines() -> bytes:
    return HEADER + b"\n" * 5_000_000 + ROW                  # 5 MB of blank lines, then a row


def _million_rows() -> bytes:
    return HEADER + b"a,b,c,d\n" * 1_000_000                 # 8 MB: under the upload cap


@dataclass(frozen=True)
class Case:
    name: str
    expect: str | None                      # regex for the message; None: must be accepted
    clean: str = CLEAN
    corrupt: str = CORRUPT
    answer: str = " Mary"
    wrong: str = " John"
    csv: object = None                      # bytes, or a callable returning bytes: a pairs CSV
    model: str = "default"
    kind: str = "resid_pre"
    metric: str = "logit_diff"
    direction: str = "denoise"
    layers: str = ""
    positions: str = ""
    heads: str = ""
    per_position: bool = False
    dashboard: str | None = field(default="same")   # the page's message when it differs
    max_seconds: float = 15.0               # per surface, on a quiet machine it is far less

    def csv_bytes(self) -> bytes | None:
        return self.csv() if callable(self.csv) else self.csv

    def expect_for(self, surface: str) -> str | None:
        return self.expect if surface != "dashboard" or self.dashboard == "same" else self.dashboard


CASES: tuple[Case, ...] = (
    # -- prompts and tokens -------------------------------------------------------------------
    Case("mismatched_token_lengths", r"same number of tokens: clean 15 tokens .* corrupt 16 tokens .*first differ at position 8",
         corrupt="When Mary and John went to the big shop, Mary gave a drink to"),
    Case("answer_multi_token", r"answer ' Marianneville' is \d+ tokens \[.*\], not a single token",
         answer=" Marianneville"),
    Case("wrong_multi_token", r"wrong ' Johnsonville' is \d+ tokens .*not a single token", wrong=" Johnsonville"),
    Case("answer_unknown_token_emoji", r"answer '🦄' is 4 tokens .*not a single token; the model has no single "
         r"token for it \(it splits into bytes\)", answer="🦄"),
    Case("answer_zero_width_space", r"answer ' Mary\\u200b' is 4 tokens", answer=" Mary\u200b"),
    Case("answer_empty", r"the answer token is empty; give one token, e.g. ' Mary'", answer=""),
    Case("wrong_empty", r"the wrong token is empty", wrong=""),
    Case("answer_equals_wrong", r"answer and wrong are the same token ' Mary'; wrong must be a different token",
         wrong=" Mary"),
    Case("clean_empty", r"the clean prompt is empty", clean=""),
    Case("corrupt_empty", r"the corrupt prompt is empty", corrupt=""),
    Case("clean_whitespace_only", r"the clean prompt is empty", clean="  \n\t "),
    Case("prompt_100kB", r"clean prompt is 5000\d tokens, longer than the model's context of 128 tokens",
         clean="a " * 50_000, corrupt="b " * 50_000, max_seconds=5),
    Case("prompt_100kB_mismatched", r"clean prompt is 5000\d tokens, longer than the model's context of 128",
         clean="a " * 50_000, corrupt="b " * 40_000, max_seconds=5),
    Case("prompt_longer_than_context", r"clean prompt is 15\d tokens, longer than the model's context of 128",
         clean="Mary and John " * 50, corrupt="John and Mary " * 50),
    Case("control_characters_mismatch", r"same number of tokens: .*\\x00",
         clean="When Mary\x00 and John\x07 went", corrupt="When John and Mary went"),
    Case("control_characters_valid", None, clean="When Mary\x07 and John went to the store,\x1b John gave a drink to",
         corrupt="When Mary\x07 and John went to the store,\x1b Mary gave a drink to"),
    Case("clean_lone_surrogate", r"the clean text has a lone surrogate '\\ud800' at character 55, which is not "
         r"valid Unicode; give UTF-8 text", clean=CLEAN[:-3] + "\ud800"),
    Case("answer_lone_surrogate", r"the answer text has a lone surrogate '\\udc80' at character 1", answer=" \udc80"),
    Case("answer_emoji_leading_space", r"answer ' 🦄' is 5 tokens .*not a single token; the model has no single "
         r"token for it \(it splits into bytes\)", answer=" 🦄"),
    Case("mixed_unicode_valid", None, clean="Ünïcödé 日本語 עברית: Mary and John, John gave to",
         corrupt="Ünïcödé 日本語 עברית: Mary and John, Mary gave to"),
    # -- pairs CSV --------------------------------------------------------------------------------
    Case("csv_empty", r"pairs CSV is empty; expected a header clean,corrupt,answer,wrong", csv=b""),
    Case("csv_blank_lines", r"pairs CSV is empty", csv=b"\n\n\n"),
    Case("csv_header_only", r"pairs CSV has a header but no rows", csv=HEADER),
    Case("csv_missing_column", r"missing column\(s\) wrong; header is 'clean,corrupt,answer', expected clean,corrupt,answer,wrong",
         csv=b"clean,corrupt,answer\nA B,A C, B\n"),
    Case("csv_no_header", r"missing column\(s\) clean, corrupt, answer, wrong",
         csv=ROW + ROW),
    Case("csv_extra_columns_valid", None, csv=b"clean,corrupt,answer,wrong,note\n" + ROW.rstrip(b"\n") + b",x\n"),
    Case("csv_short_row", r"pairs CSV row 3 has 2 cells, expected 4", csv=HEADER + ROW + b"a,b\n"),
    Case("csv_bom_valid", None, csv=b"\xef\xbb\xbf" + HEADER + ROW),
    Case("csv_crlf_valid", None, csv=(HEADER + ROW + ROW).replace(b"\n", b"\r\n")),
    Case("csv_million_rows", r"too many pairs: more than 10000", csv=_million_rows, max_seconds=8),
    Case("csv_blank_lines_flood", r"pairs CSV has more than 40,000 rows \(blank ones included\); at most 10,000 pairs",
         csv=_blank_lines, max_seconds=5),
    Case("csv_one_huge_line", r"pairs CSV has a line longer than 1,048,576 characters", csv=HEADER + b"x" * 2_000_000,
         max_seconds=5),
    Case("csv_encoded_surrogate", r"not UTF-8",
         csv=HEADER + "a\\udcff,b, c, d\n".encode().replace(b"\\udcff", "\udcff".encode("utf-8", "surrogatepass"))),
    Case("csv_latin1_bytes", r"not UTF-8", csv=HEADER + "Zoë,Zoé, é, è\n".encode("latin-1")),
    Case("csv_binary_png", r"not UTF-8", csv=b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"),
    Case("csv_empty_answer_cell", r"pairs CSV row 2: the answer token is empty", csv=HEADER + b"A B,A C,, C\n"),
    Case("csv_mixed_lengths", r"all pairs must have the same token length unless they name role positions: this set "
                              r"has 15 tokens \(pair 0\), \d+ tokens \(pair 1\); add a `positions` column",
         csv=HEADER + ROW + b"The cat sat,The dog sat, on, in\n"),
    Case("csv_formula_cells_valid", None,
         csv=HEADER + b'"=1+2 Mary and John","=1+2 John and Mary", Mary, John\n'
                      b'"+1+2 Mary and John","+1+2 John and Mary", Mary, John\n'
                      b'"-1+2 Mary and John","-1+2 John and Mary", Mary, John\n'
                      b'"@SUM Mary and John","@SUM John and Mary", Mary, John\n'),
    Case("csv_unterminated_quote", r"pairs CSV row 2 has 1 cells, expected 4 \(clean,corrupt,answer,wrong\) "
         r"\(an unclosed \" quote\?\)",
         csv=HEADER + b'"A B,A C, B, C\n'),
    # -- models ---------------------------------------------------------------------------------
    Case("unknown_model_name", r"unknown model 'no-such-model-xyz': .*use 'default', a directory with config.json "
         r"\+ model.safetensors", model="no-such-model-xyz", dashboard=r"model 'no-such-model-xyz' " + NOT_OFFERED),
    Case("unknown_hub_name", r"unknown model 'nobody/no-such-model'", model="nobody/no-such-model",
         dashboard=r"model 'nobody/no-such-model' " + NOT_OFFERED),
    Case("local_dir_not_a_model", r"model directory '.*' has no config.json", model="@not-a-model",
         dashboard=NOT_OFFERED),
    Case("model_dir_with_pickle", r"has no \*.safetensors weights; Patchboard loads weights only from safetensors",
         model="@pickle", dashboard=NOT_OFFERED),
    Case("model_dir_garbage_safetensors", r"cannot load model '.*': ", model="@garbage-safetensors",
         dashboard=NOT_OFFERED),
    Case("model_dir_with_custom_code", r"cannot load model '.*': it needs its own Python code \(trust_remote_code\), "
         r"which Patchboard never runs", model="@custom-code", dashboard=NOT_OFFERED),
    Case("model_path_is_a_file", r"model directory '.*' does not exist", model="@file", dashboard=NOT_OFFERED),
    # -- spec -----------------------------------------------------------------------------------
    Case("unknown_kind", r"unknown kind 'head_outt'; choose one of resid_pre, ", kind="head_outt"),
    Case("unknown_metric", r"unknown metric 'logit_dif'; choose one of logit_diff, ", metric="logit_dif"),
    Case("unknown_direction", r"direction must be 'denoise' or 'noise', not 'sideways'|invalid choice: 'sideways'",
         direction="sideways"),
    Case("layer_out_of_range", r"layers \[9\] out of range; this model/prompt has layers 0-3", layers="9"),
    Case("negative_layer", r"bad layers '-1' in '-1'; write numbers and ranges like '0-5,8'", layers="-1"),
    Case("layers_not_numbers", r"bad layers 'a-b'", layers="a-b"),
    Case("layers_billion_range", r"layers '0-1000000000' names 1,000,000,001 entries, more than any model has "
         r"\(at most 100,000\); leave it out to use all layers", layers="0-1000000000", max_seconds=2),
    Case("layers_ten_million_range", r"layers '0-10000000' names 10,000,001 entries", layers="0-10000000",
         max_seconds=2),
    Case("positions_many_ranges", r"positions '0-9,0-9,.*…' names 100,010 entries", positions="0-9," * 10_001,
         max_seconds=2),
    Case("heads_too_many", r"heads '0.1,0.1,.*…' names 100,001 entries", kind="head_out", heads="0.1," * 100_001,
         max_seconds=2),
    Case("layers_huge_number", r"bad layers '1000.*…' in '1000.*…'; write numbers", layers="1" + "0" * 5000),
    Case("head_out_of_range", r"heads \[7\] out of range; this model/prompt has heads 0-3", kind="head_out", heads="0.7"),
    Case("head_not_layer_dot_head", r"bad head '3' in '3'; write LAYER.HEAD pairs", kind="head_out", heads="3"),
    Case("heads_on_a_position_kind", r"heads apply to head kinds, not 'resid_pre'", heads="0.1"),
    Case("position_out_of_range", r"positions \[500\] out of range; this model/prompt has positions 0-14", positions="500"),
    # -- user metrics ---------------------------------------------------------------------------
    Case("user_metric_module_missing", r"cannot load metric 'no_such_module_xyz:fn': No module named",
         metric="no_such_module_xyz:fn", dashboard=NO_USER_METRICS),
    Case("user_metric_function_missing", r"cannot load metric '.*:missing': module .* has no attribute 'missing'",
         metric="@raises:missing",
         dashboard=NO_USER_METRICS),
    Case("user_metric_import_raises", r"cannot load metric '.*': importing '.*' raised RuntimeError: broken at import",
         metric="@raises:import_error", dashboard=NO_USER_METRICS),
    Case("user_metric_raises", r"metric '.*:boom' raised ZeroDivisionError: user bug", metric="@raises:boom",
         dashboard=NO_USER_METRICS),
    Case("user_metric_returns_scalar", r"metric '.*:scalar' must return a tensor of shape \[\d+\], got float",
         metric="@raises:scalar", dashboard=NO_USER_METRICS),
)

USER_METRICS_MODULE = '''
import torch

def boom(logits, inputs):
    raise ZeroDivisionError("user bug")

def scalar(logits, inputs):
    return 1.0
'''
IMPORT_ERROR_MODULE = 'raise RuntimeError("broken at import")\n'
