"""Every case of the bad-input corpus (`cases.py`) against the three ways in:

- the CLI (`patching.cli.main` in-process, stderr and exit code; two cases also as a real
  `python -m patching` subprocess): exit 2 and one line `error: ...`, no traceback;
- the Python API (`load_model`, `PromptSet`, `PatchSpec`, `sweep`): a `ValueError` whose text
  names the bad value;
- the dashboard: the upload, live-validation and Run callbacks called directly (the functions
  the page runs), so the message is the one shown inline in `error-message`; the history keeps
  the run saved before the cases, and nothing is saved for a refused one.

Valid-but-odd cases (`expect=None`) must run on every surface.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dash import no_update

from tests.bad_inputs.cases import CASES, IMPORT_ERROR_MODULE, USER_METRICS_MODULE, Case

ROOT = Path(__file__).resolve().parents[2]
METRICS_MODULE = "pb_bad_input_metrics"
IMPORT_ERROR = "pb_bad_input_import_error"
FORMULA = ("=", "+", "-", "@")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")   # what a terminal must never get raw


@pytest.fixture(scope="module")
def default_model():
    from patching.model.loading import load_model
    return load_model("default")


@pytest.fixture(scope="module")
def specials(tmp_path_factory, default_model):
    """The special model directories and user-metric modules that cases name with '@'."""
    root = tmp_path_factory.mktemp("bad-inputs")
    not_model = root / "not-a-model"
    not_model.mkdir()
    (not_model / "README.txt").write_text("just text")
    pickle_dir = root / "pickle-model"
    pickle_dir.mkdir()
    (pickle_dir / "config.json").write_text((default_model.hf.config.to_json_string()))
    (pickle_dir / "pytorch_model.bin").write_bytes(b"\x80\x04\x95" + os.urandom(64))   # a pickle header
    garbage = root / "garbage-safetensors"
    garbage.mkdir()
    (garbage / "config.json").write_text(default_model.hf.config.to_json_string())
    (garbage / "model.safetensors").write_bytes(os.urandom(256))
    custom = root / "custom-code"
    shutil.copytree(ROOT / "assets" / "models" / "patchboard-tiny", custom,
                    ignore=shutil.ignore_patterns("*.png", "*.md", "*.jsonl"))
    cfg = json.loads((custom / "config.json").read_text())
    cfg.update(model_type="custom_x", auto_map={"AutoConfig": "configuration_x.XConfig",
                                                "AutoModelForCausalLM": "modeling_x.XModel"})
    (custom / "config.json").write_text(json.dumps(cfg))
    (custom / "modeling_x.py").write_text("raise SystemExit('custom code ran')\n")
    (custom / "configuration_x.py").write_text("raise SystemExit('custom code ran')\n")
    a_file = root / "model-file.safetensors"
    a_file.write_bytes(b"not a directory")
    mods = root / "modules"
    mods.mkdir()
    (mods / f"{METRICS_MODULE}.py").write_text(USER_METRICS_MODULE)
    (mods / f"{IMPORT_ERROR}.py").write_text(IMPORT_ERROR_MODULE)
    sys.path.insert(0, str(mods))
    yield {"@not-a-model": str(not_model), "@pickle": str(pickle_dir),
           "@garbage-safetensors": str(garbage), "@custom-code": str(custom), "@file": str(a_file), "modules": str(mods)}
    sys.path.remove(str(mods))
    for name in (METRICS_MODULE, IMPORT_ERROR):
        sys.modules.pop(name, None)


def resolve(case: Case, specials: dict) -> tuple[str, str]:
    """(model, metric) with the '@' names replaced by real paths / module references."""
    model = specials.get(case.model, case.model)
    metric = case.metric
    if metric.startswith("@raises:"):
        fn = metric.split(":", 1)[1]
        metric = f"{IMPORT_ERROR}:fn" if fn == "import_error" else f"{METRICS_MODULE}:{fn}"
    return model, metric


def check_message(message: str, pattern: str, case: Case, surface: str) -> None:
    assert message, f"{case.name} ({surface}): no message"
    assert "Traceback" not in message and 'File "' not in message, f"{case.name}: traceback shown: {message}"
    assert "\n" not in message.strip(), f"{case.name} ({surface}): more than one line: {message!r}"
    assert len(message) < 1500, f"{case.name} ({surface}): {len(message)}-character message"
    assert re.search(pattern, message), f"{case.name} ({surface}): {message!r} does not match {pattern!r}"


def ids(case):
    return case.name


# -- CLI ---------------------------------------------------------------------------------------------
@pytest.fixture
def cli_default_model(monkeypatch, default_model):
    """The CLI loads 'default' once per module (the load itself is the same function); every other
    name goes through the real `load_model`, so model errors are the real ones."""
    import patching.model.loading as models
    real = models.load_model
    monkeypatch.setattr(models, "load_model",
                        lambda name="default", *a, **k: default_model if name == "default" else real(name, *a, **k))


def cli_argv(case: Case, model: str, metric: str, tmp_path: Path) -> list[str]:
    argv = ["sweep", f"--model={model}", f"--kind={case.kind}", f"--metric={metric}",
            f"--direction={case.direction}", "--device=cpu", "--quiet", f"--out={tmp_path / 'out.csv'}"]
    for flag, value in (("layers", case.layers), ("positions", case.positions), ("heads", case.heads)):
        if value:
            argv.append(f"--{flag}={value}")
    if case.per_position:
        argv.append("--per-position")
    data = case.csv_bytes()
    if data is not None:
        path = tmp_path / "pairs.csv"
        path.write_bytes(data)
        argv.append(f"--pairs={path}")
    else:
        argv += [f"--clean={case.clean}", f"--corrupt={case.corrupt}", f"--answer={case.answer}",
                 f"--wrong={case.wrong}"]
    return argv


def assert_formula_cells_neutralised(text: str) -> None:
    """The result CSV holds the prompts' '=', '+', '-', '@' tokens, each neutralised with a quote."""
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows
    tokens = [r["token"] for r in rows if r["token"]]
    assert tokens and not [t for t in tokens if t.startswith(FORMULA)], tokens
    assert any(t.startswith("'") for t in tokens), "the formula-like tokens were expected in the output"


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_cli(case, specials, cli_default_model, tmp_path, capsys):
    from patching.cli import main
    model, metric = resolve(case, specials)
    start = time.perf_counter()
    try:
        rc = main(cli_argv(case, model, metric, tmp_path))
    except SystemExit as exc:       # argparse's own errors (e.g. a --direction outside its choices)
        rc = exc.code
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    assert seconds < case.max_seconds, f"{case.name}: {seconds:.1f} s"
    pattern = case.expect_for("cli")
    if pattern is None:
        assert rc == 0, err
        assert (tmp_path / "out.csv").read_text().startswith("kind,direction,metric,layer,pos,head,token,value,normalized")
        if case.name == "csv_formula_cells_valid":
            assert_formula_cells_neutralised((tmp_path / "out.csv").read_text(encoding="utf-8"))
        return
    assert rc == 2, f"{case.name}: exit {rc}, stderr {err!r}"
    assert not CONTROL.search(err), f"{case.name}: raw control characters on stderr: {err[:300]!r}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    check_message(lines[0], pattern, case, "cli")
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["csv_million_rows", "prompt_100kB"])
def test_cli_subprocess(name, tmp_path):
    """The real command: exit 2, one stderr line, no traceback, quickly (imports included)."""
    case = next(c for c in CASES if c.name == name)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "patching", *cli_argv(case, "default", case.metric, tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr
    check_message(lines[0], case.expect, case, "cli subprocess")
    assert seconds < 60


# -- Python API ----------------------------------------------------------------------------------------
def run_api(case: Case, model_name: str, metric: str, default_model):
    """What a Python user writes: load, prompts, spec, sweep."""
    from patching import PatchSpec, PromptSet, load_model, sweep
    from patching.core.spec import parse_heads, parse_int_list
    model = default_model if model_name == "default" else load_model(model_name)
    data = case.csv_bytes()
    if data is not None:
        prompts = PromptSet.from_csv(model, data)
    else:
        prompts = PromptSet.single(model, case.clean, case.corrupt, case.answer, case.wrong)
    spec = PatchSpec(kind=case.kind, direction=case.direction, metric=metric, per_position=case.per_position,
                     layers=parse_int_list(case.layers, "layers"),
                     positions=parse_int_list(case.positions, "positions"),
                     heads=parse_heads(case.heads), model=model_name)
    return sweep(model, prompts, spec)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_api(case, specials, default_model):
    model, metric = resolve(case, specials)
    pattern = case.expect_for("api")
    start = time.perf_counter()
    if pattern is None:
        result = run_api(case, model, metric, default_model)
        assert result.values.isfinite().all()
        if case.name == "csv_formula_cells_valid":
            assert_formula_cells_neutralised(result.to_csv())
        return
    with pytest.raises(ValueError) as exc:
        run_api(case, model, metric, default_model)
    assert time.perf_counter() - start < case.max_seconds
    check_message(str(exc.value), pattern, case, "api")


# -- dashboard -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dash_app(tmp_path_factory, default_model):
    """An app around the default model with one run already in its history."""
    from dashboard import create_app, make_jobs
    from patching.runs.store import RunStore
    from patching.model.loading import ModelRegistry
    registry = ModelRegistry(["default"])
    registry.add("default", default_model)
    store = RunStore(tmp_path_factory.mktemp("bad-inputs-data"))
    app = create_app(registry, store, make_jobs("diskcache", store.data_dir), model="default")
    case = Case("baseline", None)
    (run_id, error, *_), _ = run_callbacks(app.patchboard, case, "default", "logit_diff", None)
    assert error == "" and run_id == store.list()[0].id
    return app, store, run_id


class Progress:
    def __init__(self):
        self.calls = []

    def __call__(self, values):
        self.calls.append(values)


def form_args(case: Case, model: str, metric: str, pairs) -> list:
    """The page's inputs in the order of the validate / run_sweep callbacks."""
    return [model, case.clean, case.corrupt, case.answer, case.wrong, ["bos"], pairs, case.kind, metric,
            case.direction, ["per"] if case.per_position else [], case.layers or None,
            case.positions or None, case.heads or None]


def run_callbacks(cb, case: Case, model: str, metric: str, pairs):
    """validate (live) then the Run button; returns (run_sweep's outputs, validate's message)."""
    message = cb.validate(*form_args(case, model, metric, pairs))
    outputs = cb.run_sweep(Progress(), 1, *form_args(case, model, metric, pairs))
    return outputs, message


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_dashboard(case, specials, dash_app, default_model):
    from dashboard import forms
    from dashboard.forms import Form
    app, store, first_run = dash_app
    cb = app.patchboard
    model, metric = resolve(case, specials)
    pattern = case.expect_for("dashboard")
    before = [r.id for r in store.list()]
    start = time.perf_counter()
    pairs = None
    data = case.csv_bytes()
    if data is not None:                     # the upload callback (parse_upload) says it inline
        contents = "data:text/csv;base64," + base64.b64encode(data).decode()
        stored, message, reset, _ = cb.upload_pairs(contents, "pairs.csv")
        assert reset is None                 # the upload is cleared so the same file can be chosen again
        if message:
            assert stored is no_update
            assert time.perf_counter() - start < case.max_seconds
            assert pattern is not None, f"{case.name}: refused: {message}"
            check_message(message, pattern, case, "dashboard upload")
            assert [r.id for r in store.list()] == before
            return
        pairs = stored
    status = cb.model_status(model)
    if "not offered" in str(getattr(status, "children", "")):
        check_message(status.children, pattern, case, "dashboard model status")
    view = cb.token_view(model, case.clean, case.corrupt, case.answer, case.wrong, ["bos"], pairs)
    assert "Traceback" not in str(view)
    if model == "default":                   # the token view handler never raises, lists problems
        tv = forms.token_view(default_model, Form.from_values(
            model=model, clean=case.clean, corrupt=case.corrupt, answer=case.answer, wrong=case.wrong,
            pairs=pairs))
        assert all("Traceback" not in p for p in tv.problems)
    (run_id, error, version, status), live = run_callbacks(cb, case, model, metric, pairs)
    assert time.perf_counter() - start < 2 * case.max_seconds
    if pattern is None:
        assert live == "" and error == "", (live, error)
        assert run_id == store.list()[0].id and run_id not in before
        if case.name == "csv_formula_cells_valid":
            assert_formula_cells_neutralised(cb.download_csv(1, run_id)["content"])
        return
    check_message(live, pattern, case, "dashboard validate")
    assert error == live                     # the Run button refuses with the same inline text
    assert run_id is no_update and version is no_update
    assert [r.id for r in store.list()] == before      # nothing saved, earlier runs intact
    assert store.get(first_run).result.values.isfinite().all()
