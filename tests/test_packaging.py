"""`pip install .` gives a working copy: the console script runs a sweep on the shipped model from
another folder, with the model and CSS read from the installed package data."""
from __future__ import annotations

import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_ROOTS = ("patching", "metrics", "dashboard", "patchboard")


def test_every_package_directory_is_in_the_wheel():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for top in PACKAGE_ROOTS
             for p in (ROOT / top).rglob("__init__.py")}
    assert found - listed == set(), f"add to pyproject.toml's packages: {sorted(found - listed)}"
    assert listed - found == {"patchboard_assets"}


def test_the_console_script_dispatches_to_both_front_ends(capsys):
    from patchboard.__main__ import main
    assert main(["worker"]) == 2                           # the dashboard's worker: needs --redis-url
    assert "worker needs --redis-url" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--help"])
    assert exc.value.code == 0 and "--kind" in capsys.readouterr().out


@pytest.mark.slow
def test_an_installed_copy_runs_a_sweep_from_another_folder(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels)], check=True, cwd=tmp_path, capture_output=True)
    (wheel,) = wheels.glob("patchboard-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the pinned dependencies come from this environment; the project itself only from the wheel
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    out = elsewhere / "out.csv"
    res = subprocess.run([str(venv / "bin" / "patchboard"), "sweep", "--model", "default",
                          "--clean", "When Mary and John went to the store, John gave a drink to",
                          "--corrupt", "When Mary and John went to the store, Mary gave a drink to",
                          "--answer", " Mary", "--wrong", " John", "--kind", "resid_pre", "--out", str(out)],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    df = pd.read_csv(out)
    assert list(df.columns[:9]) == ["kind", "direction", "metric", "layer", "pos", "head", "token", "value",
                                    "normalized"] and len(df) > 0
    where = subprocess.run([str(py), "-c", "import patching.paths as p, patching; print(patching.__file__); "
                            "print(p.in_checkout(), p.models_dir())"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.split("\n")
    assert where[0].startswith(str(site)) and where[1].startswith("False") and str(site) in where[1]
