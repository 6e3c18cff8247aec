"""Pure functions behind the callbacks: form values -> spec and prompts (or an error message),
upload parsing, token views, presets, the run job, attention for a clicked cell, top components.

Nothing here imports Dash; every function is called directly by the tests. Errors are
`ValueError`s whose text is shown as-is in `error-message`.

>>> spec, prompts = parse_form(model, {"clean": "...", "corrupt": "...", "answer": " Mary",
...                                    "wrong": " John", "kind": "head_out"})   # doctest: +SKIP
"""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch

from metrics import METRICS, get_metric
from patching.methods.sweep import plan_coords, sweep
from patching.kinds import KINDS
from patching.model.loading import require_runner
from patching.core.prompts import PromptPair, PromptSet, read_pairs_csv
from patching.core.results import PatchResult
from patching.core.spec import DIRECTIONS, PatchSpec, parse_heads, parse_int_list

from patching.runs.jobs import tracked
from patching.runs.slot import run_busy, run_slot  # noqa: F401 - re-exported for the tabs

DEFAULT_MAX_UPLOAD_MB = 16            # the request cap (`create_app(max_upload_mb=)`, --max-upload-mb)
MAX_PRESET_PAIRS = 64
PREVIEW_ROWS = 8


# -- options ------------------------------------------------------------------------------------
def model_options(registry) -> list[dict]:
    """The registry's models (command line first), then others found in assets/ or the HF cache."""
    names = list(registry.names())
    try:
        from patching.model.loading import available_models
        found = [m["name"] for m in available_models() if m.get("safetensors")]
    except Exception:   # a broken cache never breaks the page
        found = []
    options = []
    for name in dict.fromkeys(names + found):
        label = Path(name).name if ("/" in name and Path(name).expanduser().is_dir()) else name
        options.append({"label": label, "value": name})
    return options


def check_model(registry, name: str | None) -> str:
    """The name if this server offers it (command line, shipped or cached), else ValueError: a web
    request must not make the server load an arbitrary path or download a hub model."""
    if not name:
        raise ValueError("choose a model")
    offered = [o["value"] for o in model_options(registry)]
    if name not in offered:
        raise ValueError(f"model {name!r} is not offered by this server; choose one of "
                         f"{', '.join(map(repr, offered))} or restart it with --model {name}")
    return name


def kind_options() -> list[dict]:
    return [{"label": f"{name} — {k.title}", "value": name} for name, k in KINDS.items()]


def metric_options() -> list[dict]:
    return [{"label": f"{name} — {m.formula}", "value": name} for name, m in METRICS.items()]


def direction_options() -> list[dict]:
    return [{"label": "denoise (corrupt run, clean patched in: sufficient?)", "value": "denoise"},
            {"label": "noise (clean run, corrupt patched in: necessary?)", "value": "noise"}]


def _tasks():
    try:
        from patching.tasks import families as tasks
        return tasks
    except ImportError:
        return None


def preset_options() -> list[dict]:
    tasks = _tasks()
    if tasks is None:
        return []
    return [{"label": t.title, "value": name} for name, t in tasks.TASKS.items()]


def preset_pairs(task: str, n: int = 1, seed: int = 0) -> list[dict]:
    """n pairs of a task family as dicts (clean, corrupt, answer, wrong); ValueError on a bad name.

    >>> preset_pairs("ioi", 1)[0]["answer"].startswith(" ")      # doctest: +SKIP
    True
    """
    tasks = _tasks()
    if tasks is None:
        raise ValueError("presets need patching/tasks/families.py, which is not installed here")
    if task not in tasks.TASKS:
        raise ValueError(f"unknown preset {task!r}; choose one of {', '.join(tasks.TASKS)}")
    try:
        n = 1 if n is None or n == "" else int(n)
    except (TypeError, ValueError):
        raise ValueError(f"number of pairs must be a whole number, not {n!r}") from None
    if not 1 <= n <= MAX_PRESET_PAIRS:
        raise ValueError(f"number of pairs must be between 1 and {MAX_PRESET_PAIRS}, not {n}")
    return [{"clean": p.clean, "corrupt": p.corrupt, "answer": p.answer, "wrong": p.wrong}
            for p in tasks.make_pairs(task, n, split="eval", seed=seed)]


def preset_metric(task: str) -> str | None:
    """The metric a preset suggests, when the registry has it."""
    tasks = _tasks()
    if tasks is None or task not in tasks.TASKS:
        return None
    metric = getattr(tasks.TASKS[task], "metric", None)
    return metric if metric in METRICS else None


# -- uploads --------------------------------------------------------------------------------------
def upload_file_limit(max_request_bytes: int | None) -> int:
    """The largest pairs CSV a request of `max_request_bytes` carries: the browser sends the file
    base64-encoded (4/3 larger) inside a JSON request, so 3/4 of the cap less 64 kB.

    >>> upload_file_limit(16 * 2**20)
    12517376
    """
    cap = max_request_bytes or DEFAULT_MAX_UPLOAD_MB * 2**20
    return max(cap * 3 // 4 - 2**16, 1)


MAX_UPLOAD_BYTES = upload_file_limit(DEFAULT_MAX_UPLOAD_MB * 2**20)   # pairs CSVs larger are refused


def size_text(n: int) -> str:
    """'11.9 MB', '704 kB', '9.8 kB', '512 bytes' (one decimal below 100).

    >>> size_text(12_517_376), size_text(720_896), size_text(10_000), size_text(512)
    ('11.9 MB', '704 kB', '9.8 kB', '512 bytes')
    """
    if n < 2**10:
        return f"{n} bytes"
    x, unit = (n / 2**20, "MB") if n >= 2**20 else (n / 2**10, "kB")
    text = f"{x:.1f}" if x < 100 else f"{x:.0f}"
    return f"{text.removesuffix('.0')} {unit}"


def parse_run_id(value) -> int:
    """A run id from the page (a dcc.Store or a URL, so anything a client sends): a whole number
    for the run store, never a path; ValueError otherwise.

    >>> parse_run_id("12"), parse_run_id(3)
    (12, 3)
    """
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]{1,12}", text):
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise ValueError(f"run id {shown!r} is not a run number; pick a run from the history")
    return int(text)


def too_large_message(limit_bytes: int) -> str:
    """The refusal of a too-large upload, after '<file> (<size>) ' (the page's clientside check
    writes the same words).

    >>> too_large_message(12_517_376)[:45]
    'is larger than the 11.9 MB limit for pairs CS'
    """
    return (f"is larger than the {size_text(limit_bytes)} limit for pairs CSVs on this server; split it, "
            "run it with `python -m patching sweep --pairs`, or restart the server with a larger "
            "--max-upload-mb")


def parse_upload(contents: str | None, filename: str | None = None,
                 max_bytes: int = MAX_UPLOAD_BYTES) -> list[dict]:
    """dcc.Upload contents ('data:...;base64,...') of a pairs CSV -> list of pair dicts.

    ValueError naming the file and the problem: too large, not base64, not UTF-8, bad columns.

    >>> data = "data:text/csv;base64," + base64.b64encode(b"clean,corrupt,answer,wrong\\nA B,A C, B, C\\n").decode()
    >>> parse_upload(data, "p.csv")
    [{'clean': 'A B', 'corrupt': 'A C', 'answer': ' B', 'wrong': ' C'}]
    """
    name = filename or "upload"
    if not contents:
        raise ValueError(f"{name}: the file is empty")
    if filename and not filename.lower().endswith((".csv", ".txt")):
        raise ValueError(f"{name}: expected a .csv file with columns clean,corrupt,answer,wrong")
    _, _, payload = contents.partition(",")
    too_big = too_large_message(max_bytes)
    if len(payload) * 3 // 4 > max_bytes:
        raise ValueError(f"{name} ({size_text(len(payload) * 3 // 4)}) {too_big}")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{name}: the upload is not valid base64 data") from None
    if len(raw) > max_bytes:
        raise ValueError(f"{name} ({size_text(len(raw))}) {too_big}")
    try:
        pairs = read_pairs_csv(raw)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    return [{"clean": p.clean, "corrupt": p.corrupt, "answer": p.answer, "wrong": p.wrong} for p in pairs]


# -- the form -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Form:
    """What the page's inputs hold (text as typed)."""
    model: str = "default"
    clean: str = ""
    corrupt: str = ""
    answer: str = ""
    wrong: str = ""
    pairs: tuple | None = None          # uploaded / preset pairs; when set they replace the typed one
    kind: str = "resid_pre"
    metric: str = "logit_diff"
    direction: str = "denoise"
    per_position: bool = False
    layers: str = ""
    positions: str = ""
    heads: str = ""
    prepend_bos: bool = True

    @classmethod
    def from_values(cls, **values) -> "Form":
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__ and v is not None}
        if known.get("pairs") is not None:
            known["pairs"] = tuple(tuple(p[k] for k in ("clean", "corrupt", "answer", "wrong"))
                                   if isinstance(p, dict) else tuple(p) for p in known["pairs"]) or None
        return cls(**known)

    def prompt_pairs(self) -> list[PromptPair]:
        if self.pairs:
            return [PromptPair(*p) for p in self.pairs]
        return [PromptPair(self.clean or "", self.corrupt or "", self.answer or "", self.wrong or "")]


def parse_form(model, form: Form) -> tuple[PatchSpec, PromptSet]:
    """Validate the form against the model: (spec, prompts), or ValueError with the message to show.

    The spec's filters are checked against this model and prompt length too (layers out of
    range, heads on a non-head kind, ...), so a Run never starts on input that will fail.
    """
    if not form.kind:
        raise ValueError(f"choose a patch kind; one of {', '.join(KINDS)}")
    if form.metric not in METRICS:   # no 'pkg.mod:fn' from a web form: that would import code
        raise ValueError(f"unknown metric {form.metric!r}; choose one of {', '.join(METRICS)}")
    if form.direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'denoise' or 'noise', not {form.direction!r}")
    prompts = PromptSet.from_pairs(model, form.prompt_pairs(), prepend_bos=form.prepend_bos)
    spec = PatchSpec(kind=form.kind, direction=form.direction, metric=form.metric,
                     per_position=bool(form.per_position and KINDS[form.kind].has_per_position
                                       if form.kind in KINDS else form.per_position),
                     layers=parse_int_list(form.layers, "layers"),
                     positions=parse_int_list(form.positions, "positions"),
                     heads=parse_heads(form.heads), model=form.model, prepend_bos=form.prepend_bos)
    get_metric(spec.metric)
    plan_coords(model, prompts, spec)
    return spec, prompts


# -- token view ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenView:
    clean: list[str]
    corrupt: list[str]
    differing: list[int]                 # positions where clean and corrupt differ
    answer: str | None                   # "' Mary' is one token" or None when empty
    wrong: str | None
    problems: list[str]                  # validation messages, first one shown in error-message
    n_pairs: int = 1


def _token_check(model, text: str, what: str) -> tuple[str | None, str | None]:
    if not text:
        return None, None
    ids = model.encode(text)
    if len(ids) == 1:
        return f"{what} {text!r} is one token (id {ids[0]})", None
    pieces = model.to_str_tokens(ids[:8]) + (["..."] if len(ids) > 8 else [])
    shown = repr(text) if len(text) <= 60 else repr(text[:60]) + "..."
    return None, f"{what} {shown} is {len(ids)} tokens {pieces}, not a single token"


def token_view(model, form: Form) -> TokenView:
    """Clean and corrupt tokens side by side, the differing positions, answer/wrong checks.

    Never raises: problems are listed (the first is what a Run would refuse with).
    """
    # the first pair as typed, unvalidated (an empty field is a problem listed below, not an error)
    first = form.pairs[0] if form.pairs else (form.clean, form.corrupt, form.answer, form.wrong)
    pair = SimpleNamespace(**{k: v if isinstance(v, str) else ""
                              for k, v in zip(("clean", "corrupt", "answer", "wrong"), first)})
    bos = [model.bos_token_id] if form.prepend_bos and model.bos_token_id is not None else []
    # at most the model's context is shown (a 100 kB paste is one problem, not 25,000 chips)
    clean = model.to_str_tokens((bos + model.encode(pair.clean))[:model.n_ctx + 1]) if pair.clean else []
    corrupt = model.to_str_tokens((bos + model.encode(pair.corrupt))[:model.n_ctx + 1]) if pair.corrupt else []
    differing = [i for i, (a, b) in enumerate(zip(clean, corrupt)) if a != b]
    differing += list(range(min(len(clean), len(corrupt)), max(len(clean), len(corrupt))))
    answer_ok, answer_bad = _token_check(model, pair.answer, "answer")
    wrong_ok, wrong_bad = _token_check(model, pair.wrong, "wrong")
    problems = []
    try:
        PromptSet.from_pairs(model, form.prompt_pairs(), prepend_bos=form.prepend_bos)
    except ValueError as exc:
        problems.append(str(exc))
    for bad in (answer_bad, wrong_bad):
        if bad and not any(bad.split(" is ")[0] in p for p in problems):
            problems.append(bad)
    if pair.answer and pair.answer == pair.wrong and not any("same token" in p for p in problems):
        problems.append(f"answer and wrong are the same token {pair.answer!r}; the metric would be 0")
    return TokenView(clean, corrupt, differing, answer_ok or answer_bad, wrong_ok or wrong_bad,
                     problems, len(form.pairs) if form.pairs else 1)


# -- running -----------------------------------------------------------------------------------
def baselines(model, prompts: PromptSet, metric_name: str) -> tuple[float, float] | None:
    """(clean, corrupt) metric means before the sweep starts; None when the model has no runner."""
    if model.runner is None:
        return None
    from metrics import MetricInputs
    metric = get_metric(metric_name)
    runner = model.runner
    clean, corrupt = runner.run(prompts.clean_tokens), runner.run(prompts.corrupt_tokens)
    inputs = MetricInputs(prompts.answer_ids, prompts.wrong_ids, clean.logits.float().log_softmax(-1))
    return (float(metric(clean.logits.float(), inputs).double().mean()),
            float(metric(corrupt.logits.float(), inputs).double().mean()))


def baselines_text(values: tuple[float, float] | None, metric: str = "") -> str:
    if values is None:
        return ""
    clean, corrupt = values
    return f"clean {metric} = {clean:.4f} · corrupt {metric} = {corrupt:.4f} · gap = {clean - corrupt:.4f}"


@dataclass(frozen=True)
class Progress:
    """What the progress outputs show: (value, max, label, baselines text)."""
    value: int
    total: int
    label: str
    baselines: str

    def as_tuple(self):
        """(bar value, bar max, bar label, status text, baselines text)."""
        bar_label = f"{self.value} / {self.total}" if 0 < self.value < self.total else ""
        return (self.value, self.total, bar_label, self.label, self.baselines)


def execute_run(registry, store, form: Form, data_dir: str | Path,
                report: Callable[[Progress], None] = lambda p: None, token: str | None = None) -> int:
    """The Run button's job: validate, queue for the run slot, baselines, sweep, save.

    Returns the saved run's id; ValueError with the message to show on bad input (JobCancelled
    when Cancel was pressed for `token`, see `job_status.job_token`).
    """
    model = registry.get(check_model(registry, form.model))
    spec, prompts = parse_form(model, form)
    label = f"{spec.kind}{' per pos' if spec.per_position else ''} · {spec.direction} · " \
            f"{spec.metric} · {Path(form.model).name}"
    return _run_and_save(store, data_dir, report, "sweep", label, form.model, model, prompts, spec,
                         lambda on_progress: sweep(model, prompts, spec, on_progress=on_progress), "patches",
                         token)


def _queued(report: Callable[[Progress], None]) -> Callable[[float], None]:
    """run_slot's `on_wait`: say the run is queued behind another, and for how long."""
    return lambda seconds: report(Progress(0, 1, f"queued behind another run ({seconds:.0f} s); "
                                                 "it starts when that one ends", ""))


def _run_and_save(store, data_dir, report: Callable[[Progress], None], job_kind: str, label: str,
                  model_name: str, model, prompts: PromptSet, spec, compute, unit: str,
                  token: str | None = None) -> int:
    """What every Run does once its form is valid: a tracked job queued for the run slot,
    baselines, `compute(on_progress)`, the result saved to history; progress through `report`."""
    with tracked(store, job_kind, label, model_name, token=token) as job, run_slot(data_dir, _queued(report)):
        job.raise_if_cancelled()                 # Cancel pressed while it waited for the slot
        report(Progress(0, 1, "computing baselines…", ""))
        text = baselines_text(baselines(model, prompts, spec.metric), spec.metric)
        report(Progress(0, 1, "starting…", text))

        def on_progress(done: int, total: int):
            job.beat()
            report(Progress(done, total, f"{done} / {total} {unit}", text))

        result = compute(on_progress)
        run_id = store.save(result, [(p.clean, p.corrupt, p.answer, p.wrong) for p in prompts.pairs], label)
        job.done(run_id)
    report(Progress(1, 1, f"done in {result.seconds:.2f} s", baselines_text(
        (result.clean_value, result.corrupt_value), spec.metric)))
    return run_id


def effective_mode(result: PatchResult, mode: str) -> tuple[str, str | None]:
    """'normalized' needs clean != corrupt; otherwise fall back to raw and say why."""
    if mode == "normalized" and not torch.isfinite(result.normalized).any():
        return "raw", ("normalized values are undefined: the clean and corrupt baselines are equal; "
                       "showing raw values")
    return mode, None


def result_summary(result: PatchResult) -> str:
    s = result.spec
    gap = result.clean_value - result.corrupt_value
    return (f"{Path(result.model_name or s.model).name} · {s.kind}{' per position' if s.per_position else ''} · "
            f"{s.direction} · {s.metric} · {result.n_pairs} pair{'s' if result.n_pairs != 1 else ''} · "
            f"clean {result.clean_value:.4f} · corrupt {result.corrupt_value:.4f} · gap {gap:.4f} · "
            f"{result.seconds:.2f} s")


# -- clicks and attention ----------------------------------------------------------------------
def clicked_cell(click_data: dict | None) -> dict | None:
    """plotly clickData on a results heatmap -> {'layer', 'pos', 'head'} (None where n/a).

    Reads the cell's customdata when plotly sends it, else the axis labels the figures write
    ('L1.H2' or 'L1' rows; '10: ...' position or 'H2' head columns).

    >>> clicked_cell({"points": [{"x": "10: ' John'", "y": "L1.H2"}]})
    {'layer': 1, 'pos': 10, 'head': 2}
    """
    if not click_data or not click_data.get("points"):
        return None
    point = click_data["points"][0]
    cd = point.get("customdata")
    if isinstance(cd, (list, tuple)) and len(cd) >= 3 and not isinstance(cd[0], (list, tuple)):
        return {"layer": cd[0], "pos": cd[1], "head": cd[2]}
    row = re.match(r"^L(\d+)(?:\.H(\d+))?$", str(point.get("y", "")))
    if row is None:
        return None
    cell = {"layer": int(row.group(1)), "pos": None, "head": int(row.group(2)) if row.group(2) else None}
    x = str(point.get("x", ""))
    if (m := re.match(r"^H(\d+)$", x)) is not None:
        cell["head"] = int(m.group(1))
    elif (m := re.match(r"^(\d+):", x)) is not None:
        cell["pos"] = int(m.group(1))
    return cell


def parse_pair(value) -> int:
    """The attention panel's pair number: a whole number >= 0 (range checked against the run)."""
    if value is None or value == "":
        return 0
    try:
        pair = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"pair must be a whole number, not {value!r}") from None
    if pair < 0 or pair != float(value):
        raise ValueError(f"pair must be a whole number >= 0, not {value!r}")
    return pair


@dataclass(frozen=True)
class AttentionView:
    clean: object                 # [dest, src]
    corrupt: object
    patched: object | None
    str_tokens: list[str]
    title: str
    note: str | None
    frame: object | None = None   # a DataFrame for CSV download, when available


def attention_for_cell(registry, run, cell: dict, pair: int = 0) -> AttentionView:
    """Counterfactual attention of the clicked head of a stored run (pair `pair`).

    Uses `patching.methods.attention.counterfactual_attention` when installed (clean, corrupt and
    patched patterns); otherwise the clean and corrupt patterns from the runner's cache.
    """
    result = run.result
    if getattr(result.spec, "kind", None) == "path":
        return _path_attention(registry, run, cell, pair)
    if cell is None or cell.get("head") is None or "head" not in result.axes:
        raise ValueError("click a cell of a head kind (head_out, head_q, head_k, head_v, head_pattern) "
                         "to see that head's attention")
    layer, head = int(cell["layer"]), int(cell["head"])
    if not 0 <= pair < len(run.pairs):
        raise ValueError(f"pair {pair} out of range; this run has pairs 0-{len(run.pairs) - 1}")
    spec = result.spec
    model = registry.get(check_model(registry, spec.model))   # a stored name: offered models only
    prompts = PromptSet.from_pairs(model, [PromptPair(*p) for p in run.pairs], prepend_bos=spec.prepend_bos)
    kind = KINDS[spec.kind]
    heads_label = f"L{layer}.H{head}" if not kind.kv_heads else f"L{layer} key/value head {head}"
    where = f" at position {cell['pos']}" if cell.get("pos") is not None else ""
    title = f"Counterfactual attention · {heads_label}{where} · pair {pair}"
    try:
        from patching.methods.attention import counterfactual_attention
    except ImportError:
        counterfactual_attention = None
    # k/v kinds index key/value heads: show the first query head of the group
    q_head = head if not kind.kv_heads else head * (model.n_heads // model.n_kv_heads)
    if kind.kv_heads and q_head != head:
        title += f" (query head {q_head})"
    if counterfactual_attention is not None:
        index = {k: v for k, v in cell.items() if v is not None and k in result.axes}
        diff = counterfactual_attention(model, prompts, layer, q_head, spec=spec, index=index, pair=pair)
        to_np = lambda t: t.detach().float().cpu().numpy() if isinstance(t, torch.Tensor) else t  # noqa: E731
        return AttentionView(to_np(diff.clean), to_np(diff.corrupt), to_np(diff.patched),
                             list(diff.str_tokens), title, f"patched: {diff.patch_label}",
                             diff.to_dataframe())
    if model.runner is None:
        raise ValueError(f"attention view needs the engine's runner; {model.name!r} has none")
    clean = model.runner.run(prompts.clean_tokens).layers[layer].pattern[pair, q_head]
    corrupt = model.runner.run(prompts.corrupt_tokens).layers[layer].pattern[pair, q_head]
    note = "patched pattern: needs patching/methods/attention.py"
    return AttentionView(clean.float().cpu().numpy(), corrupt.float().cpu().numpy(), None,
                         list(prompts.str_tokens), title, note, None)


def _path_attention(registry, run, cell: dict | None, pair: int) -> AttentionView:
    """A path run's clicked sender cell -> the attention of its receiver head (the first q/k/v
    receiver): clean, corrupt and step 2's pattern (the receivers patched)."""
    from patching.methods.attention import counterfactual_attention
    result, spec = run.result, run.result.spec
    receivers = [n for n in (spec.receiver_nodes or ()) if n.kind in ("q", "k", "v")]
    if cell is None or "head" not in result.axes or cell.get("head") is None:
        raise ValueError("click a sender head cell of an every-head path sweep to see its receiver's attention")
    if not receivers:
        raise ValueError("this path run has no q/k/v receiver head, so no attention pattern changes; "
                         "choose q:L.H, k:L.H or v:L.H receivers to see one")
    if not 0 <= pair < len(run.pairs):
        raise ValueError(f"pair {pair} out of range; this run has pairs 0-{len(run.pairs) - 1}")
    model = registry.get(check_model(registry, spec.model))   # a stored name: offered models only
    r = receivers[0]
    head = r.head if r.kind == "q" else r.head * (model.n_heads // model.n_kv_heads)
    prompts = PromptSet.from_pairs(model, [PromptPair(*p) for p in run.pairs], prepend_bos=spec.prepend_bos)
    index = {k: v for k, v in cell.items() if v is not None and k in result.axes}
    diff = counterfactual_attention(model, prompts, r.layer, head, spec=spec, index=index, pair=pair)
    sender = f"L{cell['layer']}.H{cell['head']}" + (f"@{cell['pos']}" if cell.get("pos") is not None else "")
    title = f"Receiver attention · L{r.layer}.H{head} ({r.label}) · sender {sender} · pair {pair}"
    to_np = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
    return AttentionView(to_np(diff.clean), to_np(diff.corrupt), to_np(diff.patched), list(diff.str_tokens),
                         title, f"patched: {diff.patch_label}", diff.to_dataframe())


# -- compare -----------------------------------------------------------------------------------
def top_components(result: PatchResult, n: int = 10, mode: str = "raw") -> list[dict]:
    """The n cells with the largest |effect| (raw value, or normalized in 'normalized' mode),
    as rows for a table.

    >>> top_components(result, 3)[0].keys()        # doctest: +SKIP
    dict_keys(['component', 'token', 'value', 'normalized'])
    """
    df = result.to_dataframe() if result.n_pairs == 1 else _df_without_ci(result)
    if df.empty:
        return []
    key = "normalized" if mode == "normalized" and df["normalized"].notna().any() else "value"
    order = df[key].abs().sort_values(ascending=False).index[:n]
    rows = []
    for _, r in df.loc[order].iterrows():
        parts = []
        if r["layer"] is not None and str(r["layer"]) != "<NA>":
            parts.append(f"L{int(r['layer'])}")
        if "head" in r and str(r["head"]) != "<NA>" and r["head"] is not None:
            parts.append(f"H{int(r['head'])}")
        if "neuron" in r and r.get("neuron") is not None and str(r.get("neuron")) not in ("<NA>", "nan"):
            parts.append(f"N{int(r['neuron'])}")
        if str(r["pos"]) != "<NA>" and r["pos"] is not None:
            parts.append(f"pos {int(r['pos'])}")
        norm = r["normalized"]
        rows.append({"component": " ".join(parts), "token": r["token"] if isinstance(r["token"], str) else "",
                     "value": round(float(r["value"]), 4),
                     "normalized": None if norm != norm else round(float(norm), 3)})
    return rows


def _df_without_ci(result: PatchResult):
    """to_dataframe without the bootstrap (the table needs only values)."""
    single = PatchResult(result.spec, result.axes, result.coords, result.values[..., None],
                         torch.tensor([result.clean_value], dtype=torch.float64),
                         torch.tensor([result.corrupt_value], dtype=torch.float64),
                         result.str_tokens, result.metric_clean_is, result.seconds, result.model_name)
    return single.to_dataframe()


def attention_csv(view: AttentionView) -> str:
    """One row per (dest, src): tokens, clean, corrupt, patched (when known) and differences."""
    import pandas as pd
    from patching.core.results import write_csv
    rows = []
    n = len(view.clean)
    for d in range(n):
        for s in range(d + 1):
            row = {"dest": d, "src": s, "dest_token": view.str_tokens[d] if d < len(view.str_tokens) else "",
                   "src_token": view.str_tokens[s] if s < len(view.str_tokens) else "",
                   "clean": float(view.clean[d][s]), "corrupt": float(view.corrupt[d][s])}
            if view.patched is not None:
                row["patched"] = float(view.patched[d][s])
            row["clean_minus_corrupt"] = row["clean"] - row["corrupt"]
            if view.patched is not None:
                row["patched_minus_corrupt"] = row["patched"] - row["corrupt"]
            rows.append(row)
    return write_csv(pd.DataFrame(rows))


def compare_csv(run_a, run_b) -> str:
    """Both runs of the compare view in the contract format, stacked, with extra columns `run`
    (its id) and, when their axes match, `value_minus_other` / `normalized_minus_other`."""
    import pandas as pd
    from patching.core.results import write_csv
    frames = []
    same = _same_cells(run_a.result, run_b.result)
    for run, other in ((run_a, run_b), (run_b, run_a)):
        df = run.result.to_dataframe()
        if same:
            o = other.result.to_dataframe()
            df["value_minus_other"] = df["value"].to_numpy() - o["value"].to_numpy()
            df["normalized_minus_other"] = df["normalized"].to_numpy() - o["normalized"].to_numpy()
        df["run"] = run.info.id
        frames.append(df)
    return write_csv(pd.concat(frames, ignore_index=True))


def _same_cells(a: PatchResult, b: PatchResult) -> bool:
    return (tuple(a.axes) == tuple(b.axes) and all(tuple(a.coords[k]) == tuple(b.coords[k]) for k in a.axes)
            and bool((a.per_pair.isnan().all(-1) == b.per_pair.isnan().all(-1)).all()))


# -- path patching -----------------------------------------------------------------------------
PATH_SWEEP_OPTIONS = ({"label": "each sender into the receivers", "value": "senders"},
                      {"label": "one sender through each receiver", "value": "receivers"})
PATH_MODE_OPTIONS = ({"label": "heads frozen, MLPs recomputed", "value": "heads_frozen"},
                     {"label": "direct path only (heads and MLPs frozen)", "value": "direct"})


@dataclass(frozen=True)
class PathForm:
    """The Path patching tab's inputs (text as typed)."""
    receivers: str = ""
    senders: str = ""
    sweep: str = "senders"
    mode: str = "heads_frozen"
    per_position: bool = False


def node_list(text: str | None) -> tuple[str, ...] | None:
    """'q:3.0, q:3.1' / one per line -> ('q:3.0', 'q:3.1'); empty -> None.

    >>> node_list(" q:1.0,\\nq:1.1 "), node_list("  ")
    (('q:1.0', 'q:1.1'), None)
    """
    items = tuple(t for t in re.split(r"[,;\s]+", text or "") if t)
    return items or None


def _check_prompt_choices(form: Form) -> None:
    if form.metric not in METRICS:   # no 'pkg.mod:fn' from a web form: that would import code
        raise ValueError(f"unknown metric {form.metric!r}; choose one of {', '.join(METRICS)}")
    if form.direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'denoise' or 'noise', not {form.direction!r}")


def parse_path_form(model, form: Form, path: PathForm) -> tuple["PathSpec", PromptSet]:
    """The prompts, metric and direction of the main form plus the Path tab -> (PathSpec, prompts),
    checked against the model (node ranges, positions) without running it; ValueError otherwise.

    >>> spec, _ = parse_path_form(model, form, PathForm(receivers="q:1.0"))      # doctest: +SKIP
    >>> spec.receivers                                                          # doctest: +SKIP
    ('q:1.0',)
    """
    from patching.methods.path import PathSpec, _check_nodes
    _check_prompt_choices(form)
    require_runner(model, "path patching")
    prompts = PromptSet.from_pairs(model, form.prompt_pairs(), prepend_bos=form.prepend_bos)
    senders = node_list(path.senders)
    if path.sweep == "receivers" and senders is None:
        raise ValueError("a receivers sweep follows one sender: type it under Senders, e.g. head:0.1 or mlp:0")
    spec = PathSpec(receivers=node_list(path.receivers), senders=senders, sweep=path.sweep or "senders",
                    mode=path.mode or "heads_frozen", direction=form.direction, metric=form.metric,
                    per_position=bool(path.per_position and senders is None), model=form.model,
                    prepend_bos=form.prepend_bos)
    if path.per_position and senders is not None:
        raise ValueError("one cell per position applies to the every-head sweep; leave Senders empty, "
                         "or give senders with @POS (e.g. head:0.1@5)")
    get_metric(spec.metric)
    if spec.sender_nodes is not None:
        _check_nodes(model, prompts, spec.sender_nodes, "sender")
    if spec.receiver_nodes is not None:
        _check_nodes(model, prompts, spec.receiver_nodes, "receiver")
    return spec, prompts


def path_label(spec) -> str:
    """A short history label: 'path · senders → q:1.0+q:1.1 · heads_frozen · denoise · logit_diff'."""
    if spec.sweep == "senders":
        what = f"{'every head' if spec.senders is None else '+'.join(spec.senders)}" \
               f"{' per pos' if spec.per_position else ''} → {'+'.join(spec.receivers)}"
    else:
        what = f"{spec.senders[0]} → {'each of ' + str(len(spec.receivers)) if spec.receivers else 'each receiver'}"
    return f"path · {what} · {spec.mode} · {spec.direction} · {spec.metric}"


def execute_path(registry, store, form: Form, path: PathForm, data_dir: str | Path,
                 report: Callable[[Progress], None] = lambda p: None, token: str | None = None) -> int:
    """The Path tab's Run: validate, queue for the run slot, baselines, path sweep, save to history.

    Returns the saved run's id; ValueError with the message to show on bad input.
    """
    from patching.methods.path import run_path
    model = registry.get(check_model(registry, form.model))
    spec, prompts = parse_path_form(model, form, path)
    label = f"{path_label(spec)} · {Path(form.model).name}"
    return _run_and_save(store, data_dir, report, "path", label, form.model, model, prompts, spec,
                         lambda on_progress: run_path(model, prompts, spec, on_progress=on_progress),
                         "path patches", token)


def path_summary(result) -> str:
    s = result.spec
    gap = result.clean_value - result.corrupt_value
    return (f"{Path(result.model_name or s.model).name} · {path_label(s)} · {result.n_pairs} "
            f"pair{'s' if result.n_pairs != 1 else ''} · clean {result.clean_value:.4f} · "
            f"corrupt {result.corrupt_value:.4f} · gap {gap:.4f} · {result.seconds:.2f} s")


# -- attribution patching --------------------------------------------------------------------
ATTRIBUTION_METHOD_OPTIONS = ({"label": "plain (one backward)", "value": "plain"},
                              {"label": "integrated gradients", "value": "ig"})
MAX_IG_STEPS = 128


@dataclass(frozen=True)
class AttributionForm:
    """The Attribution tab's inputs."""
    kinds: tuple[str, ...] = ()          # empty: every kind the model has
    method: str = "plain"
    steps: object = 16
    per_position: bool = False
    edges: bool = False                  # also EAP / EAP-IG edge scores (heads, MLPs, logits)


def attribution_kind_options(model=None) -> list[dict]:
    """The kinds with an attribution estimate on this model (every kind when no model)."""
    from patching.methods.attribution import attribution_kinds
    names = attribution_kinds(model) if model is not None else tuple(KINDS)
    return [{"label": name, "value": name} for name in names]


def parse_steps(value) -> int:
    """IG steps: a whole number in 1..MAX_IG_STEPS."""
    if value is None or value == "":
        return 16
    try:
        steps = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"steps must be a whole number, not {value!r}") from None
    if steps != float(value) or not 1 <= steps <= MAX_IG_STEPS:
        raise ValueError(f"steps must be a whole number between 1 and {MAX_IG_STEPS}, not {value!r}")
    return steps


def parse_attribution_form(model, form: Form, attr: AttributionForm) -> tuple[dict, PromptSet]:
    """(keyword arguments for run_attribution, prompts), or ValueError naming the bad value.

    >>> kw, _ = parse_attribution_form(model, form, AttributionForm(kinds=("head_out",)))   # doctest: +SKIP
    >>> kw["kinds"]                                                                       # doctest: +SKIP
    ('head_out',)
    """
    from patching.methods.attribution import METHODS, attribution_kinds
    _check_prompt_choices(form)
    require_runner(model, "attribution patching")
    known = attribution_kinds(model)
    kinds = tuple(attr.kinds) or known
    bad = [k for k in kinds if k not in known]
    if bad:
        raise ValueError(f"no attribution estimate for kind {bad[0]!r} on this model; choose from "
                         f"{', '.join(known)}")
    if attr.method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {attr.method!r}")
    steps = parse_steps(attr.steps) if attr.method == "ig" else 0
    prompts = PromptSet.from_pairs(model, form.prompt_pairs(), prepend_bos=form.prepend_bos)
    get_metric(form.metric)
    kw = dict(kinds=kinds, metric=form.metric, direction=form.direction, method=attr.method,
              per_position=bool(attr.per_position))
    if attr.method == "ig":
        kw["steps"] = steps
    return kw, prompts


def execute_attribution(registry, store, form: Form, attr: AttributionForm, data_dir: str | Path,
                        report: Callable[[Progress], None] = lambda p: None, token: str | None = None) -> int:
    """The Attribution tab's Run: validate, queue, baselines, every kind's estimate, save.

    Returns the attribution run's id (RunStore.get_attribution); ValueError on bad input.
    """
    from patching.methods.attribution import edge_attribution, run_attribution
    model = registry.get(check_model(registry, form.model))
    kw, prompts = parse_attribution_form(model, form, attr)

    method = "plain" if kw["method"] == "plain" else f"ig, {kw['steps']} steps"
    label = (f"attribution ({method}) · {len(kw['kinds'])} kinds · {form.direction} · {form.metric} · "
             f"{Path(form.model).name}")
    label += " · edges" if attr.edges else ""
    with tracked(store, "attribution", label, form.model, token=token) as job, run_slot(data_dir, _queued(report)):
        job.raise_if_cancelled()                 # Cancel pressed while it waited for the slot
        report(Progress(0, 1, "computing baselines…", ""))
        text = baselines_text(baselines(model, prompts, form.metric), form.metric)
        what = "forwards and backward" if kw["method"] == "plain" else f"{kw['steps']} interpolated steps"
        report(Progress(0, 1, f"attributing {len(kw['kinds'])} kinds ({what})…", text))
        results = run_attribution(model, prompts, **kw)
        edges = None
        if attr.edges:
            report(Progress(0, 1, "edge scores…", text))
            edges = edge_attribution(model, prompts, metric=kw["metric"], direction=kw["direction"],
                                     method=kw["method"], **({"steps": kw["steps"]} if "steps" in kw else {}))
        att_id = store.save_attribution(results, [(p.clean, p.corrupt, p.answer, p.wrong) for p in prompts.pairs],
                                        label, edges)
        job.done(att_id)
    report(Progress(1, 1, f"done in {results[0].seconds:.2f} s", text))
    return att_id


def attribution_summary(run) -> str:
    r = run.results[0]
    gap = r.clean_value - r.corrupt_value
    return (f"{run.label} · {r.n_pairs} pair{'s' if r.n_pairs != 1 else ''} · "
            f"clean {r.clean_value:.4f} · corrupt {r.corrupt_value:.4f} · gap {gap:.4f} · {r.seconds:.2f} s")


def attribution_agreement(registry, run, kind: str, data_dir: str | Path | None = None) -> dict:
    """Attribution of one kind vs the exact sweep of the same spec: Pearson r and top-10 overlap,
    plus the exact sweep's seconds (`refine_handlers.attribution_agreement`, which keeps the exact
    sweep in `data_dir` for the scatter and the flagged list)."""
    from dashboard.refine_handlers import attribution_agreement as agree
    return agree(registry, run, kind, data_dir)


def agreement_text(a: dict) -> str:
    """'head_out: Pearson r = 0.982 · top-10 overlap 9/10 (48 cells; exact sweep 0.41 s)'."""
    r = "n/a" if a["pearson"] != a["pearson"] else f"{a['pearson']:.3f}"
    hits = round(a["topk_overlap"] * a["k"])
    return (f"Agreement with exact patching · {a['kind']}: Pearson r = {r} · top-{a['k']} overlap "
            f"{hits}/{a['k']} ({a['cells']} cells; exact sweep {a.get('exact_seconds', 0):.2f} s)")


def top_edges(edges, n: int = 12) -> list[dict]:
    """The n edges with the largest |score|, as table rows (upstream, downstream, score, normalized).

    >>> top_edges(edge_attribution(model, prompts), 3)[0].keys()      # doctest: +SKIP
    dict_keys(['upstream', 'downstream', 'score', 'normalized'])
    """
    if edges is None:
        return []
    df = edges.top(n)
    return [{"upstream": r.upstream, "downstream": r.downstream, "score": round(float(r.score), 4),
             "normalized": None if r.normalized != r.normalized else round(float(r.normalized), 3)}
            for r in df.itertuples()]
