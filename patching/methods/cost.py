"""Cost preview: how much work a sweep, path patching or attribution run will do, before it runs.

`estimate_cost` counts the work `engine.sweep` will really do, from the same plan it runs
(`engine.batch_plan`: the same filters, the same skipping of indices whose activations do not
differ, the same batches under the memory budget), so the counts are exact, not modelled:

- **patched rows**: live indices x pairs, the patched runs the engine computes;
- **forward-equivalents**: FLOP-ish work in units of one full forward of one prompt. A resumed
  row costs (half-blocks after the patch point x positions computed) / (2 x layers x positions):
  a row resumes at its layer's stage (pre / mid / post) and computes only positions >= its
  batch's first patched position; the last layer counts one position (only the last position's
  attention output and MLP are computed there). The two cached runs (clean, corrupt) add one
  forward per pair each;
- **reference forwards**: what TransformerLens' `patching.py` would run for the same grid: one
  full forward per index and pair, plus the two cached runs;
- **seconds**: from a `Calibration` of this model on this device (the engine's resumed forward
  and its cached forward, each timed at 1 and 64 rows: a cost per row x half-block x position
  from the big batch, a fixed cost per half-block step from the small one), applied batch by batch;
- **peak memory**: the bytes of the cached clean and corrupt runs (measured on the tensors) plus
  the largest batch under the memory budget (the engine's own per-row bound). The model's weights
  are not included (`weights_bytes` has them). Without `max_memory_mb` the budget is the share of
  free memory `patching.model.memory_budget` gives, read now; the sweep reads it again when it starts,
  so batch counts can differ if free memory changed in between (rows cannot).

The estimate runs the clean and corrupt forwards once (it needs them to know which indices
change anything): about 2 forward-equivalents per pair, what the sweep itself spends first.
Path patching and attribution have estimates of the same shape (`estimate_path_cost`,
`estimate_attribution_cost`); theirs are counts of rows and a documented approximation of the work.

>>> est = estimate_cost(model, prompts, PatchSpec(kind="head_out"))            # doctest: +SKIP
>>> est.text()                                                                  # doctest: +SKIP
'≈ 96 patched forwards (≈ 31 forward-equivalents; TransformerLens ≈ 100), ≈ 0.2 s on cpu, peak ≈ 12 MB'
"""
from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import asdict, dataclass

import torch

from patching.methods.sweep import _memory_per_row, batch_plan, pair_group, patch_context, plan_coords
from patching.methods.sweep import sweep as _sweep       # bound here: what the calibration times is the real sweep
from patching.kinds import KINDS
from patching.model.memory_budget import memory_budget, placed_devices
from patching.model.loading import require_runner
from patching.core.prompts import PromptSet
from patching.core.spec import PatchSpec, check_whole
from patching.methods.pair import CachedPair

ANALYSES = ("sweep", "path", "attribution")
CALIBRATION_ROWS = 64
SLOW_SECONDS = 60.0          # above this, the dashboard suggests attribution patching first


# -- calibration ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """Seconds of the engine's batched forwards on one model and device. A resumed run of B rows
    over S half-block steps of P positions each costs about S x step_seconds + B x S x P x
    unit_seconds; a cached run (`Runner.run`, which keeps every activation) the same with
    run_step_seconds and run_unit_seconds."""
    model_name: str
    device: str
    unit_seconds: float          # resumed runs: per row x half-block x position
    step_seconds: float          # resumed runs: per half-block step of a batch, independent of rows
    forward_seconds: float       # the timed batched forward (`rows` rows, every position)
    rows: int
    run_unit_seconds: float = 0.0    # cached runs: per row x half-block x position
    run_step_seconds: float = 0.0    # cached runs: per half-block step
    sweep_seconds: float = 0.0       # a sweep's own cost beyond its forwards (plan, metric, provenance)

    def __post_init__(self):
        for name in ("unit_seconds", "step_seconds", "forward_seconds", "run_unit_seconds", "run_step_seconds",
                     "sweep_seconds"):
            v = getattr(self, name)
            if not v >= 0:
                raise ValueError(f"{name} must be >= 0 seconds, not {v!r}")
        if self.rows < 1:
            raise ValueError(f"rows must be >= 1, not {self.rows!r}")

    def seconds(self, steps: float, units: float) -> float:
        """Seconds for `steps` half-block steps doing `units` row x half-block x position units."""
        return steps * self.step_seconds + units * self.unit_seconds

    def run_seconds(self, steps: float, units: float) -> float:
        """The same for cached runs (`Runner.run`)."""
        return steps * self.run_step_seconds + units * self.run_unit_seconds


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _fit(small: float, big: float, rows: int, units_per_row: int, steps: int) -> tuple[float, float]:
    """(unit, step) seconds from a 1-row and a `rows`-row timing of the same forward. The unit cost
    is the big batch's time per unit (its fixed costs spread over its rows), so a noisy 1-row
    timing can only raise the fixed cost per step, never shrink the cost per unit."""
    unit = big / (rows * units_per_row)
    return unit, max(small - units_per_row * unit, 0.0) / steps


def calibrate(model, prompts: PromptSet, rows: int = CALIBRATION_ROWS, repeat: int = 5) -> Calibration:
    """Time the engine's batched forwards of these prompts at 1 row and at `rows` rows: a resumed
    run from layer 0 (what patched runs do) and a cached run (`Runner.run`, what the clean and
    corrupt runs do). The big batch gives the cost per unit of work, what the 1-row run takes
    beyond its share the fixed cost per half-block step. Without the engine's runner, the
    bridge's forward is timed for both.

    >>> calibrate(model, prompts).unit_seconds > 0                          # doctest: +SKIP
    True
    """
    n_layers, n_pos = model.n_layers, prompts.n_pos
    tokens = prompts.corrupt_tokens[:1]
    steps = 2 * n_layers
    with torch.inference_mode():
        if model.runner is not None:
            base = model.runner.run(tokens)
            x = base.layers[0].resid_pre

            def forward(b: int):
                pair = torch.zeros(b, dtype=torch.long, device=x.device)
                return lambda: model.runner.resume(base, pair, 0, "pre", x.expand(b, -1, -1).contiguous(), 0)

            def cached(b: int):
                return lambda: model.runner.run(tokens.expand(b, -1).contiguous())
            units_per_row = _row_units(n_layers, 0, "pre", n_pos, 0)
        else:
            def forward(b: int):
                return lambda: model.bridge(tokens.expand(b, -1))
            cached = forward
            units_per_row = 2 * n_layers * n_pos
        forward(1)(), cached(1)()                        # warm-up
        small, big = _best(forward(1), repeat), _best(forward(rows), repeat)
        run_small, run_big = _best(cached(1), repeat), _best(cached(rows), repeat)
    unit, step = _fit(small, big, rows, units_per_row, steps)
    run_unit, run_step = _fit(run_small, run_big, rows, 2 * n_layers * n_pos, steps)
    cal = Calibration(model.name, str(prompts.clean_tokens.device), unit, step, big, rows, run_unit, run_step)
    return dataclasses.replace(cal, sweep_seconds=_sweep_overhead(model, prompts, cal, repeat))


def _sweep_overhead(model, prompts: PromptSet, cal: Calibration, repeat: int) -> float:
    """What a whole sweep costs beyond the forwards the calibration prices: a one-pair, one-cell
    sweep (its plan, cached runs, metric, provenance), timed, less its forwards' estimate. Small
    runs are mostly this (on the shipped model a 16-row sweep is ~4x its forwards alone)."""
    one = prompts.subset([0]) if prompts.n_pairs > 1 else prompts
    spec = PatchSpec(kind="resid_pre", layers=(model.n_layers - 1,), positions=(one.n_pos - 1,))
    _sweep(model, one, spec)                                 # warm-up
    measured = _best(lambda: _sweep(model, one, spec), repeat)
    return max(measured - estimate_cost(model, one, spec, calibration=cal).seconds, 0.0)


class CalibrationCache:
    """Calibrations by (model, device), made on first use: one per model for the dashboard's
    live estimates (an instance belongs to an app or a script; nothing is module-level)."""

    def __init__(self, calibrate_fn=None):
        self._by_key: dict[tuple[str, str], Calibration] = {}
        self._calibrate = calibrate_fn or calibrate      # (model, prompts) -> Calibration
        self._lock = threading.Lock()                    # pages loading at once calibrate once

    def get(self, model, prompts: PromptSet) -> Calibration:
        key = (model.name, str(prompts.clean_tokens.device))
        with self._lock:
            if key not in self._by_key:
                self._by_key[key] = self._calibrate(model, prompts)
            return self._by_key[key]


# -- the estimate ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CostEstimate:
    analysis: str                # sweep / path / attribution
    kind: str                    # the patch kind; "path"; or the attribution's kinds, comma-separated
    device: str
    n_pairs: int
    cells: int                   # cells of the result grid
    patched_rows: int            # rows the engine runs (live indices x pairs; attribution: 0)
    skipped_cells: int           # cells given the base run's value without running anything
    batches: int                 # batched runs
    forward_equivalents: float   # work in full forwards of one prompt, the cached runs included
    reference_forwards: int      # TransformerLens-style forwards for the same result
    reference: str               # what the reference is
    seconds: float
    cache_bytes: int             # the cached clean / corrupt runs
    batch_bytes: int             # the largest batch
    weights_bytes: int = 0       # the model's parameters (not in peak_bytes)

    def __post_init__(self):
        if self.analysis not in ANALYSES:
            raise ValueError(f"analysis must be one of {', '.join(ANALYSES)}, not {self.analysis!r}")
        for name in ("n_pairs", "cells", "patched_rows", "skipped_cells", "batches", "reference_forwards",
                     "cache_bytes", "batch_bytes", "weights_bytes"):
            check_whole(getattr(self, name), name, 0)
        if not self.forward_equivalents >= 0 or not self.seconds >= 0:
            raise ValueError(f"forward_equivalents and seconds must be >= 0, not "
                             f"{self.forward_equivalents!r}, {self.seconds!r}")

    @property
    def peak_bytes(self) -> int:
        return self.cache_bytes + self.batch_bytes

    @property
    def speedup(self) -> float:
        """Reference forwards per forward-equivalent of ours."""
        return self.reference_forwards / self.forward_equivalents if self.forward_equivalents else float("inf")

    def to_dict(self) -> dict:
        return {**asdict(self), "peak_bytes": self.peak_bytes, "speedup": self.speedup}

    def text(self) -> str:
        """One line for the run card and the CLI.

        >>> CostEstimate("sweep", "resid_pre", "cpu", 1, 60, 1240, 0, 4, 96.0, 1242, "TL", 4.2, 150_000_000,
        ...              30_000_000).text()
        '≈ 1,240 patched forwards (≈ 96 forward-equivalents; TransformerLens ≈ 1,242), ≈ 4.2 s on cpu, peak ≈ 172 MB'
        """
        if self.analysis == "attribution":
            work = f"attribution of {self.cells:,} cells (≈ {self.forward_equivalents:,.0f} forward-equivalents; " \
                   f"exact with TransformerLens ≈ {self.reference_forwards:,} forwards)"
        else:
            work = (f"≈ {self.patched_rows:,} patched forwards (≈ {self.forward_equivalents:,.0f} forward-equivalents; "
                    f"{'naive' if self.analysis == 'path' else 'TransformerLens'} ≈ {self.reference_forwards:,})")
        return f"{work}, {'' if self.seconds < 0.1 else '≈ '}{_seconds(self.seconds)} on {self.device}, peak ≈ {_bytes(self.peak_bytes)}"

    @property
    def slow(self) -> bool:
        return self.seconds > SLOW_SECONDS


def _seconds(s: float) -> str:
    if s < 0.1:
        return "< 0.1 s"
    if s < 10:
        return f"{s:.1f} s"
    if s < 120:
        return f"{s:.0f} s"
    return f"{s / 60:.0f} min"


def _bytes(n: int) -> str:
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if n >= size:
            return f"{n / size:.0f} {unit}" if n >= 10 * size else f"{n / size:.1f} {unit}"
    return f"{n} B"


def _row_units(n_layers: int, layer: int, stage: str, n_pos: int, p0: int) -> int:
    """Row x half-block x position units of one row resumed at (layer, stage) from position p0.
    Half-blocks are attention and MLP; the last layer computes one position."""
    h0 = 2 * layer + {"pre": 0, "mid": 1, "post": 2}[stage]
    last = 2 * (n_layers - 1)
    return sum((n_pos - p0) if h < last else 1 for h in range(h0, 2 * n_layers))


def _half_steps(n_layers: int, layer: int, stage: str) -> int:
    return 2 * n_layers - (2 * layer + {"pre": 0, "mid": 1, "post": 2}[stage])


_STAGE_OF = {"resid_pre": "pre", "resid_mid": "mid", "resid_post": "post", "mlp_out": "post", "neuron": "post",
             "feature": "pre"}


def _stage(model, kind: str) -> str:
    """The stage a kind's patched runs resume from (kinds.py: heads and attn_out after attention)."""
    stage = _STAGE_OF.get(kind)
    if stage is None:                   # attn_out and every head kind: right after attention
        return "post" if model.parallel_attn_mlp else "mid"
    return stage


def _tensor_bytes(obj) -> int:
    """Bytes of every tensor in a RunCache (layers' fields, logits, tokens, rope)."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    for layer in obj.layers:
        for v in vars(layer).values():
            add(v)
    add(obj.logits), add(obj.tokens)
    for t in obj.rope or ():
        add(t)
    return total


def _weights_bytes(model) -> int:
    try:
        return int(sum(p.numel() * p.element_size() for p in model.hf.parameters()))
    except Exception:                   # a stand-in model in a test, or no parameters to read
        return 0


def _device_label(model, prompts: PromptSet, device) -> str:
    actual = prompts.clean_tokens.device
    if device is not None and torch.device(device).type != actual.type:
        raise ValueError(f"device {str(device)!r}: the estimate is calibrated where the model is loaded "
                         f"({actual.type}); load the model on {str(device)!r} to estimate there")
    return actual.type


def estimate_cost(model, prompts: PromptSet, spec: PatchSpec, device=None, *,
                  calibration: Calibration | None = None, max_memory_mb: float | None = None,
                  cells=None) -> CostEstimate:
    """What `engine.sweep(model, prompts, spec)` will do: exact counts from its own plan, the
    estimated seconds (calibrated on this model and device; pass `calibration` to reuse one),
    peak memory. `cells` as in `sweep` (a refine run).

    >>> estimate_cost(model, prompts, PatchSpec(kind="resid_pre")).patched_rows   # doctest: +SKIP
    48
    """
    from patching.methods.sweep import check_cells
    if prompts.is_mixed:
        return _estimate_by_length(model, prompts, spec, device, calibration, max_memory_mb, cells)
    where = _device_label(model, prompts, device)
    kind = KINDS[spec.kind]
    axes, coords = plan_coords(model, prompts, spec)
    cells = check_cells(axes, coords, cells)
    cal = calibration or calibrate(model, prompts)
    budget = memory_budget(prompts.clean_tokens.device, max_memory_mb or None,   # as `sweep` sets it
                           also=placed_devices(getattr(model, "device_map", None)))
    n_layers, n_pos, n_pairs = model.n_layers, prompts.n_pos, prompts.n_pairs
    full = 2 * n_layers * n_pos
    n_cells = 1
    for a in axes:
        n_cells *= len(coords[a])
    if model.runner is None:            # fallback: full forwards, ROWS_PER_FORWARD rows a batch
        from patching.methods.hooked import ROWS_PER_FORWARD
        wanted = _wanted_cells(spec, axes, coords, n_cells)
        rows = wanted * n_pairs
        batches = -(-rows // ROWS_PER_FORWARD)
        fwd = rows + 2 * n_pairs
        secs = cal.seconds((batches + 2) * 2 * n_layers, fwd * full) + cal.sweep_seconds
        return CostEstimate("sweep", spec.kind, where, n_pairs, n_cells, rows, 0, batches, float(fwd),
                            wanted * n_pairs + 2 * n_pairs, "TransformerLens patching.py: one forward per index",
                            secs, 0, min(rows, ROWS_PER_FORWARD) * _memory_per_row_full(model, n_pos),
                            _weights_bytes(model))
    group = pair_group(model, prompts, budget)
    rows = batches = wanted = 0
    live_cells: set = set()
    units = steps = run_steps = 0.0
    cache_bytes = batch_rows = 0
    stage = _stage(model, spec.kind)
    with torch.inference_mode():
        for lo in range(0, n_pairs, group):
            part = prompts.subset(range(lo, min(lo + group, n_pairs))) if n_pairs > group else prompts
            runs = CachedPair.run(model.runner, part, None, spec.direction)
            cache_bytes = max(cache_bytes, _tensor_bytes(runs.clean) + _tensor_bytes(runs.corrupt))
            ctx = patch_context(model, part, spec, runs.base, runs.donor)
            plan = batch_plan(model, part, spec, kind, axes, coords, ctx, budget, cells)
            for step in plan:
                if lo == 0:
                    wanted += len(step.cells)
                live_cells.update((step.li, step.cells[n]) for n in step.live.nonzero()[:, 0].tolist())
                for chunk in step.parts:
                    p0 = _chunk_p0(kind, step, chunk, ctx)
                    r = len(chunk) * part.n_pairs
                    rows += r
                    batches += 1
                    batch_rows = max(batch_rows, r)
                    units += r * _row_units(n_layers, step.layer, stage, n_pos, p0)
                    steps += _half_steps(n_layers, step.layer, stage)
            run_steps += 2 * 2 * n_layers                # the two cached runs
    skipped = wanted - len(live_cells)
    fwd = units / full + 2 * n_pairs
    secs = cal.seconds(steps, units) + cal.run_seconds(run_steps, 2 * n_pairs * full) + cal.sweep_seconds
    return CostEstimate("sweep", spec.kind, where, n_pairs, n_cells, rows, skipped, batches, float(fwd),
                        wanted * n_pairs + 2 * n_pairs,
                        "TransformerLens patching.py: one full forward per index and pair, plus the two cached runs",
                        secs, cache_bytes, batch_rows * _memory_per_row(model, n_pos), _weights_bytes(model))


def _estimate_by_length(model, prompts: PromptSet, spec: PatchSpec, device, calibration, max_memory_mb,
                        cells) -> CostEstimate:
    """A set of mixed lengths: the sum of its length groups' sweeps (`sweep.length_groups`), on the
    role grid; memory is the largest group's."""
    from patching.methods.sweep import length_groups
    if cells is not None:
        raise ValueError("cells are token positions of one length; a set of mixed lengths is aligned by role")
    axes, coords = plan_coords(model, prompts, spec)
    groups = length_groups(prompts, spec)
    cal = calibration or calibrate(model, groups[0][1])
    parts = [estimate_cost(model, group, group_spec, device, calibration=cal, max_memory_mb=max_memory_mb)
             for _, group, group_spec in groups]
    total = lambda name: sum(getattr(p, name) for p in parts)    # noqa: E731
    n_cells = 1
    for a in axes:
        n_cells *= len(coords[a])
    first = parts[0]
    return CostEstimate("sweep", spec.kind, first.device, prompts.n_pairs, n_cells, total("patched_rows"),
                        total("skipped_cells"), total("batches"), float(total("forward_equivalents")),
                        total("reference_forwards"), first.reference, total("seconds"),
                        max(p.cache_bytes for p in parts), max(p.batch_bytes for p in parts), first.weights_bytes)


def _chunk_p0(kind, step, chunk, ctx) -> int:
    """The first position a batch computes, as kinds.py sets it: the smallest patched position
    for kinds with a position index; 0 for head kinds over every position; the first masked
    position for neurons."""
    if kind.name == "neuron":
        return int(ctx.position_mask.nonzero()[0])
    if kind.index_axes == ("pos",) or step.idx.shape[1] == 2:
        return int(step.idx[chunk, 0].min())
    return 0


def _wanted_cells(spec: PatchSpec, axes, coords, n_cells: int) -> int:
    if spec.heads is None:
        return n_cells
    per_head = n_cells // (len(coords["layer"]) * len(coords["head"]))
    return sum(1 for l in coords["layer"] for h in coords["head"] if (l, h) in set(spec.heads)) * per_head


def _memory_per_row_full(model, n_pos: int) -> int:
    c = model.cfg
    return 4 * n_pos * (10 * c.d_model + 3 * c.d_mlp + 2 * c.n_heads * n_pos) + 4 * c.d_vocab


# -- path patching ---------------------------------------------------------------------------------
def estimate_path_cost(model, prompts: PromptSet, spec, device=None, *, calibration: Calibration | None = None,
                       max_memory_mb: float | None = None) -> CostEstimate:
    """Path patching's work (`path.run_path`): rows = live senders (or receivers) x pairs, exact;
    forward-equivalents approximate: each row's second step resumes from the first receiver's
    layer at positions from the sender's on (a logits receiver needs no second step), and the
    first step recomputes MLPs (heads_frozen) at the receiver positions between sender and
    receivers. Reference: the naive method's two hooked forwards per sender and pair.

    >>> estimate_path_cost(model, prompts, PathSpec(receivers=("logits",))).patched_rows   # doctest: +SKIP
    32
    """
    from patching.methods.path import _memory_per_row as path_row, _read_slot, _write_slot
    from patching.methods.path import Node, all_receivers
    where = _device_label(model, prompts, device)
    require_runner(model, "path patching")
    n_layers, n_pos, n_pairs, parallel = model.n_layers, prompts.n_pos, prompts.n_pairs, model.parallel_attn_mlp
    if spec.senders is None:
        positions = spec.positions if spec.positions is not None else tuple(range(n_pos))
        if spec.per_position:
            senders = [Node("head", l, h, p) for l in range(n_layers) for p in positions for h in range(model.n_heads)]
        else:
            senders = [Node("head", l, h) for l in range(n_layers) for h in range(model.n_heads)]
    else:
        senders = list(spec.sender_nodes)
    receivers = (list(spec.receiver_nodes) if spec.receivers is not None
                 else all_receivers(model, senders[0]) if spec.sweep == "receivers" else [Node("logits")])
    for n in senders + receivers:
        if n.kind != "logits" and not 0 <= n.layer < n_layers:
            raise ValueError(f"{n.label!r}: layer {n.layer} out of range; this model has layers 0-{n_layers - 1}")
    cal = calibration or calibrate(model, prompts)
    full = 2 * n_layers * n_pos
    budget = memory_budget(prompts.clean_tokens.device, max_memory_mb or None,   # as `run_path` sets it
                           also=placed_devices(getattr(model, "device_map", None)))
    chunk = max(1, int(budget // path_row(model, n_pos)) // n_pairs)
    n_read = n_pos if spec.receiver_positions is None else len(spec.receiver_positions)

    def row_units(s, rs) -> tuple[float, int]:
        p0 = s.pos or 0
        reach = max(_read_slot(r, n_layers, parallel) for r in rs)
        mlps = 0 if spec.mode == "direct" else max(0, (reach - _write_slot(s)) // 2)
        logits_only = all(r.kind == "logits" for r in rs)
        u = mlps * (1 if logits_only else max(1, n_read - p0))
        steps = mlps
        if not logits_only:
            first = min(r.layer for r in rs if r.kind != "logits")
            u += _row_units(n_layers, first, "pre", n_pos, p0)
            steps += _half_steps(n_layers, first, "pre")
        return u, steps

    rows = batches = 0
    units = 0.0
    steps = 4 * n_layers
    if spec.sweep == "senders":
        reach = max(_read_slot(r, n_layers, parallel) for r in receivers)
        live = [s for s in senders if _write_slot(s) <= reach]
        groups: dict[tuple, list] = {}
        for s in live:
            groups.setdefault((_write_slot(s), s.pos), []).append(s)
        for members in groups.values():
            u, st = row_units(members[0], receivers)
            for lo in range(0, len(members), chunk):
                r = len(members[lo:lo + chunk]) * n_pairs
                rows, batches, units, steps = rows + r, batches + 1, units + r * u, steps + st
        n_cells, reference = len(senders), 2 * len(senders) * n_pairs
    else:
        s = senders[0]
        live = [r for r in receivers if _read_slot(r, n_layers, parallel) >= _write_slot(s)]
        for r in live:
            u, st = row_units(s, [r])
            rows, units, steps = rows + n_pairs, units + n_pairs * u, steps + st
        batches = len({r.layer for r in live if r.kind != "logits"}) + 1
        n_cells, reference = len(receivers), 2 * len(receivers) * n_pairs
    cache_bytes = 2 * n_pairs * _cache_bytes(model, n_pos)
    return CostEstimate("path", "path", where, n_pairs, n_cells, rows, n_cells - len(live), batches,
                        units / full + 2 * n_pairs, reference + 2 * n_pairs,
                        "naive path patching: two hooked forwards per sender (or receiver) and pair",
                        cal.seconds(steps - 4 * n_layers, units) + cal.run_seconds(4 * n_layers, 2 * n_pairs * full),
                        cache_bytes,
                        min(rows, chunk * n_pairs) * path_row(model, n_pos), _weights_bytes(model))


def _cache_bytes(model, n_pos: int) -> int:
    """One prompt's cached run (the engine's bound, for estimates that do not run the caches)."""
    from patching.methods.sweep import _cache_bytes_per_pair
    return _cache_bytes_per_pair(model, n_pos) // 2


# -- attribution -------------------------------------------------------------------------------------
def estimate_attribution_cost(model, prompts: PromptSet, kinds=None, device=None, *, method: str = "plain",
                              steps: int = 16, per_position: bool = False, edges: bool = False,
                              calibration: Calibration | None = None) -> CostEstimate:
    """Attribution's work (`attribution.run_attribution`): one donor forward, one differentiable
    base forward and one backward of activation gradients only (about one forward of work), so
    3 forward-equivalents per pair; IG: both runs plus `steps` forward + backward pairs. The
    seconds charge the graph-keeping forward like a cached run and the backward at twice that;
    `edges` (EAP) adds half again for the backward through every head's q / k / v input.
    Reference: exact patching of the same cells with TransformerLens (one forward per cell and pair).

    >>> estimate_attribution_cost(model, prompts).forward_equivalents         # doctest: +SKIP
    3.0
    """
    from patching.methods.attribution import METHODS, attribution_kinds
    where = _device_label(model, prompts, device)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    require_runner(model, "attribution patching")
    kinds = tuple(kinds) if kinds else attribution_kinds(model)
    n_cells = 0
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"unknown kind {k!r}; choose one of {', '.join(KINDS)}")
        spec = PatchSpec(kind=k, per_position=per_position and KINDS[k].has_per_position)
        axes, coords = plan_coords(model, prompts, spec)
        c = 1
        for a in axes:
            c *= len(coords[a])
        n_cells += c
    cal = calibration or calibrate(model, prompts)
    n_layers, n_pos, n_pairs = model.n_layers, prompts.n_pos, prompts.n_pairs
    full = 2 * n_layers * n_pos
    per_pair = 3.0 if method == "plain" else 2.0 + 2.0 * steps
    graph_runs = 1 if method == "plain" else steps
    # in cached-run time: the donor run (and IG's base run), then per graph run a forward that keeps
    # its activations plus a backward of about twice that
    runs = (1 if method == "plain" else 2) + 3 * graph_runs
    secs = cal.run_seconds(runs * 2 * n_layers, runs * n_pairs * full)
    if edges:
        secs *= 1.5
    return CostEstimate("attribution", ",".join(kinds), where, n_pairs, n_cells, 0, 0, 1 + graph_runs,
                        per_pair * n_pairs, (n_cells + 2) * n_pairs,
                        "exact patching of the same cells with TransformerLens: one forward per cell and pair",
                        secs, 2 * n_pairs * _cache_bytes(model, n_pos),
                        graph_runs * n_pairs * 3 * _cache_bytes(model, n_pos), _weights_bytes(model))


def measure_estimates(model, prompts: PromptSet, specs, repeat: int = 3) -> list[dict]:
    """Estimated vs measured seconds of `engine.sweep` for each spec (best of `repeat` sweeps,
    after a warm-up), with their ratio: how to check the calibration on a machine.

    >>> measure_estimates(model, prompts, [PatchSpec(kind="resid_pre")])      # doctest: +SKIP
    [{'kind': 'resid_pre', 'estimated_s': 0.21, 'measured_s': 0.18, 'ratio': 1.17, ...}]
    """
    from patching.methods.sweep import sweep
    cal = calibrate(model, prompts)
    rows = []
    for spec in specs:
        est = estimate_cost(model, prompts, spec, calibration=cal)
        sweep(model, prompts, spec)
        measured = _best(lambda: sweep(model, prompts, spec), repeat)
        rows.append({"kind": spec.kind, "per_position": spec.per_position, "n_pairs": prompts.n_pairs,
                     "estimated_s": est.seconds, "measured_s": measured, "ratio": est.seconds / measured,
                     "patched_rows": est.patched_rows, "forward_equivalents": est.forward_equivalents,
                     "reference_forwards": est.reference_forwards, "device": est.device})
    return rows
