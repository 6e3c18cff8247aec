"""A sweep, a path-patching run, an attribution run or a faithfulness curve split into shards that
run anywhere (Celery workers) and merge into the exact result.

A shard is a share of the method's own batch plan, not a smaller run: every shard caches the
clean and corrupt runs, builds the same plan (same memory budget, same batches, so the same
floating-point sums) and runs only its batches (`patching/methods/share.py` deals them by cost,
largest first, each to the least loaded shard). What a batch is, per method (`WORKS`):

- sweep: the sweep's batches (`sweep.batch_plan`), cost rows x layers resumed, so early layers
  (long resumes) and late ones (short) balance across shards;
- path: sender chunks of one (write slot, position) group, or receiver chunks of one layer;
- attribution: pair chunks (`attribution.pair_batches`; each chunk's gradients are its own);
- curve: chunks of the curve's kept sets (k-chunks), one batched ablated forward each.

Splitting a run into smaller runs (by layer, by cells) would change which cells share a batch
and so, in the last bits, the values; dealing out the plan's batches keeps every value
bit-identical to the one-worker run, and the CSV byte-identical.

The memory budget is fixed when the shards are planned (`plan(..., max_memory_mb)`): a worker
that chose its own would cut other batches, and `merge` would find cells computed twice with
different values or not at all (it refuses both, naming them).

>>> from patching.methods.sweep import sweep
>>> shards = plan(PatchSpec(kind="resid_pre"), 2, max_memory_mb=256)
>>> parts = [run_shard(model, prompts, s) for s in shards]
>>> merged = merge(parts)
>>> bool(torch.equal(merged.per_pair, sweep(model, prompts, PatchSpec(kind="resid_pre"),
...                                         max_memory_mb=256).per_pair))
True
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from metrics import get_metric
from patching.core.prompts import PromptSet
from patching.core.results import PatchResult
from patching.core.spec import PatchSpec, check_whole
from patching.methods.attribution import AttributionResult, AttributionSpec, attribution_share
from patching.methods.circuit import CurveResult, CurveSpec, curve_share
from patching.methods.path import PathResult, PathSpec, path_share
from patching.methods.share import Share, deal_costs
from patching.methods.sweep import LayerStep, Progress, plan_coords, sweep_groups
from patching.model.loading import require_runner
from patching.model.memory_budget import memory_budget

MAX_SHARDS = 256


# -- what can be sharded: one row per method ----------------------------------------------------------
def _run_sweep(model, prompts, spec: PatchSpec, share: Share, max_memory_mb: float, on_progress):
    require_runner(model, "a sharded sweep")
    axes, coords = plan_coords(model, prompts, spec)
    return sweep_groups(model, prompts, spec, get_metric(spec.metric), axes, coords, on_progress,
                        max_memory_mb, select=selector(share, model.n_layers))


def _run_path(model, prompts, spec: PathSpec, share: Share, max_memory_mb: float, on_progress):
    return path_share(model, prompts, spec, share, max_memory_mb=max_memory_mb, on_progress=on_progress)


def _run_attribution(model, prompts, spec: AttributionSpec, share: Share, max_memory_mb: float, on_progress):
    results, written = attribution_share(model, prompts, spec, share, max_memory_mb=max_memory_mb,
                                         on_progress=on_progress)
    return results, written.expand(_attribution_rows(results).shape).clone()


def _run_curve(model, prompts, spec: CurveSpec, share: Share, max_memory_mb: float, on_progress):
    return curve_share(model, prompts, spec, share, max_memory_mb=max_memory_mb, on_progress=on_progress)


def _same_cells(a: PatchResult, b: PatchResult) -> bool:
    return (a.axes == b.axes and a.coords == b.coords and torch.equal(a.clean_baseline, b.clean_baseline)
            and torch.equal(a.corrupt_baseline, b.corrupt_baseline))


def _attribution_rows(results: list[AttributionResult]) -> Tensor:
    """[cells of every kind + 2, pairs]: each kind's values, then the clean and corrupt baselines
    (a pair batch's own, so they are merged like the values)."""
    n = results[0].clean_baseline.numel()
    return torch.cat([r.per_pair.reshape(-1, n) for r in results]
                     + [results[0].clean_baseline[None], results[0].corrupt_baseline[None]])


def _attribution_assemble(first: list[AttributionResult], rows: Tensor, seconds: float) -> list[AttributionResult]:
    out, at = [], 0
    clean, corrupt = rows[-2].clone(), rows[-1].clone()
    for r in first:
        size = r.per_pair.numel() // clean.numel()
        out.append(dataclasses.replace(r, per_pair=rows[at:at + size].reshape(r.per_pair.shape).clone(),
                                       clean_baseline=clean, corrupt_baseline=corrupt, seconds=seconds))
        at += size
    return out


def _curve_rows(c: CurveResult) -> Tensor:
    """[len(ks) + 2, pairs]: the ks' rows, then full and empty."""
    return torch.cat([c.per_pair, c.full[None], c.empty[None]])


def _curve_assemble(first: CurveResult, rows: Tensor, seconds: float) -> CurveResult:
    return dataclasses.replace(first, per_pair=rows[:-2].clone(), full=rows[-2].clone(), empty=rows[-1].clone(),
                               seconds=seconds)


def _replace_values(first: PatchResult, values: Tensor, seconds: float) -> PatchResult:
    return dataclasses.replace(first, per_pair=values, seconds=seconds)


@dataclass(frozen=True)
class Work:
    """One method that shards: its spec class, how a shard of it runs, what its values are (the
    tensor `merge` combines, in the shape of a part's `written`) and how the whole comes back."""
    name: str
    noun: str                                   # "sweep": what error messages call one run
    spec_type: type
    run: Callable        # (model, prompts, spec, share, max_memory_mb, on_progress) -> (result, written)
    values: Callable     # result -> Tensor (written's shape)
    assemble: Callable   # (first part's result, merged values, seconds) -> the result
    same: Callable       # (result, result) -> bool: parts of one run (cells, shared baselines)
    to_json: Callable
    from_json: Callable


WORKS: dict[str, Work] = {w.name: w for w in (
    Work("sweep", "sweep", PatchSpec, _run_sweep, lambda r: r.per_pair, _replace_values, _same_cells,
         lambda r: r.to_json(), PatchResult.from_json),
    Work("path", "path-patching run", PathSpec, _run_path, lambda r: r.per_pair, _replace_values, _same_cells,
         lambda r: r.to_json(), PathResult.from_json),
    Work("attribution", "attribution run", AttributionSpec, _run_attribution, _attribution_rows,
         _attribution_assemble, lambda a, b: [(r.axes, r.coords) for r in a] == [(r.axes, r.coords) for r in b],
         lambda rs: [r.to_json() for r in rs], lambda d: [AttributionResult.from_json(r) for r in d]),
    Work("curve", "faithfulness curve", CurveSpec, _run_curve, _curve_rows, _curve_assemble,
         lambda a, b: a.ks == b.ks and a.components == b.components, lambda c: c.to_json(), CurveResult.from_json),
)}


def work_of(spec) -> Work:
    """The `WORKS` row of a spec, by its class; ValueError naming the class otherwise.

    >>> work_of(PathSpec()).name
    'path'
    """
    for work in WORKS.values():
        if type(spec) is work.spec_type:
            return work
    raise ValueError(f"a shard's spec must be one of {', '.join(w.spec_type.__name__ for w in WORKS.values())}, "
                     f"not {type(spec).__name__}")


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` of one run (a sweep, path patching, attribution, a curve: the
    spec's class says which), run under one fixed memory budget (MB)."""
    spec: PatchSpec | PathSpec | AttributionSpec | CurveSpec
    index: int
    count: int
    max_memory_mb: float

    def __post_init__(self):
        check_whole(self.count, "shard count", 1, MAX_SHARDS)
        check_whole(self.index, "shard index", 0, self.count - 1)
        work_of(self.spec)
        if isinstance(self.max_memory_mb, bool) or not isinstance(self.max_memory_mb, (int, float)) \
                or not 0 < self.max_memory_mb < float("inf"):
            raise ValueError(f"a shard's memory budget must be a positive number of MB, not {self.max_memory_mb!r}")

    @property
    def work(self) -> Work:
        return work_of(self.spec)

    @property
    def share(self) -> Share:
        return Share(self.index, self.count)

    @property
    def label(self) -> str:
        """'shard 2/4' (1-based, for people)."""
        return f"shard {self.index + 1}/{self.count}"

    def to_dict(self) -> dict:
        return {"work": self.work.name, "spec": self.spec.to_dict(), "index": self.index, "count": self.count,
                "max_memory_mb": self.max_memory_mb}

    @classmethod
    def from_dict(cls, d: dict) -> "Shard":
        name = d.get("work", "sweep")
        if name not in WORKS:
            raise ValueError(f"unknown shard work {name!r}; known: {', '.join(WORKS)}")
        return cls(WORKS[name].spec_type.from_dict(d["spec"]), d["index"], d["count"], d["max_memory_mb"])


def plan(spec, n: int, max_memory_mb: float | None = None) -> tuple[Shard, ...]:
    """The n shards of one run (any spec of `WORKS`). Without `max_memory_mb`, the default budget
    of this machine's CPU is fixed for all of them (every shard must cut the same batches).

    >>> [s.label for s in plan(PatchSpec(kind="head_out"), 3, 512)]
    ['shard 1/3', 'shard 2/3', 'shard 3/3']
    """
    check_whole(n, "--shards", 1, MAX_SHARDS)
    if max_memory_mb is None:
        max_memory_mb = memory_budget("cpu") / 2**20
    return tuple(Shard(spec, k, n, float(max_memory_mb)) for k in range(n))


def deal(plan_steps: list[LayerStep], n_layers: int, count: int) -> list[list[tuple[int, int]]]:
    """The sweep plan's batches, (step number, batch number), dealt to `count` shards: largest cost
    first (rows x layers resumed), each to the least loaded shard (ties: the lower shard number).

    >>> steps = [LayerStep(0, 0, [0, 1], torch.zeros(2, 1), torch.ones(2, dtype=torch.bool),
    ...                    [torch.tensor([0]), torch.tensor([1])]),
    ...          LayerStep(1, 1, [0], torch.zeros(1, 1), torch.ones(1, dtype=torch.bool), [torch.tensor([0])])]
    >>> deal(steps, 2, 2)
    [[(0, 0), (1, 0)], [(0, 1)]]
    """
    units = [(s, b) for s, step in enumerate(plan_steps) for b, _ in enumerate(step.parts)]
    costs = [len(plan_steps[s].parts[b]) * (n_layers - plan_steps[s].layer) for s, b in units]
    return [[units[i] for i in share] for share in deal_costs(costs, count)]


def selector(share: Share, n_layers: int) -> Callable[[list[LayerStep]], list[LayerStep]]:
    """The plan selector `sweep_groups` applies: this shard's batches; shard 0 also writes the
    cells that change nothing (the base run's value)."""
    def select(steps: list[LayerStep]) -> list[LayerStep]:
        mine = deal(steps, n_layers, share.count)[share.index]
        return [dataclasses.replace(step, parts=[step.parts[b] for s, b in mine if s == n], fill=share.fills)
                for n, step in enumerate(steps)]
    return select


@dataclass(frozen=True, eq=False)
class ShardPart:
    """What one shard computed: the run's result with the other shards' values NaN, and `written`
    (bool, the shape of `shard.work.values(result)`) marking its own."""
    shard: Shard
    result: object
    written: Tensor
    seconds: float = 0.0
    worker: str = ""

    def __post_init__(self):
        values = self.shard.work.values(self.result)
        if tuple(self.written.shape) != tuple(values.shape):
            raise ValueError(f"{self.shard.label}: written {tuple(self.written.shape)} does not match "
                             f"its values {tuple(values.shape)}")

    def to_json(self) -> dict:
        """JSON-able (what a Celery worker sends back); `from_json` restores it exactly."""
        return {"shard": self.shard.to_dict(), "result": self.shard.work.to_json(self.result),
                "written": "".join("1" if w else "0" for w in self.written.flatten().tolist()),
                "seconds": self.seconds, "worker": self.worker}

    @classmethod
    def from_json(cls, d: dict) -> "ShardPart":
        shard = Shard.from_dict(d["shard"])
        result = shard.work.from_json(d["result"])
        shape = shard.work.values(result).shape
        bits = torch.tensor([c == "1" for c in d["written"]], dtype=torch.bool)
        if bits.numel() != shape.numel():
            raise ValueError(f"shard part: {bits.numel()} written flags for {shape.numel()} values")
        return cls(shard, result, bits.view(shape), float(d.get("seconds", 0.0)), str(d.get("worker", "")))


def run_shard(model, prompts: PromptSet, shard: Shard, *, on_progress: Progress | None = None,
              worker: str = "") -> ShardPart:
    """Run one shard's batches (see the module doc).

    >>> run_shard(model, prompts, plan(PatchSpec(kind="resid_pre"), 2, 256)[1]).written.any()
    tensor(True)
    """
    start = time.perf_counter()
    result, written = shard.work.run(model, prompts, shard.spec, shard.share, shard.max_memory_mb, on_progress)
    return ShardPart(shard, result, written, time.perf_counter() - start, worker)


def merge(parts):
    """The whole run from its shards' parts (any order); ValueError when a shard is missing or
    repeated, the parts belong to different runs, or a value is computed by none of them or by two
    with different values (shards that planned different batches).

    >>> merge([])
    Traceback (most recent call last):
    ...
    ValueError: no shard parts to merge
    """
    parts = sorted(parts, key=lambda p: p.shard.index)
    if not parts:
        raise ValueError("no shard parts to merge")
    count = parts[0].shard.count
    got = [p.shard.index for p in parts]
    if got != list(range(count)):
        raise ValueError(f"shard parts {[i + 1 for i in got]} of {count}: each shard 1-{count} must come once")
    budgets = sorted({p.shard.max_memory_mb for p in parts})
    if len(budgets) > 1:
        raise ValueError(f"the shards were planned with different memory budgets ({', '.join(f'{b:g}' for b in budgets)}"
                         " MB); plan all of them at once with `plan`")
    work, first = parts[0].shard.work, parts[0].result
    for p in parts[1:]:
        if p.shard.spec != parts[0].shard.spec or not work.same(first, p.result):
            raise ValueError(f"{p.shard.label} belongs to another {work.noun} (spec, cells or baselines differ)")
    values = torch.full_like(work.values(first), float("nan"))
    covered = torch.zeros_like(parts[0].written)
    for p in parts:
        mine = work.values(p.result)
        both = p.written & covered
        if not torch.equal(mine[both], values[both]):
            raise ValueError(f"{p.shard.label} computed {int(both.sum())} values another shard computed too, "
                             "differently: the shards planned different batches (different memory budgets?)")
        new = p.written & ~covered
        values[new] = mine[new]
        covered |= p.written
    if not covered.all():
        raise ValueError(f"{int((~covered).sum())} of {covered.numel()} values were computed by no shard: "
                         "the shards planned different batches (different memory budgets?)")
    return work.assemble(first, values, max(p.seconds for p in parts))
