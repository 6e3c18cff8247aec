"""Attribution patching: every kind's patching effect from gradients, and edge scores (EAP).

The first-order estimate of patching activation A (Nanda 2023; Syed et al. 2023):

    metric(patched) ~= metric(base) + (A_donor - A_base) . dmetric/dA  (at the base run)

so one donor forward, one base forward and one backward give every kind at once: residual
streams, attn_out, mlp_out, head_out / q / k / v / pattern (per head, or per head and position)
and neurons. Directions as in exact patching: denoise = corrupt run with clean activations
(gradient at the corrupt run), noise = the reverse. Values are reported as the *estimated
patched metric*, so results read like `engine.sweep`'s (`value`, `normalized`).

Edge attribution (EAP, Syed et al. 2023): upstream nodes (token embeddings, each head's output,
each MLP's output) write into the residual stream; downstream nodes (each head's q, k and v
input, each MLP's input, the logits) read their own copy of it. The score of an edge u -> v is
(u_donor - u_base) . dmetric/d(input of v), all edges from one backward (a head's own input
gradient is its q/k/v gradient taken back through its slice of the projection and ln1).

EAP-IG (`method="ig"`, Hanna et al. 2024; Marks et al. 2024): gradients averaged over `steps`
runs whose token embeddings are interpolated from the base run's to the donor's (midpoints
(k + 0.5) / steps), one batched forward and backward for all steps.

The backward asks only for activation gradients (`torch.autograd.grad`), never weight gradients.

>>> results = run_attribution(model, prompts)                 # every kind       # doctest: +SKIP
>>> attribution_csv(results, "attribution.csv")                                   # doctest: +SKIP
>>> edges = edge_attribution(model, prompts, method="ig", steps=8)                # doctest: +SKIP
>>> edges.to_dataframe().nlargest(10, "abs_score")                                # doctest: +SKIP
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import pandas as pd
import torch
from torch import Tensor

from metrics import Metric, get_metric

from patching.methods.sweep import plan_coords
from patching.kinds import KINDS, EstimateOptions
from patching.model.memory_budget import memory_budget, placed_devices
from patching.model.loading import require_runner
from patching.model.sae import model_saes
from patching.core.nodes import Node
from patching.core.prompts import PromptSet
from patching.core.provenance import recorded
from patching.core.results import PatchResult, write_csv
from patching.model.runner import Edit, RunCache
from patching.core.spec import PatchSpec, check_direction, check_whole
from patching.methods.pair import CachedPair
from patching.methods.share import Share

METHODS = ("plain", "ig")
DEFAULT_STEPS = 16


# -- a differentiable forward that keeps every activation --------------------------------------
class _EdgeInputs(Edit):
    """Each MLP's input and the unembedding's input become their own copy of the residual stream
    plus a zero tensor, so the backward gives the gradient at those inputs; the heads' q / k / v
    inputs get theirs afterwards from the q / k / v gradients (`_qkv_input_grads`)."""

    def __init__(self):
        self.mlp_inputs: list[Tensor] = []         # per layer [b, T, d] zeros
        self.final_input: Tensor | None = None     # [b, d] zeros

    def mlp_in(self, layer, x):
        e = x.new_zeros(x.shape, requires_grad=True)
        self.mlp_inputs.append(e)
        return x + e

    def final(self, x):
        self.final_input = x.new_zeros(x.shape, requires_grad=True)
        return x + self.final_input


@dataclass
class _Acts:
    """One differentiable forward: every activation (a grad-enabled RunCache) and, for edges,
    the zero inputs whose gradients are the node inputs' gradients."""
    cache: RunCache
    edges: _EdgeInputs | None


def _forward(runner, x0: Tensor, rope, edges: bool) -> _Acts:
    """The runner's forward with autograd on: x0 [b, T, d] = token embeddings (resid_pre 0)."""
    edit = _EdgeInputs() if edges else None
    return _Acts(runner.forward(x0, rope=rope, edit=edit, keep=True), edit)


_GRAD_NAMES = ("resid_pre", "q", "k", "v", "pattern", "z", "attn_out", "resid_mid", "mlp_post",
               "mlp_out", "resid_post")


def _gradients(runner, acts: _Acts, objective: Tensor, edges: bool) -> dict[str, list]:
    """d objective / d every activation (and every node input with edges), one backward."""
    layers = acts.cache.layers
    names = [n for n in _GRAD_NAMES if getattr(layers[0], n) is not None]
    inputs = [getattr(c, n) for n in names for c in layers]
    if edges:
        inputs += acts.edges.mlp_inputs + [acts.edges.final_input]
    grads = torch.autograd.grad(objective, inputs, allow_unused=True)
    grads = [g if g is not None else torch.zeros_like(t) for g, t in zip(grads, inputs)]
    out, i = {}, 0
    n_layers = len(layers)
    for n in names + (["mlp_in"] if edges else []):
        out[n], i = list(grads[i:i + n_layers]), i + n_layers
    if edges:
        out["final_in"] = grads[i]
        out["qkv_in"] = [_qkv_input_grads(runner, layer, layers[layer].resid_pre.detach(), out["q"][layer],
                                          out["k"][layer], out["v"][layer]) for layer in range(n_layers)]
    return out


def _qkv_input_grads(runner, layer: int, x: Tensor, g_q: Tensor, g_k: Tensor, g_v: Tensor) -> Tensor:
    """The gradient at each head's own q / k / v input (its copy of resid_pre x [b, T, d]), from
    the gradients at q [b, T, H, dh] and k, v [b, T, KV, dh]: back through that head's slice of
    the projection, then through ln1 once per copy. Returns [b, T, H + 2 KV, d]."""
    a = runner.arch
    d = x.shape[-1]
    with torch.no_grad():         # the projections are affine: weights = qkv(I) - qkv(0)
        eye = torch.eye(d, dtype=x.dtype, device=x.device)
        zero = eye.new_zeros(1, d)
        w = [full - bias for full, bias in zip(a.qkv(layer, eye), a.qkv(layer, zero))]   # [d, heads, dh]
        cot = torch.cat([torch.einsum("bthe,dhe->bthd", g, wi) for g, wi in zip((g_q, g_k, g_v), w)], dim=2)
    with torch.enable_grad():
        copies = x[:, :, None].expand(*x.shape[:2], cot.shape[2], d).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(a.ln1(layer, copies), copies, cot)
    return grad


@dataclass
class _Attribution:
    """What every estimate needs: the cached pair (the base run from the gradient pass for
    plain attribution), gradients at the base run (averaged over steps for IG)."""
    pair: CachedPair
    grads: dict
    method: str
    steps: int
    seconds: float


def _rows_per_backward(model, n_pos: int, max_memory_mb: float | None, device) -> int:
    """Rows (interpolation steps x pairs) one forward + backward may hold within the memory budget
    of `device`: the backward keeps every layer's activations of every row (float32 bound)."""
    a = model.arch
    floats = a.n_layers * n_pos * (12 * a.d_model + 4 * a.d_mlp + 3 * a.n_heads * n_pos) + 2 * model.cfg.d_vocab
    budget = memory_budget(device, max_memory_mb or None, also=placed_devices(getattr(model, "device_map", None)))
    return max(1, int(budget // (4 * floats)))


def _ig_gradients(model, pair: CachedPair, rope, steps: int, edges: bool, max_rows: int | None,
                  max_memory_mb: float | None) -> dict:
    """Gradients averaged over `steps` runs whose embeddings go from the base run's to the
    donor's (midpoints), as many steps per forward + backward as the memory budget allows."""
    runner, n_pairs = model.runner, pair.n_pairs
    x_base, x_donor = pair.base.layers[0].resid_pre, pair.donor.layers[0].resid_pre
    alphas = (torch.arange(steps, dtype=x_base.dtype, device=x_base.device) + 0.5) / steps
    if max_rows is None:
        max_rows = _rows_per_backward(model, pair.prompts.n_pos, max_memory_mb, pair.prompts.clean_tokens.device)
    per_chunk = max(1, max_rows // n_pairs)           # steps per batched forward/backward
    grads = None
    for lo in range(0, steps, per_chunk):
        a_ = alphas[lo:lo + per_chunk]
        x0 = (x_base[None] + a_[:, None, None, None] * (x_donor - x_base)[None]).flatten(0, 1)
        acts = _forward(runner, x0.detach().requires_grad_(True), rope, edges)   # rows: step-major x pairs
        rows = pair.pairs.repeat(len(a_))
        g = _gradients(runner, acts, pair.score(acts.cache.logits, rows).sum(), edges)
        g = {k: ([t.view(len(a_), n_pairs, *t.shape[1:]).sum(0) for t in v] if isinstance(v, list)
                 else v.view(len(a_), n_pairs, *v.shape[1:]).sum(0)) for k, v in g.items()}
        grads = g if grads is None else {
            k: ([x + y for x, y in zip(grads[k], v)] if isinstance(v, list) else grads[k] + v)
            for k, v in g.items()}
        del acts
    return {k: ([t / steps for t in v] if isinstance(v, list) else v / steps) for k, v in grads.items()}


def _attribute(model, prompts: PromptSet, metric, direction: str, method: str, steps: int,
               edges: bool, max_rows: int | None = None, max_memory_mb: float | None = None) -> _Attribution:
    start = time.perf_counter()
    check_direction(direction)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if method == "ig":
        check_whole(steps, "steps", 1, 1024)
    require_runner(model, "attribution patching")
    metric = get_metric(metric)
    runner = model.runner
    base_tokens, donor_tokens = ((prompts.corrupt_tokens, prompts.clean_tokens) if direction == "denoise"
                                 else (prompts.clean_tokens, prompts.corrupt_tokens))
    donor = runner.run(donor_tokens)
    rope = runner.rope_for(base_tokens)          # outside inference mode: autograd saves it
    with torch.enable_grad():
        if method == "plain":
            positions = torch.arange(base_tokens.shape[1], device=base_tokens.device)
            x0 = runner.arch.embed(base_tokens, positions).detach()
            acts = _forward(runner, x0.requires_grad_(True), rope, edges)
            base = acts.cache.detached()
            base.tokens = base_tokens
            pair = CachedPair.from_base(prompts, base, donor, metric, direction)
            grads = _gradients(runner, acts, pair.score(acts.cache.logits, pair.pairs).sum(), edges)
        else:
            pair = CachedPair.from_base(prompts, runner.run(base_tokens), donor, metric, direction)
            grads = _ig_gradients(model, pair, rope, steps, edges, max_rows, max_memory_mb)
    with torch.inference_mode():
        pair.clean_baseline, pair.corrupt_baseline      # measured outside the gradient pass
    return _Attribution(pair, grads, method, steps if method == "ig" else 0, time.perf_counter() - start)


# -- node attributions, per kind (each kind's rule is its `Kind.attribute`) -------------------------
def _full_estimate(model, att: _Attribution, kind: str, per_position: bool,
                   position_mask: Tensor | None, saes: dict | None = None) -> Tensor:
    """Attribution over the kind's full axes, [n_layers, *index axes, n_pairs] (pairs last); NaN
    at layers the kind has nothing to patch (a feature kind's layers without an SAE)."""
    rule = KINDS[kind].attribute if kind in KINDS else None
    if rule is None:
        raise ValueError(f"kind {kind!r} has no attribution estimate")
    opts = EstimateOptions(per_position, position_mask, saes)
    out = [rule(att, layer, opts) for layer in range(model.n_layers)]
    out = [None if v is None else v.movedim(0, -1) for v in out]
    filled = next(o for o in out if o is not None)
    out = [torch.full_like(filled, float("nan")) if o is None else o for o in out]
    return torch.stack(out).double().cpu()


@dataclass(frozen=True, eq=False)
class AttributionResult(PatchResult):
    """A PatchResult whose values are gradient estimates of the patched metric. CSV rows carry
    the contract columns, then `method` ("attribution" or "attribution_ig") and `steps`."""
    method: str = "plain"
    steps: int = 0

    @property
    def method_label(self) -> str:
        return "attribution" if self.method == "plain" else "attribution_ig"

    def to_dataframe(self) -> pd.DataFrame:
        df = super().to_dataframe()
        df["method"] = self.method_label
        df["steps"] = self.steps if self.method == "ig" else pd.NA
        return df

    def to_json(self) -> dict:
        d = super().to_json()
        d["method"], d["steps"] = self.method, self.steps
        return d

    @classmethod
    def from_json(cls, d: dict) -> "AttributionResult":
        r = PatchResult.from_json(d)
        return cls(r.spec, r.axes, r.coords, r.per_pair, r.clean_baseline, r.corrupt_baseline,
                   r.str_tokens, r.metric_clean_is, r.seconds, r.model_name, d.get("method", "plain"),
                   d.get("steps", 0), provenance=r.provenance)


def attribution_kinds(model, features: bool = False) -> tuple[str, ...]:
    """Every kind with an attribution estimate on this model (resid_mid only on sequential blocks;
    SAE features only when asked for, since they need SAEs: `features=True` adds them when the
    model ships its own, as the dashboard lists them).

    >>> "feature" in attribution_kinds(model), "feature" in attribution_kinds(model, features=True)
    (False, True)
    """
    from patching.model.sae import has_saes
    with_features = features and has_saes(model)
    return tuple(k for k in KINDS if (k != "feature" or with_features)
                 and not (KINDS[k].needs_resid_mid and model.parallel_attn_mlp))


@dataclass(frozen=True)
class AttributionSpec:
    """A node-attribution run as a value (what a shard of it carries): `run_attribution`'s options.

    >>> AttributionSpec(kinds=("head_out",), method="ig", steps=4).to_dict()["kind"]
    'attribution'
    """
    kinds: tuple[str, ...] | None = None          # None: every kind the model has
    metric: str = "logit_diff"
    direction: str = "denoise"
    method: str = "plain"
    steps: int = DEFAULT_STEPS
    per_position: bool = False
    positions: tuple[int, ...] | None = None
    saes: str | None = None
    model: str = "default"
    prepend_bos: bool = True

    kind = "attribution"       # class constant, as PathSpec's

    def __post_init__(self):
        check_direction(self.direction)
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        check_whole(self.steps, "steps", 1, 1024)
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"metric must be a metric name, not {self.metric!r}")
        if self.kinds is not None:
            unknown = [k for k in self.kinds if k not in KINDS]
            if unknown or not self.kinds:
                raise ValueError(f"attribution kinds {list(self.kinds)}: choose one or more of {', '.join(KINDS)}")
            object.__setattr__(self, "kinds", tuple(self.kinds))
        if self.positions is not None:
            object.__setattr__(self, "positions", tuple(int(p) for p in self.positions))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kinds"] = list(self.kinds) if self.kinds is not None else None
        d["positions"] = list(self.positions) if self.positions is not None else None
        d["kind"] = "attribution"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AttributionSpec":
        d = dict(d)
        if d.pop("kind", "attribution") != "attribution":
            raise ValueError("not an attribution spec: kind must be 'attribution'")
        known = {f.name for f in fields(cls)}
        if set(d) - known:
            raise ValueError(f"unknown AttributionSpec fields {sorted(set(d) - known)}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if k in ("kinds", "positions") and v is not None else v for k, v in d.items()})


def pair_batches(model, prompts: PromptSet, max_memory_mb: float | None = None) -> list[tuple[int, int]]:
    """The (lo, hi) pair ranges attribution runs one at a time: all pairs when one forward +
    backward of them fits the memory budget, else as many as fit (each range's gradients are its
    own pairs', so a range's values do not depend on the others).

    >>> pair_batches(model, prompts)
    [(0, 1)]
    """
    rows = _rows_per_backward(model, prompts.n_pos, max_memory_mb, prompts.clean_tokens.device)
    step = min(prompts.n_pairs, rows)
    return [(lo, min(lo + step, prompts.n_pairs)) for lo in range(0, prompts.n_pairs, step)]


@recorded
def run_attribution(model, prompts: PromptSet, *, kinds: tuple[str, ...] | list[str] | None = None,
                    metric: Metric | Callable | str = "logit_diff", direction: str = "denoise",
                    method: str = "plain", steps: int = DEFAULT_STEPS, per_position: bool = False,
                    positions: tuple[int, ...] | None = None,
                    max_memory_mb: float | None = None, saes: str | None = None) -> list[AttributionResult]:
    """Gradient estimates of patching, one result per kind, from one backward (all kinds at once).

    kinds: names in KINDS (None = every kind the model has); per_position: head kinds per
    position too; positions: where neuron patches apply (None = all); saes: the SAE folder of kind
    "feature" (None = the model's own). method "ig" averages
    gradients over `steps` interpolated runs (EAP-IG style), as many per batch as the memory
    budget of the device allows (`max_memory_mb`, else `patching.model.memory_budget`). Pairs run
    in `pair_batches` when all of them do not fit one backward.

    >>> [r.spec.kind for r in run_attribution(model, prompts, kinds=["resid_pre", "head_out"])]  # doctest: +SKIP
    ['resid_pre', 'head_out']
    """
    if isinstance(kinds, str):
        kinds = [k for k in kinds.split(",") if k.strip()]
    return _attribution(model, prompts, tuple(k.strip() for k in kinds) if kinds is not None else None, metric,
                        direction, method, steps, per_position, positions, max_memory_mb, saes, None)[0]


def attribution_share(model, prompts: PromptSet, spec: AttributionSpec, share: Share | None, *,
                      max_memory_mb: float | None = None, on_progress: Callable[[int, int], None] | None = None
                      ) -> tuple[list[AttributionResult], Tensor | None]:
    """(results, written): the run `spec` names; with `share`, only that shard's pair batches
    (other pairs' values and baselines NaN) and `written` [pairs] (bool) marking its pairs.

    >>> results, written = attribution_share(model, prompts, AttributionSpec(kinds=("resid_pre",)), Share(1, 2))
    >>> written.tolist(), results[0].per_pair.isnan().all().item()    # one pair, one batch: shard 1 of 2's
    ([False], True)
    """
    return _attribution(model, prompts, spec.kinds, spec.metric, spec.direction, spec.method, spec.steps,
                        spec.per_position, spec.positions, max_memory_mb, spec.saes, share, on_progress)


def _attribution(model, prompts: PromptSet, kinds, metric, direction: str, method: str, steps: int,
                 per_position: bool, positions, max_memory_mb, saes, share: Share | None,
                 on_progress=None) -> tuple[list[AttributionResult], Tensor | None]:
    """run_attribution's body: the kinds' specs, then each (selected) pair batch's estimates."""
    kinds = kinds if kinds is not None else attribution_kinds(model)
    metric_name = metric if isinstance(metric, str) else get_metric(metric).name
    specs = []
    for kind in kinds:
        spec = PatchSpec(kind=kind, direction=direction, metric=metric_name,
                         per_position=per_position and KINDS[kind].has_per_position if kind in KINDS else False,
                         positions=positions if kind == "neuron" else None, model=model.name,
                         prepend_bos=prompts.prepend_bos, saes=saes if kind == "feature" else None)
        specs.append((spec, *plan_coords(model, prompts, spec)))
    batches = pair_batches(model, prompts, max_memory_mb)
    mine = range(len(batches)) if share is None else share.mine([hi - lo for lo, hi in batches])
    n = prompts.n_pairs
    values = [torch.full((*[len(c[a]) for a in axes], n), float("nan"), dtype=torch.float64)
              for _, axes, c in specs]
    clean, corrupt = (torch.full((n,), float("nan"), dtype=torch.float64) for _ in range(2))
    written = torch.zeros(n, dtype=torch.bool)
    seconds, clean_is = 0.0, get_metric(metric).clean_is
    for done, b in enumerate(mine):
        lo, hi = batches[b]
        part = prompts if (lo, hi) == (0, n) else prompts.subset(range(lo, hi))
        att = _attribute(model, part, metric, direction, method, steps, edges=False, max_memory_mb=max_memory_mb)
        for (spec, axes, coords), out in zip(specs, values):
            out[..., lo:hi] = att.pair.base_baseline + _estimate(model, att, spec, axes, coords, positions, part)
        clean[lo:hi], corrupt[lo:hi] = att.pair.clean_baseline, att.pair.corrupt_baseline
        written[lo:hi] = True
        seconds += att.seconds
        if on_progress is not None:
            on_progress(done + 1, len(mine))
    results = [AttributionResult(spec, axes, coords, v, clean, corrupt, prompts.str_tokens, clean_is, seconds,
                                 model.name, method, steps if method == "ig" else 0)
               for (spec, axes, coords), v in zip(specs, values)]
    return results, (written if share is not None else None)


def _estimate(model, att: _Attribution, spec: PatchSpec, axes, coords, positions, prompts: PromptSet) -> Tensor:
    """One kind's estimated change of the metric [*cells, pairs of att] at the result's cells."""
    mask = torch.zeros(prompts.n_pos, dtype=torch.bool, device=prompts.clean_tokens.device)
    mask[list(positions) if positions is not None else slice(None)] = True
    sae_set = model_saes(model, spec.saes) if spec.kind == "feature" else None
    sel = _full_estimate(model, att, spec.kind, spec.per_position, mask, sae_set)
    for dim, a in enumerate(axes):
        sel = sel.index_select(dim, torch.tensor(coords[a], dtype=torch.long))
    return sel


def attribution_dataframe(results: list[PatchResult]) -> pd.DataFrame:
    """Every kind's rows in one contract-column DataFrame."""
    return pd.concat([r.to_dataframe() for r in results], ignore_index=True)


def attribution_csv(results: list[PatchResult], path_or_buf=None) -> str | None:
    """The contract CSV for all kinds at once (formula-neutralised); the text when no path."""
    return write_csv(attribution_dataframe(results), path_or_buf)


# -- edges (EAP) ----------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class EdgeScores:
    """EAP scores of edges upstream -> downstream, per pair: per_pair [U, V, n_pairs]; NaN where
    no edge exists (the upstream node writes after the downstream node reads)."""
    upstream: tuple[str, ...]           # 'embed', 'head:L.H', 'mlp:L'
    downstream: tuple[str, ...]         # 'q:L.H', 'k:L.G', 'v:L.G', 'mlp:L', 'logits'
    per_pair: Tensor = field(repr=False)
    clean_baseline: Tensor = field(repr=False)
    corrupt_baseline: Tensor = field(repr=False)
    direction: str = "denoise"
    metric: str = "logit_diff"
    method: str = "plain"
    steps: int = 0
    seconds: float = 0.0
    model_name: str = ""

    @property
    def scores(self) -> Tensor:
        """Mean over pairs, [U, V]."""
        return self.per_pair.mean(-1)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per existing edge: upstream, downstream, score, abs_score, normalized (score
        over the clean - corrupt gap; signed so that 1 = the whole gap towards clean), method."""
        s = self.scores
        u, v = torch.nonzero(~torch.isnan(s), as_tuple=True)
        gap = float(self.clean_baseline.mean() - self.corrupt_baseline.mean())
        sign = 1.0 if self.direction == "denoise" else -1.0
        vals = s[u, v]
        df = pd.DataFrame({
            "upstream": [self.upstream[i] for i in u.tolist()],
            "downstream": [self.downstream[i] for i in v.tolist()],
            "score": vals.tolist(), "abs_score": vals.abs().tolist(),
            "normalized": (sign * vals / gap).tolist() if abs(gap) > 1e-12 else float("nan"),
            "direction": self.direction, "metric": self.metric,
            "method": "eap" if self.method == "plain" else "eap_ig",
            "steps": self.steps if self.method == "ig" else pd.NA,
        })
        return df

    def top(self, k: int = 10) -> pd.DataFrame:
        """The k edges with the largest |score|."""
        return self.to_dataframe().nlargest(k, "abs_score").reset_index(drop=True)

    def to_csv(self, path_or_buf=None) -> str | None:
        return write_csv(self.to_dataframe(), path_or_buf)

    def to_json(self) -> dict:
        """A JSON-able dict (NaN for missing edges becomes null); `EdgeScores.from_json` restores it."""
        per_pair = [[[None if v != v else v for v in cell] for cell in row] for row in self.per_pair.tolist()]
        return {"kind": "edges", "upstream": list(self.upstream), "downstream": list(self.downstream),
                "per_pair": per_pair, "clean_baseline": self.clean_baseline.tolist(),
                "corrupt_baseline": self.corrupt_baseline.tolist(), "direction": self.direction,
                "metric": self.metric, "method": self.method, "steps": self.steps, "seconds": self.seconds,
                "model_name": self.model_name}

    @classmethod
    def from_json(cls, d: dict) -> "EdgeScores":
        per_pair = torch.tensor([[[float("nan") if v is None else v for v in cell] for cell in row]
                                 for row in d["per_pair"]], dtype=torch.float64)
        return cls(tuple(d["upstream"]), tuple(d["downstream"]), per_pair,
                   torch.tensor(d["clean_baseline"], dtype=torch.float64),
                   torch.tensor(d["corrupt_baseline"], dtype=torch.float64), d["direction"], d["metric"],
                   d["method"], d["steps"], d["seconds"], d["model_name"])


def edge_attribution(model, prompts: PromptSet, *, metric: Metric | Callable | str = "logit_diff",
                     direction: str = "denoise", method: str = "plain",
                     steps: int = DEFAULT_STEPS, max_memory_mb: float | None = None) -> EdgeScores:
    """EAP (method="plain") or EAP-IG (method="ig") scores for every edge between the token
    embeddings, heads, MLPs and logits. Upstream heads are query heads; downstream k / v nodes
    are key/value heads.

    >>> edge_attribution(model, prompts).top(5)                  # doctest: +SKIP
    """
    att = _attribute(model, prompts, metric, direction, method, steps, edges=True, max_memory_mb=max_memory_mb)
    a = model.arch
    n_layers, H, KV = a.n_layers, a.n_heads, a.n_kv_heads
    parallel = model.parallel_attn_mlp
    up_labels, up_deltas, up_slots = ["embed"], [att.pair.donor.layers[0].resid_pre - att.pair.base.layers[0].resid_pre], [0]
    for layer in range(n_layers):
        w_o = a.o_weight(layer).detach().view(H, a.d_head, a.d_model)
        dz = att.pair.donor.layers[layer].z - att.pair.base.layers[layer].z                    # [b, T, H, dh]
        heads = torch.einsum("bthd,hdm->bhtm", dz, w_o)                              # [b, H, T, d]
        for h in range(H):
            up_labels.append(Node("head", layer, h).label)
            up_deltas.append(heads[:, h])
            up_slots.append(2 * layer + 1)
        up_labels.append(Node("mlp", layer).label)
        up_deltas.append(att.pair.donor.layers[layer].mlp_out - att.pair.base.layers[layer].mlp_out)
        up_slots.append(2 * layer + 2)
    down_labels, down_grads, down_slots = [], [], []
    for layer in range(n_layers):
        g = att.grads["qkv_in"][layer]                                               # [b, T, C, d]
        for c, (kind, head) in enumerate([("q", h) for h in range(H)] + [("k", g_) for g_ in range(KV)]
                                         + [("v", g_) for g_ in range(KV)]):
            down_labels.append(Node(kind, layer, head).label)
            down_grads.append(g[:, :, c])
            down_slots.append(2 * layer)
        down_labels.append(Node("mlp", layer).label)
        down_grads.append(att.grads["mlp_in"][layer])
        down_slots.append(2 * layer + (0 if parallel else 1))
    final = torch.zeros_like(down_grads[0])
    final[:, -1] = att.grads["final_in"]
    down_labels.append("logits")
    down_grads.append(final)
    down_slots.append(2 * n_layers)
    U = torch.stack(up_deltas, 1).flatten(2)          # [b, U, T*d]
    V = torch.stack(down_grads, 1).flatten(2)         # [b, V, T*d]
    scores = torch.einsum("bun,bvn->uvb", U, V).double().cpu()
    exists = torch.tensor(up_slots)[:, None] <= torch.tensor(down_slots)[None, :]
    scores[~exists] = float("nan")
    metric_name = metric if isinstance(metric, str) else att.pair.metric.name
    return EdgeScores(tuple(up_labels), tuple(down_labels), scores, att.pair.clean_baseline, att.pair.corrupt_baseline,
                      direction, metric_name, method, att.steps, att.seconds, model.name)


# -- agreement with exact patching ----------------------------------------------------------------
def agreement(estimate: PatchResult, exact: PatchResult, k: int = 10) -> dict:
    """How well an estimate ranks cells like exact patching (same spec and axes).

    pearson: correlation of the mean values over all cells; topk_overlap: the share of the
    exact top-k cells by |effect| (effect = value - the base run's metric) that are also the
    estimate's top-k, with k capped at the number of cells exact patching changes by more than
    0.1% of its largest effect (float noise in unchanged cells must not decide the ranking).

    >>> agreement(run_attribution(model, prompts, kinds=["head_out"])[0],
    ...           sweep(model, prompts, PatchSpec(kind="head_out")))      # doctest: +SKIP
    {'kind': 'head_out', 'pearson': 0.99, 'topk_overlap': 1.0, 'k': 10, 'cells': 48}
    """
    if estimate.values.shape != exact.values.shape:
        raise ValueError(f"shapes differ: estimate {tuple(estimate.values.shape)}, exact {tuple(exact.values.shape)}")
    a, b = estimate.values.flatten().double(), exact.values.flatten().double()
    keep = ~(torch.isnan(a) | torch.isnan(b))
    a, b = a[keep], b[keep]
    base = exact.base_value
    ea, eb = (a - base).abs(), (b - base).abs()
    changed = int((eb > 1e-3 * max(float(eb.max()), 1e-12)).sum()) if len(eb) else 0
    kk = max(1, min(k, changed))
    ac, bc = a - a.mean(), b - b.mean()
    denom = float(ac.norm() * bc.norm())
    pearson = float((ac * bc).sum()) / denom if denom > 0 else float("nan")
    overlap = len(set(ea.topk(kk).indices.tolist()) & set(eb.topk(kk).indices.tolist())) / kk
    return {"kind": exact.spec.kind, "pearson": pearson, "topk_overlap": overlap, "k": kk, "cells": int(len(a))}


def measure_agreement(model, prompts: PromptSet, *, kinds: tuple[str, ...] | None = None,
                      methods: tuple[str, ...] = ("plain", "ig"), directions: tuple[str, ...] = ("denoise",),
                      per_position: bool = False, steps: int = DEFAULT_STEPS, k: int = 10) -> pd.DataFrame:
    """Per kind, method and direction: Pearson r and top-k overlap of attribution vs exact patching
    (`engine.sweep` of the same spec). One exact sweep per kind and direction.

    >>> measure_agreement(model, prompts, kinds=("head_out",))       # doctest: +SKIP
    """
    from patching.methods.sweep import sweep
    rows = []
    for direction in directions:
        exact = {}
        for method in methods:
            for r in run_attribution(model, prompts, kinds=kinds, direction=direction, method=method,
                                     steps=steps, per_position=per_position):
                if r.spec.kind not in exact:
                    exact[r.spec.kind] = sweep(model, prompts, r.spec)
                rows.append({"method": r.method_label, "direction": direction, "steps": r.steps,
                             "per_position": r.spec.per_position, **agreement(r, exact[r.spec.kind], k)})
    return pd.DataFrame(rows)
