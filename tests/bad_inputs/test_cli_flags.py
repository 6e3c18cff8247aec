"""Issue 18, the CLI's part, class by class: every flag refuses an odd value with exit 2 and one
short, escaped line naming it (classes 3, 5, 7), outputs never overwrite an input and are written
atomically, only on success (class 6), and nothing printed carries raw control characters
(class 8). Most cases are refused before a model loads, so the table is fast.

`FLAG_CASES` is the table: (name, argv, regex the one `error: ...` line must match).
"""
from __future__ import annotations

import errno
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bad_inputs.cases import CLEAN, CORRUPT, HEADER, ROW

ROOT = Path(__file__).resolve().parents[2]
PAIR = ["--clean", CLEAN, "--corrupt", CORRUPT, "--answer", " Mary", "--wrong", " John", "--device", "cpu",
        "--quiet"]
HUGE = "9" * 30
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")      # C0 but \t \n, DEL, C1

FLAG_CASES = (
    # -- class 3: one field asking for unbounded work ---------------------------------------------
    ("layers_billion", ["sweep", *PAIR, "--kind", "resid_pre", "--layers", "0-1000000000"],
     r"layers '0-1000000000' names 1,000,000,001 entries, more than any model has \(at most 100,000\)"),
    ("layers_ten_million", ["sweep", *PAIR, "--kind", "resid_pre", "--layers", "0-10000000"],
     r"layers '0-10000000' names 10,000,001 entries"),
    ("positions_many_ranges", ["sweep", *PAIR, "--kind", "resid_pre", "--positions", "0-9," * 20_000],
     r"positions '0-9,0-9,.*…' names 100,010 entries"),
    ("heads_many", ["sweep", *PAIR, "--kind", "head_out", "--heads", "0.1," * 100_001],
     r"heads '0.1,0.1,.*…' names 100,001 entries"),
    ("layers_huge_number", ["sweep", *PAIR, "--kind", "resid_pre", "--layers", "1" + "0" * 5000],
     r"bad layers '1000.*…' in '1000.*…'; write numbers and ranges like '0-5,8'"),
    ("pairs_dev_zero", ["sweep", "--kind", "resid_pre", "--device", "cpu", "--pairs", "/dev/zero"],
     r"pairs CSV has a line longer than 1,048,576 characters; give one pair per line"),
    ("task_n_huge", ["neurons", "--device", "cpu", "--n", HUGE], r"argument --n: '9{30}' is not a whole number from 1 to 10000"),
    ("task_seed_huge", ["circuit", "--device", "cpu", "--components", "MLP0", "--seed", HUGE],
     r"argument --seed: '9{30}' is not a whole number from 0 to 4294967295"),
    # -- class 5: user mistakes that were internal errors -------------------------------------------
    ("device_meta", ["sweep", *PAIR, "--kind", "resid_pre", "--device", "meta"],
     r"unusable device 'meta'; use auto, cpu, cuda, cuda:N or mps"),
    ("device_xla", ["sweep", *PAIR, "--kind", "resid_pre", "--device", "xla:0"], r"unusable device 'xla:0'"),
    ("clean_lone_surrogate", ["sweep", *PAIR, "--kind", "resid_pre", "--clean", CLEAN[:-3] + "\ud800"],
     r"the clean text has a lone surrogate '\\ud800' at character \d+, which is not valid Unicode"),
    ("answer_lone_surrogate", ["sweep", *PAIR, "--kind", "resid_pre", "--answer", "\udfff"],
     r"the answer text has a lone surrogate '\\udfff' at character 0"),
    ("steps_huge", ["attribution", *PAIR, "--method", "ig", "--steps", HUGE],
     r"argument --steps: '9{30}' is not a whole number from 1 to 1024"),
    ("neurons_layer_huge", ["neurons", "--device", "cpu", "--layer", HUGE],
     r"argument --layer: '9{30}' is not a whole number from -1000000 to 1000000"),
    ("neurons_neuron_huge", ["neurons", "--view", "profile", "--neuron", HUGE], r"argument --neuron: '9{30}'"),
    ("neurons_k_huge", ["neurons", "--k", HUGE], r"argument --k: '9{30}'"),
    ("neurons_pos_huge", ["neurons", "--device", "cpu", "--n", "4", "--pos", HUGE],
     r"--pos must be a whole number from -1000000 to 1000000 or 'all', not '9{30}'"),
    ("weights_head_huge", ["weights", "--view", "svd-tokens", "--head", HUGE], r"argument --head: '9{30}'"),
    ("weights_pair_huge", ["weights", "--pair", HUGE], r"argument --pair: '9{30}' is not a whole number from 0 to 10000"),
    ("circuit_top_huge", ["circuit", "--curve-from", "head_out", "--top", HUGE], r"argument --top: '9{30}'"),
    ("circuit_seed_huge", ["circuit", "--components", "MLP0", "--ablation-seed", HUGE],
     r"argument --ablation-seed: '9{30}' is not a whole number from 0 to 4294967295"),
    # -- class 7: vague messages ---------------------------------------------------------------------
    ("kind_commas", ["sweep", *PAIR, "--kind", ",,,"],
     r"--kind ',,,' names no kind; give one or more of resid_pre, .*, comma-separated"),
    ("kind_one_unknown", ["sweep", *PAIR, "--kind", "resid_pre,bogus"],
     r"unknown kind 'bogus'; choose one of resid_pre, .* \(in --kind\)"),
    ("kinds_commas", ["attribution", *PAIR, "--kinds", ",,,"], r"--kinds ',,,' names no kind; give one or more of"),
    ("max_memory_inf", ["sweep", *PAIR, "--kind", "resid_pre", "--max-memory", "inf"],
     r"argument --max-memory: 'inf' is not a memory budget; give megabytes as a number above 0"),
    ("max_memory_nan", ["path", *PAIR, "--max-memory", "nan"], r"'nan' is not a memory budget"),
    ("max_memory_overflow", ["attribution", *PAIR, "--max-memory", "1e400"], r"'1e400' is not a memory budget"),
    ("max_memory_negative", ["sweep", *PAIR, "--kind", "resid_pre", "--max-memory", "-5"],
     r"'-5' is not a memory budget"),
    ("circuit_components_commas", ["circuit", *PAIR[:-1], "--components", ",,,"],
     r"--components ',,,' names no component; write L<layer>H<head>, MLP<layer> or ATTN<layer>"),
    ("circuit_keep_commas", ["circuit", *PAIR[:-1], "--components", "MLP0", "--keep", ", ,"],
     r"--keep ', ,' names no component"),
    ("perplexity_nan", ["neurons", "--view", "cluster", "--method", "tsne", "--perplexity", "nan"],
     r"argument --perplexity: 'nan' is not a number above 0"),
    ("out_empty", ["sweep", *PAIR, "--kind", "resid_pre", "--out", ""], r"--out is empty; give a file path, or - for stdout"),
    ("out_directory", ["sweep", *PAIR, "--kind", "resid_pre", "--out", "/tmp"],
     r"--out '/tmp' is a directory; give a file path inside it"),
    ("out_missing_folder", ["path", *PAIR, "--out", "/nonexistent-dir/out.csv"],
     r"--out '/nonexistent-dir/out.csv': the folder '/nonexistent-dir' does not exist"),
    ("save_run_directory", ["sweep", *PAIR, "--kind", "resid_pre", "--save-run", "/tmp"],
     r"--save-run '/tmp' is a directory"),
    ("answer_emoji_leading_space", ["sweep", *PAIR, "--kind", "resid_pre", "--answer", " 🦄"],
     r"answer ' 🦄' is 5 tokens .*not a single token; the model has no single token for it \(it splits into bytes\)"),
    # -- class 8: control characters echoed back ------------------------------------------------------
    ("unrecognized_escape_argument", ["sweep", *PAIR, "--kind", "resid_pre", "\x1b]0;pwned\x07"],
     r"unrecognized arguments: \\x1b\]0;pwned\\x07 \(see `python -m patching --help`\)"),
    ("pairs_path_with_escape", ["sweep", "--kind", "resid_pre", "--device", "cpu", "--pairs", "/nonexistent/\x1b[2J.csv"],
     r"pairs file '/nonexistent/\\x1b\[2J.csv' does not exist"),
)


@pytest.fixture(scope="module")
def default_model():
    from patching.model.loading import load_model
    return load_model("default")


@pytest.fixture
def default_model_once(monkeypatch, default_model):
    """`load_model('default')` loads once for the module (the real function for other names)."""
    import patching.model.loading as models
    real = models.load_model
    monkeypatch.setattr(models, "load_model",
                        lambda name="default", *a, **k: default_model if name == "default" else real(name, *a, **k))


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from patching.cli import main
    try:
        rc = main(argv)
    except SystemExit as exc:            # argparse's own errors
        rc = exc.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_error_line(rc: int, err: str, pattern: str) -> str:
    assert rc == 2, f"exit {rc}: {err[:300]!r}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[:600]
    assert "Traceback" not in err
    assert len(lines[0]) <= 500, f"{len(lines[0])}-character message"
    assert not CONTROL.search(err), f"raw control characters: {err[:300]!r}"
    assert re.search(pattern, lines[0]), f"{lines[0]!r} does not match {pattern!r}"
    return lines[0]


@pytest.mark.parametrize("name,argv,pattern", FLAG_CASES, ids=[c[0] for c in FLAG_CASES])
def test_flag(name, argv, pattern, default_model_once, capsys):
    start = time.perf_counter()
    rc, _out, err = run_cli(argv, capsys)
    assert time.perf_counter() - start < 10, name
    assert_one_error_line(rc, err, pattern)


# -- class 6: data loss ---------------------------------------------------------------------------
@pytest.fixture
def pairs_file(tmp_path) -> Path:
    path = tmp_path / "pairs.csv"
    path.write_bytes(HEADER + ROW)
    return path


@pytest.mark.parametrize("flag", ["--out", "--save-run"])
@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink"])
def test_output_never_overwrites_pairs(flag, spelling, pairs_file, tmp_path, default_model_once, capsys):
    target = {"same": str(pairs_file), "dotdot": str(tmp_path / "sub" / ".." / "pairs.csv"),
              "symlink": str(tmp_path / "link.csv")}[spelling]
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.csv").symlink_to(pairs_file)
    before = pairs_file.read_bytes()
    rc, _out, err = run_cli(["sweep", "--kind", "resid_pre", "--device", "cpu", "--quiet", "--pairs", str(pairs_file),
                             flag, target], capsys)
    assert_one_error_line(rc, err, rf"{flag} '.*' is the same file as --pairs; write the results to another file")
    assert pairs_file.read_bytes() == before


def test_out_and_save_run_same_file(pairs_file, tmp_path, default_model_once, capsys):
    out = tmp_path / "result"
    rc, _o, err = run_cli(["sweep", "--kind", "resid_pre", "--device", "cpu", "--pairs", str(pairs_file),
                           "--out", str(out), "--save-run", str(out)], capsys)
    assert_one_error_line(rc, err, r"--save-run '.*result' is the same file as --out")
    assert not out.exists()


@pytest.mark.parametrize("command", [["neurons", "--view", "shortlist"], ["weights", "--view", "rank-k", "--head", "0"],
                                     ["path"], ["attribution"]])
def test_other_commands_never_overwrite_pairs(command, pairs_file, default_model_once, capsys):
    before = pairs_file.read_bytes()
    rc, _o, err = run_cli([*command, "--device", "cpu", "--pairs", str(pairs_file), "--out", str(pairs_file)], capsys)
    assert_one_error_line(rc, err, r"--out '.*pairs.csv' is the same file as --pairs")
    assert pairs_file.read_bytes() == before


def test_circuit_csv_never_overwrites_pairs(pairs_file, default_model_once, capsys):
    before = pairs_file.read_bytes()
    rc, _o, err = run_cli(["circuit", "--device", "cpu", "--components", "MLP0", "--pairs", str(pairs_file),
                           "--csv", str(pairs_file)], capsys)
    assert_one_error_line(rc, err, r"--csv '.*pairs.csv' is the same file as --pairs")
    assert pairs_file.read_bytes() == before


def test_refused_save_run_writes_no_csv(pairs_file, tmp_path, default_model_once, capsys):
    out = tmp_path / "out.csv"
    rc, _o, err = run_cli(["sweep", "--kind", "resid_pre,attn_out", "--device", "cpu", "--quiet",
                           "--pairs", str(pairs_file), "--out", str(out), "--save-run", str(tmp_path / "r.zip")], capsys)
    assert_one_error_line(rc, err, r"--save-run writes one run; this sweep has 2 kinds \(resid_pre, attn_out\); run one kind at a time")
    assert not out.exists() and not (tmp_path / "r.zip").exists()


def test_failed_save_run_keeps_the_old_csv(pairs_file, tmp_path, default_model_once, capsys):
    """The run file is written first: when it cannot be, the earlier --out file is untouched."""
    out = tmp_path / "out.csv"
    out.write_text("old results\n")
    rc, _o, err = run_cli(["sweep", "--kind", "resid_pre", "--device", "cpu", "--quiet", "--pairs", str(pairs_file),
                           "--out", str(out), "--save-run", str(tmp_path / "no-such-dir" / "r.zip")], capsys)
    assert rc == 2 and "Traceback" not in err
    assert out.read_text() == "old results\n"


def test_out_is_atomic_and_leaves_no_temp_file(pairs_file, tmp_path, default_model_once, capsys):
    out = tmp_path / "out.csv"
    rc, _o, err = run_cli(["sweep", "--kind", "resid_pre", "--device", "cpu", "--quiet", "--pairs", str(pairs_file),
                           "--out", str(out)], capsys)
    assert rc == 0, err
    assert out.read_text().startswith("kind,direction,metric,layer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "pairs.csv"]


def test_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    """A write that fails half-way (e.g. the disk fills) leaves the old file and no temp file."""
    from patching.cli import common
    out = tmp_path / "out.csv"
    out.write_text("old\n")
    real_replace = os.replace

    def full(*_a):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(common.os, "replace", full)
    with pytest.raises(common.BadInput, match=r"cannot write '.*': No space left on device"):
        common.write("new\n", str(out))
    monkeypatch.setattr(common.os, "replace", real_replace)
    assert out.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_out_to_a_full_device(pairs_file, default_model_once, capsys):
    rc, _o, err = run_cli(["sweep", "--kind", "resid_pre", "--device", "cpu", "--quiet", "--pairs", str(pairs_file),
                           "--out", "/dev/full"], capsys)
    assert_one_error_line(rc, err, r"cannot write '/dev/full': No space left on device")


class FullStream(io.StringIO):
    """stdout on a full device: every write fails with ENOSPC."""

    def write(self, _text):
        raise OSError(errno.ENOSPC, "No space left on device")

    def isatty(self):
        return False


def test_stdout_to_a_full_device(pairs_file, default_model_once, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", FullStream())
    rc, _o, err = run_cli(["sweep", "--kind", "resid_pre", "--device", "cpu", "--quiet", "--pairs", str(pairs_file),
                           "--out", "-"], capsys)
    assert_one_error_line(rc, err, r"cannot write the output to stdout: No space left on device")


@pytest.mark.slow
def test_stdout_to_dev_full_subprocess(pairs_file):
    """The real command with stdout on /dev/full: exit 2 and one line, no traceback at exit."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "patching", "sweep", "--kind", "resid_pre", "--device", "cpu",
                               "--quiet", "--pairs", str(pairs_file)], cwd=ROOT, stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "No space left on device" in proc.stderr


# -- class 8: what reaches a terminal -------------------------------------------------------------
class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_csv_to_a_terminal_is_escaped(tmp_path, default_model_once, monkeypatch, capsys):
    """Tokens with ESC / BEL in the result CSV are escaped on a terminal, kept as they are in a pipe."""
    clean = "When Mary and John went to the store,\x1b John gave a drink to"
    corrupt = "When Mary and John went to the store,\x1b Mary gave a drink to"
    argv = ["sweep", "--kind", "resid_pre", "--device", "cpu", "--quiet", "--clean", clean, "--corrupt", corrupt,
            "--answer", " Mary", "--wrong", " John", "--layers", "0"]
    terminal, piped = Terminal(), sys.stdout
    sys.stdout = terminal
    try:
        rc, _o, err = run_cli(argv, capsys)
    finally:
        sys.stdout = piped
    assert rc == 0, err
    assert "\\x1b" in terminal.getvalue() and not CONTROL.search(terminal.getvalue())
    rc, out, err = run_cli(argv, capsys)
    assert rc == 0, err
    assert "\x1b" in out                                   # a pipe gets the data unchanged


def test_internal_error_is_escaped_and_short(monkeypatch, capsys):
    """Even an internal error's text is one escaped line, cut short."""
    from patching.cli import sweep as cli_sweep

    def boom(_args):
        raise RuntimeError("\x1b[2J" + "x" * 10_000 + "\nsecond line")
    monkeypatch.setattr(cli_sweep, "cmd_sweep", boom)
    rc, _o, err = run_cli(["sweep", "--kind", "resid_pre"], capsys)
    assert rc == 1
    line = err.strip()
    assert line.startswith("internal error: RuntimeError: \\x1b[2J") and "\n" not in line
    assert len(line) < 1100 and not CONTROL.search(err)


def test_terminal_safe_keeps_text_and_layout():
    from patching.cli.common import terminal_safe
    assert terminal_safe("Ünïcödé 日本語\tcol\nrow") == "Ünïcödé 日本語\tcol\nrow"
    assert terminal_safe("\x1b[31m\x07\x9b\x7f\r") == "\\x1b[31m\\x07\\x9b\\x7f\\r"
