"""One sweep split into shards that run anywhere (Celery workers) and merge into the exact result.

A shard is a share of the sweep's own batch plan (`sweep.batch_plan`), not a smaller sweep: every
shard caches the clean and corrupt runs, builds the same plan (same memory budget, same batches,
so the same floating-point sums) and runs only its batches. The batches are dealt out by cost —
a batch resumed at layer L costs its rows x (n_layers - L) block passes — largest first, each to
the least loaded shard, so early layers (long resumes) and late ones (short) balance across
shards. Splitting a sweep into smaller sweeps (by layer, by cells) would change which cells share
a batch and so, in the last bits, the values; dealing out the plan's batches keeps every value
bit-identical to the one-worker sweep, and the CSV byte-identical.

The memory budget is fixed when the shards are planned (`plan(..., max_memory_mb)`): a worker
that chose its own would cut other batches, and `merge` would find cells computed twice with
different values or not at all (it refuses both, naming them).

>>> from patching.methods.share import Share, deal_costs
from patching.methods.sweep import sweep
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
from patching.methods.share import Share, deal_costs
from patching.methods.sweep import LayerStep, Progress, plan_coords, sweep_groups
from patching.model.loading import require_runner
from patching.model.memory_budget import memory_budget

MAX_SHARDS = 256


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` of one sweep, run under one fixed memory budget (MB)."""
    spec: PatchSpec
    index: int
    count: int
    max_memory_mb: float

    def __post_init__(self):
        check_whole(self.count, "shard count", 1, MAX_SHARDS)
        check_whole(self.index, "shard index", 0, self.count - 1)
        if not isinstance(self.spec, PatchSpec):
            raise ValueError(f"a shard's spec must be a PatchSpec, not {type(self.spec).__name__}")
        if isinstance(self.max_memory_mb, bool) or not isinstance(self.max_memory_mb, (int, float)) \
                or not 0 < self.max_memory_mb < float("inf"):
            raise ValueError(f"a shard's memory budget must be a positive number of MB, not {self.max_memory_mb!r}")

    @property
    def label(self) -> str:
        """'shard 2/4' (1-based, for people)."""
        return f"shard {self.index + 1}/{self.count}"

    def to_dict(self) -> dict:
        return {"spec": self.spec.to_dict(), "index": self.index, "count": self.count,
                "max_memory_mb": self.max_memory_mb}

    @classmethod
    def from_dict(cls, d: dict) -> "Shard":
        return cls(PatchSpec.from_dict(d["spec"]), d["index"], d["count"], d["max_memory_mb"])


def plan(spec: PatchSpec, n: int, max_memory_mb: float | None = None) -> tuple[Shard, ...]:
    """The n shards of one sweep. Without `max_memory_mb`, the default budget of this machine's
    CPU is fixed for all of them (every shard must cut the same batches).

    >>> [s.label for s in plan(PatchSpec(kind="head_out"), 3, 512)]
    ['shard 1/3', 'shard 2/3', 'shard 3/3']
    """
    check_whole(n, "--shards", 1, MAX_SHARDS)
    if max_memory_mb is None:
        max_memory_mb = memory_budget("cpu") / 2**20
    return tuple(Shard(spec, k, n, float(max_memory_mb)) for k in range(n))


def deal(plan_steps: list[LayerStep], n_layers: int, count: int) -> list[list[tuple[int, int]]]:
    """The plan's batches, (step number, batch number), dealt to `count` shards: largest cost
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


def selector(shard: Shard, n_layers: int) -> Callable[[list[LayerStep]], list[LayerStep]]:
    """The plan selector `sweep_groups` applies: this shard's batches; shard 0 also writes the
    cells that change nothing (the base run's value)."""
    def select(steps: list[LayerStep]) -> list[LayerStep]:
        mine = deal(steps, n_layers, shard.count)[shard.index]
        return [dataclasses.replace(step, parts=[step.parts[b] for s, b in mine if s == n],
                                    fill=shard.index == 0)
                for n, step in enumerate(steps)]
    return select


@dataclass(frozen=True, eq=False)
class ShardPart:
    """What one shard computed: the sweep's result with the other shards' values NaN, and
    `written` [*cells, pairs] (bool) marking its own."""
    shard: Shard
    result: PatchResult
    written: Tensor
    seconds: float = 0.0
    worker: str = ""

    def __post_init__(self):
        if tuple(self.written.shape) != tuple(self.result.per_pair.shape):
            raise ValueError(f"{self.shard.label}: written {tuple(self.written.shape)} does not match "
                             f"its values {tuple(self.result.per_pair.shape)}")

    def to_json(self) -> dict:
        """JSON-able (what a Celery worker sends back); `from_json` restores it exactly."""
        return {"shard": self.shard.to_dict(), "result": self.result.to_json(),
                "written": "".join("1" if w else "0" for w in self.written.flatten().tolist()),
                "seconds": self.seconds, "worker": self.worker}

    @classmethod
    def from_json(cls, d: dict) -> "ShardPart":
        result = PatchResult.from_json(d["result"])
        bits = torch.tensor([c == "1" for c in d["written"]], dtype=torch.bool)
        if bits.numel() != result.per_pair.numel():
            raise ValueError(f"shard part: {bits.numel()} written flags for {result.per_pair.numel()} values")
        return cls(Shard.from_dict(d["shard"]), result, bits.view(result.per_pair.shape),
                   float(d.get("seconds", 0.0)), str(d.get("worker", "")))


def run_shard(model, prompts: PromptSet, shard: Shard, *, on_progress: Progress | None = None,
              worker: str = "") -> ShardPart:
    """Run one shard's batches of the sweep (see the module doc).

    >>> run_shard(model, prompts, plan(PatchSpec(kind="resid_pre"), 2, 256)[1]).written.any()
    tensor(True)
    """
    start = time.perf_counter()
    require_runner(model, "a sharded sweep")
    spec = shard.spec
    axes, coords = plan_coords(model, prompts, spec)
    result, written = sweep_groups(model, prompts, spec, get_metric(spec.metric), axes, coords, on_progress,
                                   shard.max_memory_mb, select=selector(shard, model.n_layers))
    return ShardPart(shard, result, written, time.perf_counter() - start, worker)


def merge(parts) -> PatchResult:
    """The whole sweep from its shards' parts (any order); ValueError when a shard is missing or
    repeated, the parts belong to different sweeps, or a cell is computed by none of them or by two
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
    first = parts[0].result
    for p in parts[1:]:
        r = p.result
        if (p.shard.spec != parts[0].shard.spec or r.axes != first.axes or r.coords != first.coords
                or not torch.equal(r.clean_baseline, first.clean_baseline)
                or not torch.equal(r.corrupt_baseline, first.corrupt_baseline)):
            raise ValueError(f"{p.shard.label} belongs to another sweep (spec, cells or baselines differ)")
    values = torch.full_like(first.per_pair, float("nan"))
    covered = torch.zeros_like(parts[0].written)
    for p in parts:
        both = p.written & covered
        if not torch.equal(p.result.per_pair[both], values[both]):
            raise ValueError(f"{p.shard.label} computed {int(both.sum())} values another shard computed too, "
                             "differently: the shards planned different batches (different memory budgets?)")
        new = p.written & ~covered
        values[new] = p.result.per_pair[new]
        covered |= p.written
    if not covered.all():
        raise ValueError(f"{int((~covered).sum())} of {covered.numel()} values were computed by no shard: "
                         "the shards planned different batches (different memory budgets?)")
    return dataclasses.replace(first, per_pair=values, seconds=max(p.seconds for p in parts))
