"""Exact activation patching, batched and resumed from the patched layer.

TransformerLens' `patching.py` runs one full forward per index. Here:
- the clean and corrupt runs are cached once (`Runner.run`);
- many patched runs go through one batched forward (rows = indices x pairs);
- each patched run starts at the patched layer from the cached residual stream, not at layer 0;
- only positions >= the earliest patched position are computed, with the cached keys and
  values of earlier positions (they cannot change under causal attention);
- at the last layer only the last position is computed (metrics read the next-token logits);
- head patches skip their own layer's attention: the change a head makes is z_h @ W_O[h].
Batch size follows a memory budget: `max_memory_mb`, or by default a share of the memory free on
the device the sweep runs on (`patching.model.memory_budget`).

>>> result = sweep(model, prompts, PatchSpec(kind="resid_pre"))      # doctest: +SKIP
>>> result.values.shape                                              # doctest: +SKIP
torch.Size([4, 15])
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Callable

import torch
from torch import Tensor

from metrics import Metric, get_metric

from patching.kinds import KINDS, Kind, PatchContext, index_changes
from patching.model.memory_budget import memory_budget, placed_devices
from patching.model.loading import require_runner
from patching.model.sae import model_saes
from patching.core.prompts import PromptSet
from patching.core.provenance import recorded
from patching.core.results import PatchResult
from patching.core.spec import PatchSpec
from patching.methods.pair import CachedPair

Progress = Callable[[int, int], None]   # (patched forwards done, patched forwards in all): the cost estimate's unit
Select = Callable[[list["LayerStep"]], list["LayerStep"]]    # a shard's share of a plan (methods/shards.py)
MIN_BATCH_ROWS = 32      # patched runs a batch holds before a position gap may close it (see _chunks)


def axis_sizes(model, prompts: PromptSet, kind: Kind, spec: PatchSpec | None = None) -> dict[str, int]:
    heads = model.n_kv_heads if kind.kv_heads else model.n_heads
    sizes = {"layer": model.n_layers, "pos": prompts.n_pos, "head": heads, "neuron": model.d_mlp}
    if "feature" in kind.index_axes:              # every SAE's features, then its error node
        saes = model_saes(model, spec.saes if spec is not None else None)
        sizes["feature"] = max(s.d_sae for s in saes.values()) + 1
    return sizes


def _check(values, size: int, what: str, valid: str):
    """ValueError naming the out-of-range values (the first five and how many; a range of
    100,000 bad layers must not make a 600 kB message).

    >>> _check(range(4, 100000), 4, "layers", "0-3")
    Traceback (most recent call last):
    ...
    ValueError: layers [4, 5, 6, 7, 8, ... and 99991 more] out of range; this model/prompt has layers 0-3
    """
    bad = [v for v in values if v >= size]
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (f", ... and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"{what} [{shown}] out of range; this model/prompt has {what} {valid}")


def plan_coords(model, prompts: PromptSet, spec: PatchSpec) -> tuple[tuple[str, ...], dict[str, tuple[int, ...]]]:
    """The sweep's axes and the numbers along each, after the spec's filters (validated)."""
    kind = KINDS[spec.kind]
    if prompts.is_mixed:                 # aligned by role: the position axis is the roles
        axes, coords = plan_coords(model, length_groups(prompts, spec)[0][1], spec)
        if "pos" in coords:
            coords["pos"] = tuple(range(len(prompts.role_names)))
        return axes, coords
    if kind.needs_resid_mid and model.parallel_attn_mlp:
        raise ValueError(f"kind {spec.kind!r} does not exist on {model.name!r}: attention and MLP "
                         "run in parallel on resid_pre; use resid_pre, attn_out or mlp_out")
    axes = kind.axes(spec.per_position)
    sizes = axis_sizes(model, prompts, kind, spec)
    coords = {a: tuple(range(sizes[a])) for a in axes}
    if spec.layers is not None:
        _check(spec.layers, sizes["layer"], "layers", f"0-{sizes['layer'] - 1}")
        coords["layer"] = spec.layers
    if spec.positions is not None:
        _check(spec.positions, prompts.n_pos, "positions", f"0-{prompts.n_pos - 1}")
        if "pos" in coords:
            coords["pos"] = spec.positions
    if spec.heads is not None:
        if "head" not in axes:
            raise ValueError(f"heads apply to head kinds, not {spec.kind!r}")
        _check([l for l, _ in spec.heads], sizes["layer"], "head layers", f"0-{sizes['layer'] - 1}")
        _check([h for _, h in spec.heads], sizes["head"], "heads", f"0-{sizes['head'] - 1}"
               + (" (key/value heads)" if kind.kv_heads else ""))
        if spec.layers is None:
            coords["layer"] = tuple(sorted({l for l, _ in spec.heads}))
        coords["head"] = tuple(sorted({h for _, h in spec.heads}))
    return axes, coords


def _memory_per_row(model, n_pos: int) -> int:
    a = model.arch
    floats = n_pos * (8 * a.d_model + 3 * a.d_mlp + 2 * a.n_heads * n_pos + 4 * a.n_kv_heads * a.d_head)
    return 4 * floats + 4 * model.cfg.d_vocab


def _chunks(idx: Tensor, live: Tensor, size: int, n_pos: int, by_position: bool, slack: float = 2.0,
            min_size: int = 1):
    """Split the live indices into batches of at most `size`; with a position axis (column 0),
    batch neighbouring positions so each batch's suffix (n_pos - p0) is within `slack` of its
    rows' own suffixes (patched runs compute only positions >= p0), but close no batch before it
    has `min_size` indices: a small batch costs more in per-call overhead than a few positions
    computed in vain (GPT-2-small resid_pre on CPU: 1.5x faster with 32 rows a batch at least).

    >>> [c.tolist() for c in _chunks(torch.tensor([[1], [5], [6]]), torch.ones(3, dtype=torch.bool), 8, 8, True)]
    [[2, 1], [0]]
    >>> [c.tolist() for c in _chunks(torch.tensor([[1], [5], [6]]), torch.ones(3, dtype=torch.bool), 8, 8, True, min_size=3)]
    [[2, 1, 0]]
    """
    order = live.nonzero()[:, 0]
    if not by_position:
        return [order[i:i + size] for i in range(0, len(order), size)]
    order = order[torch.argsort(idx[order, 0].cpu(), descending=True, stable=True)]
    chunks, current, top = [], [], None
    for n in order.tolist():
        suffix = n_pos - int(idx[n, 0])
        if current and (len(current) >= size or (suffix > slack * top and len(current) >= min_size)):
            chunks.append(torch.tensor(current))
            current = []
        if not current:
            top = suffix
        current.append(n)
    if current:
        chunks.append(torch.tensor(current))
    return chunks


def check_cells(axes: tuple[str, ...], coords: dict[str, tuple[int, ...]], cells) -> frozenset | None:
    """Validate an explicit list of cells (coordinate tuples on `axes`, e.g. (layer, pos)) against
    the sweep's coordinates; None stays None (every cell).

    >>> check_cells(("layer", "head"), {"layer": (0, 1), "head": (0, 1, 2)}, [(1, 2)])
    frozenset({(1, 2)})
    """
    if cells is None:
        return None
    out = set()
    for cell in cells:
        cell = tuple(int(c) for c in cell)
        if len(cell) != len(axes):
            raise ValueError(f"cell {cell} has {len(cell)} coordinates; this sweep's cells are "
                             f"({', '.join(axes)})")
        for a, c in zip(axes, cell):
            if c not in coords[a]:
                raise ValueError(f"cell {cell}: {a} {c} is not in this sweep ({a} "
                                 f"{coords[a][0]}-{coords[a][-1]})")
        out.add(cell)
    if not out:
        raise ValueError("cells is empty; leave it out to patch every cell")
    return frozenset(out)


@recorded
def sweep(model, prompts: PromptSet, spec: PatchSpec, *, metric: Metric | Callable | str | None = None,
          on_progress: Progress | None = None, max_memory_mb: float | None = None,
          cells=None) -> PatchResult:
    """Patch every index of `spec.kind` and measure the metric; see the module doc for how.

    cells: optional coordinate tuples on the result's axes (e.g. [(1, 3)] for head_out's layer 1,
    head 3); only those are patched, every other cell is NaN (`patching.methods.refine` uses it).

    >>> sweep(model, prompts, PatchSpec(kind="head_out", per_position=True)).axes  # doctest: +SKIP
    ('layer', 'pos', 'head')
    """
    start = time.perf_counter()
    metric = get_metric(metric if metric is not None else spec.metric)
    if prompts.is_mixed:
        return sweep_by_role(model, prompts, spec, metric, on_progress, max_memory_mb, cells, start)
    axes, coords = plan_coords(model, prompts, spec)
    cells = check_cells(axes, coords, cells)
    if model.runner is None:
        if cells is not None:
            require_runner(model, "a sweep over chosen cells")
        from patching.methods.hooked import sweep_with_hooks
        return sweep_with_hooks(model, prompts, spec, metric, axes, coords, on_progress, start)
    result, _ = sweep_groups(model, prompts, spec, metric, axes, coords, on_progress, max_memory_mb, cells)
    return dataclasses.replace(result, seconds=time.perf_counter() - start)


def sweep_groups(model, prompts: PromptSet, spec: PatchSpec, metric: Metric, axes, coords,
                 on_progress: Progress | None, max_memory_mb: float | None, cells=None,
                 select: Select | None = None) -> tuple[PatchResult, Tensor | None]:
    """(result, written): the runner's sweep, in groups of pairs when the cached runs of all pairs
    would not fit the memory budget. `select` (a shard's share of each group's plan,
    `patching.methods.shards`) leaves the rest NaN, and `written` [*cells, pairs] (bool) marks the
    values it computed (None without `select`); the result's `seconds` is 0 (the caller times it).

    >>> axes, coords = plan_coords(model, prompts, PatchSpec(kind="resid_pre"))
    >>> everything = lambda plan: plan
    >>> bool(sweep_groups(model, prompts, PatchSpec(kind="resid_pre"), get_metric("logit_diff"),
    ...                   axes, coords, None, None, select=everything)[1].all())
    True
    """
    kind = KINDS[spec.kind]
    budget = memory_budget(prompts.clean_tokens.device, max_memory_mb or None,   # the devices' free memory
                           also=placed_devices(getattr(model, "device_map", None)))
    group = pair_group(model, prompts, budget)
    shape = [len(coords[a]) for a in axes]
    written = torch.zeros((*shape, prompts.n_pairs), dtype=torch.bool) if select is not None else None
    parts = []
    for lo in range(0, prompts.n_pairs, group):     # the cached runs of many pairs would not fit: groups
        hi = min(lo + group, prompts.n_pairs)

        def progress(done, total, lo=lo, hi=hi):
            # earlier groups' forwards are counted as if each group had this one's per pair
            if on_progress is not None:
                per_pair = total / (hi - lo)
                on_progress(round(lo * per_pair) + done, round(prompts.n_pairs * per_pair))
        whole = (lo, hi) == (0, prompts.n_pairs)
        parts.append(_sweep_pairs(model, prompts if whole else prompts.subset(range(lo, hi)), spec, metric,
                                  kind, axes, coords, on_progress if whole else progress, budget, cells,
                                  select, None if written is None else written[..., lo:hi]))
    if len(parts) == 1:
        return parts[0], written
    first = parts[0]
    return PatchResult(spec, axes, coords, torch.cat([p.per_pair for p in parts], -1),
                       torch.cat([p.clean_baseline for p in parts]),
                       torch.cat([p.corrupt_baseline for p in parts]), prompts.str_tokens,
                       first.metric_clean_is, 0.0, model.name), written


def sweep_by_role(model, prompts: PromptSet, spec: PatchSpec, metric: Metric, on_progress: Progress | None,
                  max_memory_mb: float | None, cells, start: float) -> PatchResult:
    """A set of mixed lengths (aligned by roles), swept one length group at a time.

    Each group is swept alone (the positions its pairs' roles name, for a per-position kind);
    each pair's values are then read at its own role indices, so a role's value is the mean over
    pairs of each pair's value at that role's index, exactly as if each length group were run
    alone. Kinds without a position axis need no roles: the groups' per-pair values are joined.
    The result's position axis is the roles (`PatchResult.roles`).

    >>> sweep(model, mixed_prompts, PatchSpec(kind="resid_pre")).roles       # doctest: +SKIP
    ('IO', 'S1', 'S1+1', 'S2', 'END')
    """
    if cells is not None:
        raise ValueError("cells are token positions of one length; a set of mixed lengths is aligned "
                         "by role: leave cells out, or sweep one length at a time")
    axes, _ = plan_coords(model, prompts, spec)
    roles = prompts.role_names if "pos" in axes else None
    at = prompts.role_positions()
    per_pair = clean = corrupt = None
    done_pairs = 0
    for idx, group, group_spec in length_groups(prompts, spec):
        part = sweep(model, group, group_spec, metric=metric,
                     on_progress=_share(on_progress, done_pairs, len(idx), prompts.n_pairs),
                     max_memory_mb=max_memory_mb)
        done_pairs += len(idx)
        values = part.per_pair                                     # [layer, pos?, head?, group pairs]
        if roles:
            values = _at_roles(values, part.coords["pos"], [at[i] for i in idx])   # [layer, role, head?, group]
        if per_pair is None:
            coords = dict(part.coords, **({"pos": tuple(range(len(roles)))} if roles else {}))
            per_pair = torch.full((*values.shape[:-1], prompts.n_pairs), float("nan"), dtype=torch.float64)
            clean = torch.full((prompts.n_pairs,), float("nan"), dtype=torch.float64)
            corrupt, clean_is = clean.clone(), part.metric_clean_is
        per_pair[..., idx] = values
        clean[idx], corrupt[idx] = part.clean_baseline, part.corrupt_baseline
    labels = roles if roles else ()
    return PatchResult(spec, axes, coords, per_pair, clean, corrupt, labels, clean_is,
                       time.perf_counter() - start, model.name, roles=roles)


def length_groups(prompts: PromptSet, spec: PatchSpec) -> list[tuple[list[int], PromptSet, PatchSpec]]:
    """A set of mixed lengths as the sweeps it runs: (pair indices, that length's set, its spec);
    a per-position kind's spec patches only the positions the group's roles name. The sweep runs
    them and the cost estimate counts them.

    >>> [(idx, s.positions) for idx, _, s in length_groups(mixed_prompts, PatchSpec(kind="resid_pre"))]  # doctest: +SKIP
    [([0, 2], (2, 4, 5, 10, 14)), ([1], (2, 4, 5, 11, 15))]
    """
    if spec.positions is not None:
        raise ValueError(f"positions {list(spec.positions)[:5]} are token indices, which differ between "
                         f"pairs of different lengths; this set is aligned by its roles "
                         f"({' '.join(prompts.role_names)}): leave positions out")
    by_pos = "pos" in KINDS[spec.kind].axes(spec.per_position)
    at = prompts.role_positions()
    out = []
    for idx, group in prompts.by_length():
        used = tuple(sorted({p for i in idx for p in at[i]}))
        out.append((idx, group, dataclasses.replace(spec, positions=used) if by_pos else spec))
    return out


def _share(on_progress: Progress | None, before: int, size: int, n_pairs: int) -> Progress | None:
    """A group's progress as a share of the whole set's (weighted by its pairs)."""
    if on_progress is None:
        return None
    return lambda done, total: on_progress(before * total + done * size, n_pairs * total)


def _at_roles(values: Tensor, positions: tuple[int, ...], role_at: list[list[int]]) -> Tensor:
    """values [layer, pos, *rest, pairs] at each pair's own role positions -> [layer, role, *rest, pairs].

    >>> v = torch.arange(12.).reshape(1, 3, 2, 2)           # layer 1, positions (4, 5, 7), 2 heads, 2 pairs
    >>> _at_roles(v, (4, 5, 7), [[7, 4], [5, 4]])[0, :, 0].tolist()     # head 0: pair 0 at 7, 4; pair 1 at 5, 4
    [[8.0, 5.0], [0.0, 1.0]]
    """
    where = {p: i for i, p in enumerate(positions)}
    index = torch.tensor([[where[p] for p in pair] for pair in role_at], dtype=torch.long).T   # [role, pairs]
    shape = [1] * values.dim()
    shape[1], shape[-1] = index.shape
    index = index.reshape(shape).expand(values.shape[0], index.shape[0], *values.shape[2:])
    return values.gather(1, index)


def pair_group(model, prompts: PromptSet, budget: float) -> int:
    """How many pairs one group of a sweep caches at once (a quarter of the memory budget)."""
    return max(1, int(budget // 4 // _cache_bytes_per_pair(model, prompts.n_pos)))


def _cache_bytes_per_pair(model, n_pos: int) -> int:
    """Memory of one pair's clean + corrupt cached runs."""
    a = model.arch
    per_layer = n_pos * (10 * a.d_model + 4 * a.d_mlp + a.n_heads * n_pos + 6 * a.n_kv_heads * a.d_head)
    return 2 * 4 * a.n_layers * per_layer


def _sweep_pairs(model, prompts: PromptSet, spec: PatchSpec, metric: Metric, kind: Kind, axes, coords,
                 on_progress: Progress | None, budget: float, cells=None, select: Select | None = None,
                 written: Tensor | None = None) -> PatchResult:
    runner = model.runner
    pair = CachedPair.run(runner, prompts, metric, spec.direction, continuation=True)
    n_pairs = prompts.n_pairs
    ctx = patch_context(model, prompts, spec, pair.base, pair.donor)
    shape = [len(coords[a]) for a in axes]
    per_pair = torch.full((*shape, n_pairs), float("nan"), dtype=torch.float64)
    plan = batch_plan(model, prompts, spec, kind, axes, coords, ctx, budget, cells)
    if select is not None:
        plan = select(plan)
    # progress counts patched forwards (live cells x pairs), what the cost estimate counts; the
    # first report comes before the first batch, so a caller knows the total at once
    total, done = sum(len(part) for step in plan for part in step.parts) * n_pairs, 0
    if on_progress is not None:
        on_progress(0, total)
    last_report = time.perf_counter()
    for step in plan:
        for n in (~step.live).nonzero()[:, 0].tolist() if step.fill else ():   # nothing to patch:
            per_pair[(step.li, *step.cells[n])] = pair.base_baseline            # the base run's value
        for part in step.parts:
            patched = kind.patch(ctx, step.layer, step.idx[part])
            _, rows = ctx.rows(len(part))
            logits = runner.resume(pair.base, rows, step.layer, patched.stage, patched.resid, patched.p0)
            values = pair.measure(logits, rows).view(len(part), n_pairs)
            for n, v in zip(part.tolist(), values):
                per_pair[(step.li, *step.cells[n])] = v
            done += len(rows)
            if on_progress is not None and time.perf_counter() - last_report > 0.1:
                on_progress(done, total)
                last_report = time.perf_counter()
    if written is not None:
        written |= _cells_of(plan, per_pair.shape)
    if on_progress is not None:
        on_progress(total, total)
    return PatchResult(spec, axes, coords, per_pair, pair.clean_baseline, pair.corrupt_baseline,
                       prompts.str_tokens, pair.metric.clean_is, 0.0, model.name)


def patch_context(model, prompts: PromptSet, spec: PatchSpec, base, donor) -> PatchContext:
    """The kinds' view of the two cached runs (with the neuron kind's position mask, the
    feature kind's SAEs)."""
    position_mask = None
    if spec.kind == "neuron":
        position_mask = torch.zeros(base.tokens.shape[1], dtype=torch.bool, device=prompts.clean_tokens.device)
        position_mask[list(spec.positions) if spec.positions is not None else slice(None)] = True
    saes = model_saes(model, spec.saes) if spec.kind == "feature" else None
    return PatchContext(model.runner, base, donor, position_mask, saes)


@dataclasses.dataclass(frozen=True)
class LayerStep:
    """What a sweep does at one layer: its cells (index tuples into coords), their indices
    idx [n, index axes], which of them change anything (live [n] bool, on the CPU) and the
    batches of live cells (`parts`, each a tensor of row numbers into cells)."""
    li: int
    layer: int
    cells: list
    idx: Tensor
    live: Tensor
    parts: list
    fill: bool = True        # this run writes the base value into the cells that change nothing


def _cells_of(plan: list[LayerStep], shape) -> Tensor:
    """[*cells, pairs] bool: the cells a (selected) plan sets, for every pair of its group."""
    out = torch.zeros(tuple(shape), dtype=torch.bool)
    for step in plan:
        mine = [n for p in step.parts for n in p.tolist()]
        if step.fill:
            mine += (~step.live).nonzero()[:, 0].tolist()
        for n in mine:
            out[(step.li, *step.cells[n])] = True
    return out


def batch_plan(model, prompts: PromptSet, spec: PatchSpec, kind: Kind, axes, coords, ctx: PatchContext,
               budget: float, cells=None) -> list[LayerStep]:
    """The sweep's work, layer by layer, exactly as `sweep` runs it (`patching.methods.cost` counts it)."""
    n_pairs = prompts.n_pairs
    index_axes = axes[1:]
    heads_wanted = set(spec.heads) if spec.heads is not None else None
    rows_per_chunk = max(n_pairs, int(budget // _memory_per_row(model, prompts.n_pos)))
    chunk = max(1, rows_per_chunk // n_pairs)
    layer_cells = [(li, layer, list(itertools.product(*[range(len(coords[a])) for a in index_axes])))
                   for li, layer in enumerate(coords["layer"])]
    if heads_wanted is not None:
        h_axis = index_axes.index("head")
        layer_cells = [(li, layer, [c for c in cs if (layer, coords["head"][c[h_axis]]) in heads_wanted])
                       for li, layer, cs in layer_cells]
    if cells is not None:
        layer_cells = [(li, layer, [c for c in cs
                                    if (layer, *[coords[a][c[j]] for j, a in enumerate(index_axes)]) in cells])
                       for li, layer, cs in layer_cells]
    device = prompts.clean_tokens.device
    plan = []
    for li, layer, cs in layer_cells:
        if not cs:
            continue
        idx_all = torch.tensor([[coords[a][c[j]] for j, a in enumerate(index_axes)] for c in cs],
                               dtype=torch.long, device=device)
        live = index_changes(ctx, kind, layer, idx_all).cpu()
        parts = _chunks(idx_all, live, chunk, prompts.n_pos, "pos" in index_axes,
                        min_size=-(-MIN_BATCH_ROWS // n_pairs))
        plan.append(LayerStep(li, layer, cs, idx_all, live, parts))
    return plan
