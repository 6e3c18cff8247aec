"""The CLI as users run it: a subprocess, exit codes 0 / 2 / 1, one-line errors, CSV out."""
import io
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from patching.cli import main
from tests.conftest import IOI

ROOT = Path(__file__).resolve().parent.parent
CLEAN, CORRUPT = IOI[0][0], IOI[0][1]


def run(*args, timeout=120):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "patching", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def sweep_args(model_dir, **over):
    args = {"--model": str(model_dir), "--clean": CLEAN, "--corrupt": CORRUPT, "--answer": " Mary",
            "--wrong": " John", "--kind": "resid_pre", "--quiet": None}
    args.update(over)
    out = ["sweep"]
    for k, v in args.items():
        if v is False:
            continue
        out += [k] if v is None else [k, v]
    return out


def test_sweep_writes_contract_csv_to_stdout(tiny_dirs):
    res = run(*sweep_args(tiny_dirs["gpt2"], **{"--kind": "resid_pre,head_out", "--per-position": None}))
    assert res.returncode == 0, res.stderr
    df = pd.read_csv(io.StringIO(res.stdout))
    assert list(df.columns[:9]) == ["kind", "direction", "metric", "layer", "pos", "head", "token", "value", "normalized"]
    assert len(df[df["kind"] == "resid_pre"]) == 2 * 15 and len(df[df["kind"] == "head_out"]) == 2 * 15 * 4


def test_sweep_with_pairs_file_and_out_path(tiny_dirs, tmp_path):
    pairs = tmp_path / "pairs.csv"
    pd.DataFrame(IOI, columns=["clean", "corrupt", "answer", "wrong"]).to_csv(pairs, index=False)
    out = tmp_path / "out.csv"
    args = ["sweep", "--model", str(tiny_dirs["llama"]), "--pairs", str(pairs), "--kind", "head_k",
            "--layers", "1", "--direction", "noise", "--metric", "prob_diff", "--out", str(out), "--quiet"]
    res = run(*args)
    assert res.returncode == 0, res.stderr
    df = pd.read_csv(out)
    assert len(df) == 2 and set(df["direction"]) == {"noise"} and "stderr" in df.columns


@pytest.mark.parametrize("over,message", [
    ({"--corrupt": "When Mary went to the store, Mary gave a drink to"}, "same number of tokens"),
    ({"--answer": " Maryland"}, "answer ' Maryland' is"),
    ({"--model": "/no/such/dir"}, "model directory '/no/such/dir' does not exist"),
    ({"--model": "surely-not-a-model"}, "unknown model 'surely-not-a-model'"),
    ({"--model": "someorg/not-cached"}, "unknown model 'someorg/not-cached'"),
    ({"--kind": "bogus"}, "unknown kind 'bogus'"),
    ({"--layers": "0-x"}, "bad layers"),
    ({"--metric": "nope"}, "unknown metric 'nope'"),
    ({"--clean": False}, "missing --clean"),
    ({"--positions": "99"}, "positions [99] out of range"),
])
def test_bad_input_exits_2_with_one_line(tiny_dirs, capsys, over, message):
    code = main(sweep_args(tiny_dirs["gpt2"], **over))      # in-process: same code path, faster
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [l for l in err.splitlines() if l.strip() and "Loading weights" not in l]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_bad_pairs_file(tiny_dirs, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("clean,corrupt\nx,y\n")
    assert main(["sweep", "--model", str(tiny_dirs["gpt2"]), "--pairs", str(bad), "--kind", "resid_pre"]) == 2
    assert "missing column(s) answer, wrong" in capsys.readouterr().err


def test_local_dir_without_safetensors_is_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    assert main(["sweep", "--model", str(tmp_path), "--clean", "a", "--corrupt", "b", "--answer", " a",
                 "--wrong", " b", "--kind", "resid_pre"]) == 2
    assert "no *.safetensors weights" in capsys.readouterr().err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "--direction", "sideways"])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_models_lists_something():
    res = run("models")
    assert res.returncode == 0


def test_path_and_attribution_commands(tiny_dirs, tmp_path, capsys):
    common = ["--model", str(tiny_dirs["gpt2"]), "--clean", CLEAN, "--corrupt", CORRUPT,
              "--answer", " Mary", "--wrong", " John", "--quiet"]
    assert main(["path", *common, "--receivers", "q:1.0,q:1.1", "--mode", "direct",
                 "--out", str(tmp_path / "path.csv")]) == 0
    df = pd.read_csv(tmp_path / "path.csv")
    assert {"sender", "receiver"} <= set(df.columns) and len(df) == 4          # the 4 layer-0 heads
    assert main(["attribution", *common, "--kinds", "resid_pre,head_out", "--out", str(tmp_path / "a.csv")]) == 0
    assert set(pd.read_csv(tmp_path / "a.csv")["kind"]) == {"resid_pre", "head_out"}
    assert main(["attribution", *common, "--edges", "--out", str(tmp_path / "e.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "e.csv")) > 0
    assert main(["path", *common, "--receivers", "q:9.0"]) == 2
    assert "q:9.0" in capsys.readouterr().err
