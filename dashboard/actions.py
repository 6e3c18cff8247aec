"""Run actions: a valid form -> a tracked job, queued for the run slot, whose result is saved to
the run history, with progress reported as `Progress` (sweep, path patching, attribution).

Nothing here imports Dash; the tabs' callbacks call these with a `report` that writes Dash's
progress outputs (`dashboard.server.jobs.progress_reporter`). The clean and corrupt forwards run
once per Run, inside the engine; the baselines shown are the result's.

>>> run_id = execute_run(registry, store, Form(kind="head_out"), data_dir)     # doctest: +SKIP
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from patching.core.prompts import PromptSet
from patching.methods.sweep import sweep
from patching.runs.jobs import cancel_job, eta_text, running_jobs, tracked, watch_queue  # noqa: F401 - cancel_job for the tabs
from patching.runs.slot import run_busy, run_slot  # noqa: F401 - re-exported for the tabs

from dashboard.forms import AttributionForm, Form, PathForm, check_model, parse_attribution_form, parse_form, \
    parse_path_form

log = logging.getLogger("dashboard")


# -- running -----------------------------------------------------------------------------------
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
                report: Callable[[Progress], None] = lambda p: None, token: str | None = None,
                max_memory_mb: float | None = None, shards: int = 1, backend=None,
                on_shards: Callable | None = None) -> int:
    """The Run button's job: validate, queue for the run slot, sweep, save (baselines from the sweep).
    `max_memory_mb` caps one batch (the server's `--max-memory`; None: the free-memory share).
    With `shards` > 1, the sweep runs in that many shards on `backend`'s workers
    (`dashboard/server/shards.py`); `on_shards` gets their last `ShardProgress` (who took them).

    Returns the saved run's id; ValueError with the message to show on bad input (JobCancelled
    when Cancel was pressed for `token`, see `job_status.job_token`).
    """
    model = registry.get(check_model(registry, form.model))
    spec, prompts = parse_form(model, form)
    label = f"{spec.kind}{' per pos' if spec.per_position else ''} · {spec.direction} · " \
            f"{spec.metric} · {Path(form.model).name}"
    if shards == 1:
        return _run_and_save(store, data_dir, report, "sweep", label, form.model, prompts, spec.metric,
                             lambda on_progress: sweep(model, prompts, spec, on_progress=on_progress,
                                                       max_memory_mb=max_memory_mb),
                             "patched forwards", token)
    if backend is None:
        raise ValueError(f"Shards {shards}: sharding needs workers (the server started with --redis-url); "
                         "set Shards to 1")
    status: list = []

    def sharded(on_progress):
        import dataclasses
        from patching.core.provenance import attach
        start = time.perf_counter()
        result = backend.run(model, prompts, spec, shards, on_progress, status.append, max_memory_mb=max_memory_mb)
        if on_shards is not None and status:
            on_shards(status[-1])
        return attach(dataclasses.replace(result, seconds=time.perf_counter() - start), model, prompts)
    return _run_and_save(store, data_dir, report, "sweep", f"{label} · {shards} shards", form.model, prompts,
                         spec.metric, sharded, "patched forwards", token,
                         detail=lambda: status[-1].line() if status else "")


def _queued(report: Callable[[Progress], None], store=None, job=None) -> Callable[[float], None]:
    """run_slot's `on_wait`: say the run is queued behind another (which one, and how far it is),
    and for how long; record that for other pages; stop when Cancel was pressed for it."""
    def waited(seconds: float) -> None:
        ahead = next((j for j in running_jobs(store, check_stale=False) if j.info.id != getattr(job, "id", None) and not j.queued),
                     None) if store is not None else None
        behind = f"queued behind job {ahead.info.id}" if ahead else "queued behind another run"
        text = f"{behind} ({seconds:.0f} s); it starts when that one ends"
        report(Progress(0, 1, text, ""))        # the job ahead, with its progress, is named under it
        if ahead is not None:
            text = f"queued behind {ahead.text()} ({seconds:.0f} s); it starts when that one ends"
        if job is not None:
            job.progress(0, 0, text, queued=True)
            job.beat()                            # raises JobCancelled once Cancel was pressed for it
    return waited


def progress_text(done: int, total: int, unit: str, started: float | None, now: float | None = None) -> str:
    """'40 / 160 patched forwards · ≈ 3 s left' (no ETA before the first is done).

    >>> progress_text(40, 160, "patched forwards", 100.0, 101.0)
    '40 / 160 patched forwards · ≈ 3 s left'
    """
    text = f"{done:,} / {total:,} {unit}"
    if started is None or not 0 < done < total:
        return text
    elapsed = (time.time() if now is None else now) - started
    return f"{text} · {eta_text(elapsed / done * (total - done))}"


def _run_and_save(store, data_dir, report: Callable[[Progress], None], job_kind: str, label: str,
                  model_name: str, prompts: PromptSet, metric: str, compute, unit: str,
                  token: str | None = None, detail: Callable[[], str] = lambda: "") -> int:
    """What every Run does once its form is valid: a tracked job queued for the run slot,
    `compute(on_progress)`, the result saved to history; progress through `report` (and into the
    store, so a reloaded page or a second tab can show it). The baselines shown are the result's
    own (the engine's clean and corrupt runs): no extra forward. `detail()` is added to the
    progress text (a sharded run: its shards and workers)."""
    with tracked(store, job_kind, label, model_name, token=token) as job:
        report(Progress(0, 1, "starting…", ""))
        with run_slot(data_dir, watch_queue(store, _queued(report, store, job))):
            job.raise_if_cancelled()                 # Cancel pressed while it waited for the slot
            text = f"running the clean and corrupt prompts ({2 * prompts.n_pairs} forwards)…"
            job.progress(0, 0, text)
            report(Progress(0, 1, text, ""))
            started: list[float] = []

            def on_progress(done: int, total: int):   # baselines come with the result: one clean + corrupt run
                if not started:
                    started.append(time.time())
                job.beat()
                more = detail()
                more = f" · {more}" if more else ""
                job.progress(done, total, progress_text(done, total, unit, None) + more)   # other pages add their ETA
                report(Progress(done, total, progress_text(done, total, unit, started[0]) + more, ""))

            result = compute(on_progress)
            run_id = store.save(result, [(p.clean, p.corrupt, p.answer, p.wrong) for p in prompts.pairs], label)
            job.done(run_id)
    report(Progress(1, 1, f"done in {result.seconds:.2f} s", baselines_text(
        (result.clean_value, result.corrupt_value), metric)))
    return run_id


# -- path patching and attribution ----------------------------------------------------------
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
    """The Path tab's Run: validate, queue for the run slot, path sweep, save to history.

    Returns the saved run's id; ValueError with the message to show on bad input.
    """
    from patching.methods.path import run_path
    model = registry.get(check_model(registry, form.model))
    spec, prompts = parse_path_form(model, form, path)
    label = f"{path_label(spec)} · {Path(form.model).name}"
    return _run_and_save(store, data_dir, report, "path", label, form.model, prompts, spec.metric,
                         lambda on_progress: run_path(model, prompts, spec, on_progress=on_progress),
                         "path patches", token)


def execute_attribution(registry, store, form: Form, attr: AttributionForm, data_dir: str | Path,
                        report: Callable[[Progress], None] = lambda p: None, token: str | None = None) -> int:
    """The Attribution tab's Run: validate, queue, every kind's estimate (baselines from it), save.

    Returns the attribution run's id (RunStore.get_attribution); ValueError on bad input.
    """
    from patching.methods.attribution import edge_attribution, run_attribution
    model = registry.get(check_model(registry, form.model))
    kw, prompts = parse_attribution_form(model, form, attr)

    method = "plain" if kw["method"] == "plain" else f"ig, {kw['steps']} steps"
    label = (f"attribution ({method}) · {len(kw['kinds'])} kinds · {form.direction} · {form.metric} · "
             f"{Path(form.model).name}")
    label += " · edges" if attr.edges else ""
    with tracked(store, "attribution", label, form.model, token=token) as job, \
            run_slot(data_dir, watch_queue(store, _queued(report, store, job))):
        job.raise_if_cancelled()                 # Cancel pressed while it waited for the slot
        what = "forwards and backward" if kw["method"] == "plain" else f"{kw['steps']} interpolated steps"
        report(Progress(0, 1, f"attributing {len(kw['kinds'])} kinds ({what})…", ""))
        results = run_attribution(model, prompts, **kw)
        r = results[0]                           # every kind shares the clean and corrupt runs
        text = baselines_text((r.clean_value, r.corrupt_value), form.metric)
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



def guarded(what: str, compute) -> tuple[object, str]:
    """(compute(), "") or (None, the message to show): a ValueError's own, or 'internal error: …'
    (logged with its traceback) for anything else, so the page stays alive.

    >>> guarded("run", lambda: 1), guarded("run", lambda: int("x"))[1][:27]
    ((1, ''), 'invalid literal for int() w')
    """
    try:
        return compute(), ""
    except ValueError as exc:
        return None, str(exc) or f"{what} refused ({type(exc).__name__})"
    except Exception as exc:
        log.exception("%s failed", what)
        return None, f"internal error: {type(exc).__name__}: {exc}"
