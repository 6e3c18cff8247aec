"""Form parsing: what the page's inputs hold -> specs and prompts, or a ValueError whose text the
page shows as-is. The options the selects offer, presets, uploads and run ids are read here too.

Nothing here imports Dash; every function is called directly by the tests.

>>> spec, prompts = parse_form(model, Form(clean="...", corrupt="...", answer=" Mary",
...                                       wrong=" John", kind="head_out"))   # doctest: +SKIP
"""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from metrics import METRICS, MULTI_TOKEN_METRICS, get_metric, takes_multi_token
from patching.core.prompts import PromptPair, PromptSet, lone_surrogate, parse_roles, read_pairs_csv, roles_text
from patching.core.spec import DIRECTIONS, PatchSpec, check_whole, parse_heads, parse_int_list
from patching.kinds import KINDS
from patching.methods.sweep import plan_coords
from patching.model.loading import require_runner

if TYPE_CHECKING:
    from patching.methods.path import PathSpec

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


def multi_token_ok(metric: str | None) -> bool:
    """Whether a registry metric takes answers of several tokens (a stored or typed
    'pkg.mod:fn' is never imported here: False).

    >>> multi_token_ok("seq_logprob_diff"), multi_token_ok("x.y:z")
    (True, False)
    """
    return metric in METRICS and takes_multi_token(metric)


def metric_suggestion(task: str | None, metric: str | None) -> str:
    """The note under the metric select when a preset's task is measured by another registry
    metric than the one chosen (the preset never switches it: the user does).

    >>> metric_suggestion("greater_than", "logit_diff")[:52]
    'The greater-than task is measured by greater_than_pr'
    >>> metric_suggestion("greater_than", "greater_than_prob_diff"), metric_suggestion("ioi", "kl")
    ('', '')
    """
    tasks = _tasks()
    if not task or tasks is None or task not in tasks.TASKS:
        return ""
    suggested = tasks.TASKS[task].patch_metric
    if suggested == metric or suggested == "logit_diff" or suggested not in METRICS:
        return ""
    title = tasks.TASKS[task].title.split(" (")[0].lower()
    return (f"The {title} task is measured by {suggested} ({METRICS[suggested].formula}); "
            f"choose it under Metric to use it. Still {metric}.")


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
    return ([{"label": t.title, "value": name} for name, t in tasks.TASKS.items()] +
            [{"label": title, "value": name} for name, (_, title, _) in tasks.PAIR_VARIANTS.items()])


def preset_pairs(task: str, n: int = 1, seed: int = 0, model=None) -> list[dict]:
    """n pairs of a task family as dicts (clean, corrupt, answer, wrong); ValueError on a bad name.
    With the model, the first n pairs of one token length on its tokenizer (so the set runs).

    >>> [len(model.encode(p["clean"])) for p in preset_pairs("ioi", 3, model=model)]
    [14, 14, 14]
    """
    tasks = _tasks()
    if tasks is None:
        raise ValueError("presets need patching/tasks/families.py, which is not installed here")
    if task not in tasks.TASKS and task not in tasks.PAIR_VARIANTS:
        raise ValueError(f"unknown preset {task!r}; choose one of "
                         f"{', '.join([*tasks.TASKS, *tasks.PAIR_VARIANTS])}")
    n = whole_number(n, "number of pairs", 1, 1, MAX_PRESET_PAIRS)
    if model is None:
        drawn = tasks.make_pairs(task, n, split="eval", seed=seed)
    else:
        from patching.tasks.presets import runnable_pairs
        drawn = runnable_pairs(model, task, n, seed=seed, split="eval")
    return [pair_dict(p) for p in drawn]


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


def too_large_message(limit_bytes: int, what: str = "pairs CSVs") -> str:
    """The refusal of a too-large upload, after '<file> (<size>) ' (the page's clientside check
    writes the same words).

    >>> too_large_message(12_517_376)[:45]
    'is larger than the 11.9 MB limit for pairs CS'
    """
    cli = "sweep --pairs" if what == "pairs CSVs" else "neurons --texts"
    return (f"is larger than the {size_text(limit_bytes)} limit for {what} on this server; split it, "
            f"run it with `python -m patching {cli}`, or restart the server with a larger "
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
    if filename and not filename.lower().endswith((".csv", ".txt")):
        raise ValueError(f"{name}: expected a .csv file with columns clean,corrupt,answer,wrong")
    raw = upload_bytes(contents, name, max_bytes, too_large_message(max_bytes))
    try:
        pairs = read_pairs_csv(raw)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    return [pair_dict(p) for p in pairs]


def upload_bytes(contents: str | None, name: str, max_bytes: int, too_big: str) -> bytes:
    """The file inside dcc.Upload contents; ValueError when empty, over `max_bytes` (then
    '<name> (<size>) <too_big>') or not base64.

    >>> upload_bytes("data:text/plain;base64,YQ==", "a.txt", 10, "is too large")
    b'a'
    """
    if not contents:
        raise ValueError(f"{name}: the file is empty")
    _, _, payload = contents.partition(",")
    if len(payload) * 3 // 4 > max_bytes:
        raise ValueError(f"{name} ({size_text(len(payload) * 3 // 4)}) {too_big}")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{name}: the upload is not valid base64 data") from None
    if len(raw) > max_bytes:
        raise ValueError(f"{name} ({size_text(len(raw))}) {too_big}")
    return raw


def parse_dataset_upload(contents: str | None, filename: str | None = None,
                         max_bytes: int = MAX_UPLOAD_BYTES) -> tuple[list[str], list[str] | None]:
    """dcc.Upload contents of a prompt dataset (a .txt file, one prompt a line, or a .csv with a
    `text` and an optional `label` column) -> (prompts, labels or None); ValueError naming the file.

    >>> parse_dataset_upload("data:text/plain;base64," + base64.b64encode(b"Paris is\\nRome is\\n").decode(), "p.txt")
    (['Paris is', 'Rome is'], None)
    """
    from patching.inspect.datasets import read_texts
    name = filename or "upload"
    if not name.lower().endswith((".csv", ".txt")):
        raise ValueError(f"{name}: expected a .txt file (one prompt a line) or a .csv with a 'text' column "
                         "(and optionally 'label')")
    raw = upload_bytes(contents, name, max_bytes, too_large_message(max_bytes, "prompt datasets"))
    return read_texts(raw, name)


def pair_dict(p) -> dict:
    """A pair as the pairs store keeps it: clean, corrupt, answer, wrong (+ positions, the role
    positions' text, when the pair names roles).

    >>> pair_dict(PromptPair("A B", "A C", " B", " C", "X:1 END:2"))["positions"]
    'X:1 END:2'
    """
    roles = getattr(p, "positions", ())
    return {"clean": p.clean, "corrupt": p.corrupt, "answer": p.answer, "wrong": p.wrong,
            **({"positions": roles_text(roles)} if roles else {})}


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
                                   + ((p["positions"],) if p.get("positions") else ())
                                   if isinstance(p, dict) else tuple(p) for p in known["pairs"]) or None
        return cls(**known)

    @classmethod
    def from_page(cls, model, clean, corrupt, answer, wrong, bos, pairs, kind=None, metric=None,
                  direction=None, per_position=None, layers=None, positions=None, heads=None) -> "Form":
        """The page's component values as Dash passes them (checklists as lists) -> a Form.

        >>> Form.from_page("default", "a b", "a c", " b", " c", ["bos"], None).prepend_bos
        True
        """
        return cls.from_values(
            model=model, clean=clean, corrupt=corrupt, answer=answer, wrong=wrong,
            prepend_bos="bos" in (bos or []), pairs=pairs, kind=kind, metric=metric, direction=direction,
            per_position="per" in (per_position or []), layers=layers, positions=positions, heads=heads)

    @classmethod
    def from_shared(cls, model, clean, corrupt, answer, wrong, bos, pairs, metric, direction) -> "Form":
        """The left panel's prompts, metric and direction: what the Path and Attribution tabs read
        (`components.prompt_states` lists them in this order)."""
        return cls.from_page(model, clean, corrupt, answer, wrong, bos, pairs, metric=metric, direction=direction)

    def prompt_pairs(self) -> list[PromptPair]:
        if self.pairs:
            return [PromptPair(*p) for p in self.pairs]
        return [PromptPair(self.clean or "", self.corrupt or "", self.answer or "", self.wrong or "")]


PAGE_VALUE_FIELDS = ("model", "clean", "corrupt", "answer", "wrong", "bos", "pairs", "kind", "metric",
                     "direction", "per_position", "layers", "positions", "heads")   # `components.page_inputs` order


def restored_values(spec: dict, pairs, models=()) -> dict:
    """What Open in the history puts back on the left panel, by `PAGE_VALUE_FIELDS` name, as the
    page's components hold it (checklists as lists, a multi-pair set in the pairs store with its
    first pair in the fields). A value this page cannot offer (a model it does not serve, a
    `pkg.mod:fn` metric, a path run's kind) is left out, so the panel keeps what it has.

    >>> v = restored_values({"kind": "head_out", "direction": "noise", "metric": "logit_diff",
    ...                      "per_position": True, "layers": [0, 2], "heads": [[1, 3]], "model": "x"},
    ...                     [("a b", "a c", " b", " c")], models=("default",))
    >>> v["kind"], v["direction"], v["per_position"], v["layers"], v["heads"], v["pairs"], "model" in v
    ('head_out', 'noise', ['per'], '0,2', '1.3', None, False)
    """
    def text(seq, fmt=str):
        return ",".join(fmt(x) for x in seq) if seq else ""

    first = tuple(pairs[0]) if pairs else ("", "", "", "")
    values = dict(clean=first[0], corrupt=first[1], answer=first[2], wrong=first[3],
                  bos=["bos"] if spec.get("prepend_bos", True) else [],
                  pairs=[dict(zip(("clean", "corrupt", "answer", "wrong"), p)) for p in pairs]
                  if len(pairs) > 1 else None)
    if spec.get("model") in models:
        values["model"] = spec["model"]
    if spec.get("metric") in METRICS:
        values["metric"] = spec["metric"]
    if spec.get("direction") in DIRECTIONS:
        values["direction"] = spec["direction"]
    if spec.get("kind") in KINDS:
        values.update(kind=spec["kind"], per_position=["per"] if spec.get("per_position") else [],
                      layers=text(spec.get("layers")), positions=text(spec.get("positions")),
                      heads=text(spec.get("heads"), lambda h: f"{h[0]}.{h[1]}"))
    return values


def _check_prompt_choices(form: Form) -> None:
    """Registry metrics only, and a known direction (every Run's form)."""
    if form.metric not in METRICS:   # no 'pkg.mod:fn' from a web form: that would import code
        raise ValueError(f"unknown metric {form.metric!r}; choose one of {', '.join(METRICS)}")
    if form.direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'denoise' or 'noise', not {form.direction!r}")


def parse_form(model, form: Form) -> tuple[PatchSpec, PromptSet]:
    """Validate the form against the model: (spec, prompts), or ValueError with the message to show.

    The spec's filters are checked against this model and prompt length too (layers out of
    range, heads on a non-head kind, ...), so a Run never starts on input that will fail.
    """
    if not form.kind:
        raise ValueError(f"choose a patch kind; one of {', '.join(KINDS)}")
    _check_prompt_choices(form)
    prompts = PromptSet.from_pairs(model, form.prompt_pairs(), prepend_bos=form.prepend_bos,
                                   multi_token=multi_token_ok(form.metric))
    spec = PatchSpec(kind=form.kind, direction=form.direction, metric=form.metric,
                     per_position=bool(form.per_position and KINDS[form.kind].has_per_position
                                       if form.kind in KINDS else form.per_position),
                     layers=parse_int_list(form.layers, "layers"),
                     positions=parse_int_list(form.positions, "positions"),
                     heads=parse_heads(form.heads), model=form.model, prepend_bos=form.prepend_bos)
    get_metric(spec.metric)
    plan_coords(model, prompts, spec)
    return spec, prompts


def prompts_from_page(registry, model, clean, corrupt, answer, wrong, bos, pairs):
    """The prompts panel's values -> (Model, PromptSet); ValueError with the message to show."""
    m = registry.get(check_model(registry, model))
    form = Form.from_page(model, clean, corrupt, answer, wrong, bos, pairs)
    return m, PromptSet.from_pairs(m, form.prompt_pairs(), prepend_bos=form.prepend_bos)


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
    roles: tuple = ()                    # the shown pair's role positions ((role, index), ...)


def _token_check(model, text: str, what: str, multi_token: bool = False) -> tuple[str | None, str | None]:
    """(ok text, problem text) of an answer / wrong field; several tokens are ok for a metric
    that reads them one by one."""
    if not text:
        return None, None
    ids = model.encode(text)
    if len(ids) == 1:
        return f"{what} {text!r} is one token (id {ids[0]})", None
    pieces = model.to_str_tokens(ids[:8]) + (["..."] if len(ids) > 8 else [])
    shown = repr(text) if len(text) <= 60 else repr(text[:60]) + "..."
    if multi_token:
        return f"{what} {shown} is {len(ids)} tokens {pieces}, each one scored", None
    return None, (f"{what} {shown} is {len(ids)} tokens {pieces}, not a single token (answers of "
                  f"several tokens need the metric {' or '.join(MULTI_TOKEN_METRICS)})")


def token_view(model, form: Form) -> TokenView:
    """Clean and corrupt tokens side by side, the differing positions, answer/wrong checks.

    Never raises: problems are listed (the first is what a Run would refuse with).
    """
    # the first pair as typed, unvalidated (an empty field is a problem listed below, not an
    # error); text a tokenizer cannot take (a lone surrogate) shows no tokens, and the problem
    # list names it (PromptPair's check)
    first = form.pairs[0] if form.pairs else (form.clean, form.corrupt, form.answer, form.wrong)
    pair = SimpleNamespace(**{k: v if isinstance(v, str) and lone_surrogate(v) is None else ""
                              for k, v in zip(("clean", "corrupt", "answer", "wrong"), first)})
    bos = [model.bos_token_id] if form.prepend_bos and model.bos_token_id is not None else []
    # at most the model's context is shown (a 100 kB paste is one problem, not 25,000 chips)
    clean = model.to_str_tokens((bos + model.encode(pair.clean))[:model.n_ctx + 1]) if pair.clean else []
    corrupt = model.to_str_tokens((bos + model.encode(pair.corrupt))[:model.n_ctx + 1]) if pair.corrupt else []
    differing = [i for i, (a, b) in enumerate(zip(clean, corrupt)) if a != b]
    differing += list(range(min(len(clean), len(corrupt)), max(len(clean), len(corrupt))))
    multi_token = multi_token_ok(form.metric)
    answer_ok, answer_bad = _token_check(model, pair.answer, "answer", multi_token)
    wrong_ok, wrong_bad = _token_check(model, pair.wrong, "wrong", multi_token)
    problems = []
    try:
        PromptSet.from_pairs(model, form.prompt_pairs(), prepend_bos=form.prepend_bos, multi_token=multi_token)
    except ValueError as exc:
        problems.append(str(exc))
    for bad in (answer_bad, wrong_bad):
        if bad and not any(bad.split(" is ")[0] in p for p in problems):
            problems.append(bad)
    if pair.answer and pair.answer == pair.wrong and not any("same token" in p for p in problems):
        problems.append(f"answer and wrong are the same token {pair.answer!r}; the metric would be 0")
    try:
        roles = parse_roles(first[4]) if len(first) > 4 else ()
    except ValueError:
        roles = ()                        # listed in problems by from_pairs
    return TokenView(clean, corrupt, differing, answer_ok or answer_bad, wrong_ok or wrong_bad,
                     problems, len(form.pairs) if form.pairs else 1, roles)


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


def parse_path_form(model, form: Form, path: PathForm) -> tuple["PathSpec", PromptSet]:
    """The prompts, metric and direction of the main form plus the Path tab -> (PathSpec, prompts),
    checked against the model (node ranges, positions) without running it; ValueError otherwise.

    >>> spec, _ = parse_path_form(model, form, PathForm(receivers="q:1.0"))      # doctest: +SKIP
    >>> spec.receivers                                                          # doctest: +SKIP
    ('q:1.0',)
    """
    from patching.methods.path import PathSpec, path_nodes
    _check_prompt_choices(form)
    require_runner(model, "path patching")
    prompts = PromptSet.from_pairs(model, form.prompt_pairs(), prepend_bos=form.prepend_bos,
                                   multi_token=multi_token_ok(form.metric))
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
    path_nodes(model, prompts, spec)          # senders, receivers and positions fit the model and prompts
    return spec, prompts


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
    """The kinds with an attribution estimate on this model, SAE features when it ships SAEs
    (every kind when no model)."""
    from patching.methods.attribution import attribution_kinds
    names = attribution_kinds(model, features=True) if model is not None else tuple(KINDS)
    return [{"label": name, "value": name} for name in names]


def parse_steps(value) -> int:
    """IG steps: a whole number in 1..MAX_IG_STEPS (16 when empty).

    >>> parse_steps(""), parse_steps("8")
    (16, 8)
    """
    return whole_number(value, "steps", 16, 1, MAX_IG_STEPS)


def parse_attribution_form(model, form: Form, attr: AttributionForm) -> tuple[dict, PromptSet]:
    """(keyword arguments for run_attribution, prompts), or ValueError naming the bad value.

    >>> kw, _ = parse_attribution_form(model, form, AttributionForm(kinds=("head_out",)))   # doctest: +SKIP
    >>> kw["kinds"]                                                                       # doctest: +SKIP
    ('head_out',)
    """
    from patching.methods.attribution import METHODS, attribution_kinds
    _check_prompt_choices(form)
    require_runner(model, "attribution patching")
    known = attribution_kinds(model, features=True)
    kinds = tuple(attr.kinds) or known
    bad = [k for k in kinds if k not in known]
    if bad:
        raise ValueError(f"no attribution estimate for kind {bad[0]!r} on this model; choose from "
                         f"{', '.join(known)}")
    if attr.method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {attr.method!r}")
    steps = parse_steps(attr.steps) if attr.method == "ig" else 0
    prompts = PromptSet.from_pairs(model, form.prompt_pairs(), prepend_bos=form.prepend_bos,
                                   multi_token=multi_token_ok(form.metric))
    get_metric(form.metric)
    kw = dict(kinds=kinds, metric=form.metric, direction=form.direction, method=attr.method,
              per_position=bool(attr.per_position))
    if attr.method == "ig":
        kw["steps"] = steps
    return kw, prompts


# -- whole numbers ---------------------------------------------------------------------------------
def parse_pair(value) -> int:
    """The attention panel's pair number: a whole number >= 0 (range checked against the run).

    >>> parse_pair(""), parse_pair(3)
    (0, 3)
    """
    return whole_number(value, "pair", 0, 0)


def whole_number(value, what: str, default: int | None, lo: int | None = None,
                 hi: int | None = None) -> int | None:
    """A page value (text, a number or empty) as an int within [lo, hi] (`default` when empty);
    ValueError naming `what`, the value and the accepted range otherwise (the dashboard's one
    whole-number reader, over `patching.core.spec.check_whole`).

    >>> whole_number("12", "k", None, 1, 200), whole_number("", "pair", 0)
    (12, 0)
    >>> whole_number(2.5, "pair", 0)
    Traceback (most recent call last):
    ...
    ValueError: pair must be a whole number, not 2.5
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    number = value
    if not isinstance(value, bool):
        try:
            f = float(value)
            number = int(f) if f.is_integer() else value
        except (TypeError, ValueError, OverflowError):
            pass
    return check_whole(number, what, lo, hi)
