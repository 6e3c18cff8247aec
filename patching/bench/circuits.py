"""Timing of path patching and attribution patching, for `python -m patching bench`.

One row per analysis: our seconds, a reference's seconds measured in the same run, their ratio
(reference / ours: the speed-up), and our time in forward-pass equivalents, where one forward is
the engine's own full forward (`Runner.run`) of the same prompts (the fastest full forward
available here, so the count is not flattered).

- path patching, every sender head into a receiver set, both modes; reference: the naive
  method (Wang et al.'s two hooked TransformerLens-bridge forwards per sender, written in
  `naive_path_patch`), timed on a sample of senders and scaled (the row says how many);
  forward-equivalents are per sender.
- attribution patching for all kinds at once (plain and IG); reference: exact patching of the
  same kinds with `engine.sweep`.
- EAP edge scores (plain); reference: none (the exact edge sweep is path patching per edge).

>>> rows = bench_path_and_attribution(model, prompts)          # doctest: +SKIP
>>> print(format_rows(rows))                                   # doctest: +SKIP
"""
from __future__ import annotations

import time

import torch

from metrics import MetricInputs, get_metric

from patching.model import hooks
from patching.methods.attribution import agreement, attribution_kinds, edge_attribution, run_attribution
from patching.methods.sweep import sweep
from patching.methods.path import Node, PathSpec, parse_node, run_path
from patching.core.prompts import PromptSet
from patching.core.spec import PatchSpec


def timed(fn, repeat: int = 1):
    """(fn's last result, its fastest wall-clock seconds over `repeat` calls).

    >>> timed(lambda: 2 + 2)[0]
    4
    """
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def forward_seconds(model, prompts: PromptSet, repeat: int = 5) -> float:
    """The fastest of `repeat` full forwards of the engine (Runner.run) on the corrupt prompts."""
    model.runner.run(prompts.corrupt_tokens)                      # warm-up
    return timed(lambda: model.runner.run(prompts.corrupt_tokens), repeat)[1]


@torch.inference_mode()
def naive_path_patch(model, prompts: PromptSet, sender: Node, receivers: list[Node], mode: str,
                     base_cache=None, donor_cache=None) -> torch.Tensor:
    """The textbook method with TransformerLens hooks (denoise): forward 1 patches the sender,
    freezes every head (and every MLP in direct mode) and records the receivers' inputs;
    forward 2 patches them into the corrupt run. Returns the last position's logits [pairs, vocab]."""
    bridge = model.bridge
    base_tokens = prompts.corrupt_tokens
    if base_cache is None:
        base_cache = bridge.run_with_cache(base_tokens)[1]
    if donor_cache is None:
        donor_cache = bridge.run_with_cache(prompts.clean_tokens)[1]
    sel = slice(None) if sender.pos is None else sender.pos
    seen = {}

    def freeze_z(act, hook, layer):
        new = base_cache[hooks.z(layer)].clone()
        if sender.kind == "head" and sender.layer == layer:
            new[:, sel, sender.head] = donor_cache[hooks.z(layer)][:, sel, sender.head]
        return new

    def mlp_out(act, hook, layer):
        seen[("mlp", layer)] = act
        new = base_cache[hooks.mlp_out(layer)].clone() if mode == "direct" else act.clone()
        if sender.kind == "mlp" and sender.layer == layer:
            new[:, sel] = donor_cache[hooks.mlp_out(layer)][:, sel]
        return new

    def resid_pre(act, hook):
        act = act.clone()
        act[:, sel] = donor_cache[hooks.resid_pre(sender.layer)][:, sel]
        return act

    def record(act, hook, key):
        seen[key] = act

    step1 = []
    for layer in range(model.n_layers):
        step1.append((hooks.z(layer), lambda a, hook, l=layer: freeze_z(a, hook, l)))
        step1.append((hooks.mlp_out(layer), lambda a, hook, l=layer: mlp_out(a, hook, l)))
        for which, name in (("q", hooks.q), ("k", hooks.k), ("v", hooks.v)):
            if any(r.kind == which and r.layer == layer for r in receivers):
                step1.append((name(layer), lambda a, hook, key=(which, layer): record(a, hook, key)))
    if sender.kind == "resid":
        step1.append((hooks.resid_pre(sender.layer), resid_pre))
    logits = bridge.run_with_hooks(base_tokens, fwd_hooks=step1)
    if any(r.kind == "logits" for r in receivers):
        return logits[:, -1]

    def put(act, hook, r):
        act = act.clone()
        if r.kind == "mlp":
            act[:] = seen[("mlp", r.layer)]
        else:
            act[:, :, r.head] = seen[(r.kind, r.layer)][:, :, r.head]
        return act
    name = {"q": hooks.q, "k": hooks.k, "v": hooks.v, "mlp": hooks.mlp_out}
    step2 = [(name[r.kind](r.layer), lambda a, hook, r=r: put(a, hook, r)) for r in receivers]
    return bridge.run_with_hooks(base_tokens, fwd_hooks=step2)[:, -1]


def bench_path_and_attribution(model, prompts: PromptSet, *, receivers: tuple[str, ...] | None = None,
                               naive_sample: int = 8, ig_steps: int = 8,
                               reference_kinds: tuple[str, ...] | None = ("resid_pre", "attn_out", "mlp_out", "head_out"),
                               repeat: int = 1) -> list[dict]:
    """Rows: name, seconds, reference_seconds, ratio (reference / ours), forward_equivalents,
    reference (what the reference is), max_abs_diff (ours vs reference values where compared).

    receivers default to the queries of every head in the last layer. Attribution always covers
    every kind; exact patching is timed (and compared) for `reference_kinds` (None = every kind;
    the neuron sweep alone is d_mlp x n_layers patched runs), and the reference time is for those.
    """
    fwd = forward_seconds(model, prompts)
    last = model.n_layers - 1
    receivers = receivers or tuple(f"q:{last}.{h}" for h in range(model.n_heads))
    rnodes = [parse_node(r, "receiver") for r in receivers]
    metric = get_metric("logit_diff")
    inputs = MetricInputs.of(prompts, None)
    rows = []
    bridge = model.bridge
    base_cache = bridge.run_with_cache(prompts.corrupt_tokens)[1]
    donor_cache = bridge.run_with_cache(prompts.clean_tokens)[1]
    for mode in ("heads_frozen", "direct"):
        spec = PathSpec(receivers=receivers, mode=mode)
        run_path(model, prompts, PathSpec(senders=("head:0.0",), receivers=receivers, mode=mode))   # warm-up
        result, ours = timed(lambda: run_path(model, prompts, spec), repeat)
        senders = [Node("head", l, h) for l in range(model.n_layers) for h in range(model.n_heads)
                   if l < min(r.layer for r in rnodes)]
        g = torch.Generator().manual_seed(0)
        picked = [senders[i] for i in torch.randperm(len(senders), generator=g)[:naive_sample].tolist()]
        start = time.perf_counter()
        diffs = []
        for s in picked:
            logits = naive_path_patch(model, prompts, s, rnodes, mode, base_cache, donor_cache)
            ref = metric(logits, inputs).double().cpu()
            diffs.append(float((result.per_pair[s.layer, s.head] - ref).abs().max()))
        naive = (time.perf_counter() - start) * len(senders) / max(1, len(picked))
        rows.append({"name": f"path_{mode}", "seconds": ours, "reference_seconds": naive,
                     "ratio": naive / ours, "forward_equivalents": ours / fwd / max(1, len(senders)),
                     "reference": f"naive hooked path patching, {len(picked)} of {len(senders)} senders timed, scaled",
                     "unit": "per sender", "max_abs_diff": max(diffs) if diffs else float("nan")})
    kinds = attribution_kinds(model)
    run_attribution(model, prompts, kinds=["attn_out"])                          # warm-up
    ref_kinds = [k for k in (reference_kinds or kinds) if k in kinds]
    exact, exact_s = timed(lambda: {k: sweep(model, prompts, PatchSpec(kind=k)) for k in ref_kinds})
    for method, steps in (("plain", 0), ("ig", ig_steps)):
        res, ours = timed(lambda: run_attribution(model, prompts, kinds=kinds, method=method,
                                                    steps=steps or 1), repeat)
        note = f"exact sweeps of {len(ref_kinds)} of the {len(kinds)} kinds ({', '.join(ref_kinds)})"
        rs = [agreement(r, exact[r.spec.kind])["pearson"] for r in res if r.spec.kind in exact]
        if rs:
            note += f"; Pearson r vs exact: mean {sum(rs) / len(rs):.3f}, min {min(rs):.3f}"
        rows.append({"name": "attribution" + ("" if method == "plain" else f"_ig{steps}") + "_all_kinds",
                     "seconds": ours, "reference_seconds": exact_s, "ratio": exact_s / ours,
                     "forward_equivalents": ours / fwd, "reference": note, "unit": "whole run",
                     "max_abs_diff": float("nan")})
    edges, ours = timed(lambda: edge_attribution(model, prompts), repeat)
    rows.append({"name": f"eap_edges_{edges.per_pair.shape[0]}x{edges.per_pair.shape[1]}", "seconds": ours,
                 "reference_seconds": float("nan"), "ratio": float("nan"), "forward_equivalents": ours / fwd,
                 "reference": "none", "unit": "whole run", "max_abs_diff": float("nan")})
    return rows


def format_rows(rows: list[dict]) -> str:
    """A fixed-width table of `bench_path_and_attribution`'s rows."""
    lines = [f"{'analysis':<28} {'ours s':>8} {'ref s':>9} {'speed-up':>9} {'fwd-eq':>7}  reference"]
    for r in rows:
        lines.append(f"{r['name']:<28} {r['seconds']:>8.3f} {r['reference_seconds']:>9.2f} {r['ratio']:>8.1f}x "
                     f"{r['forward_equivalents']:>7.2f}  {r['unit']}; {r['reference']}")
    return "\n".join(lines)
