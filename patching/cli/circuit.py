"""`python -m patching circuit ...`: a circuit's faithfulness, and the faithfulness curve.

Registered by `cli.build_parser` through `add_commands(sub)`; flags, loading and exit codes
from `cli/common.py`: 0 ok, 2 bad input (one line), 1 internal error.

    python -m patching circuit --task ioi --n 16 --components L0H0,MLP0 --ablation mean
    python -m patching circuit --task ioi --curve-from head_out --top 10 --csv curve.csv --json
    python -m patching circuit --pairs pairs.csv --curve-from head_out,mlp_out --rank-by attribution
    python -m patching circuit --task ioi --edges 0.2 --csv edges.csv     # the EAP graph's edges
    python -m patching circuit --task ioi --curve-from feature --top 20 --keep L0ERR,L1ERR,L2ERR,L3ERR
    python -m patching circuit --task ioi --components L1F12,L3ERR --saes my_saes/   # a feature circuit
    python -m patching circuit --task ioi --curve-from head_out --csv c.csv --shards 4 --redis-url redis://h:6379/0

Without --components, the circuit is the curve's top components (--top). The ranking sweep
(--curve-from) is exact patching of those kinds (or attribution estimates, --rank-by
attribution) in --direction, per-position results reduced by --reduce (sum or max). SAE units
(L<layer>F<feature>, L<layer>ERR; --curve-from feature) make a feature circuit: every head and
MLP runs, the SAE units not kept are ablated (`patching.methods.circuit`).

>>> from patching.cli import build_parser
>>> build_parser().parse_args(["circuit", "--components", "L0H0,MLP0"]).ablation
'mean'
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from patching.cli.common import (EXIT_OK, MAX_COUNT, MAX_SEED, BadInput, check_outputs, check_shards, has_pairs,
                                 load_pairs_or_task, megabytes, model_flags, pair_flags, shard_flags, whole, write)



def _prompts(args: argparse.Namespace):
    """--pairs / --clean... through the CLI's loader, else the task's largest same-length group."""
    if not has_pairs(args) and args.n < 1:
        raise BadInput(f"--n must be at least 1, not {args.n}")
    return load_pairs_or_task(args)


def _components(text: str, flag: str):
    """The components a flag names; BadInput when it is given but names none (e.g. ',,,').

    >>> [c.name for c in _components("L0H1, MLP0", "--components")]
    ['L0H1', 'MLP0']
    """
    from patching.methods.circuit import parse_components
    from patching.core.spec import shorten
    parsed = parse_components(text)
    if not parsed:
        raise BadInput(f"{flag} {shorten(text)} names no component; write L<layer>H<head>, MLP<layer> or "
                       "ATTN<layer>, comma-separated, e.g. L0H1,MLP0 (SAE units: L<layer>F<feature>, L<layer>ERR)")
    return parsed


def _ranking(args: argparse.Namespace, model, prompts, redis_url: str | None = None):
    """(component, effect) by |effect| from exact sweeps or attribution of --curve-from kinds; with
    --shards, run on the workers (the same values)."""
    from patching.methods.attribution import run_attribution
    from patching.methods.circuit import RANK_KINDS, rank_components
    from patching.methods.sweep import sweep
    from patching.core.spec import PatchSpec
    from patching.cli.sweep import run_on_shards
    kinds = [k.strip() for k in args.curve_from.split(",") if k.strip()]
    bad = [k for k in kinds if k not in RANK_KINDS]
    if bad or not kinds:
        raise BadInput(f"--curve-from takes {', '.join(RANK_KINDS)} (comma-separated), not {args.curve_from!r}")
    if args.rank_by == "attribution" and redis_url:
        from patching.methods.attribution import AttributionSpec
        results = run_on_shards(model, prompts, AttributionSpec(kinds=tuple(kinds), metric=args.metric,
                                                                direction=args.direction, model=args.model,
                                                                prepend_bos=prompts.prepend_bos, saes=args.saes),
                                args, redis_url, "ranking")
    elif args.rank_by == "attribution":
        results = run_attribution(model, prompts, kinds=kinds, metric=args.metric, direction=args.direction,
                                  max_memory_mb=args.max_memory, saes=args.saes)
    else:
        specs = [PatchSpec(kind=k, direction=args.direction, metric=args.metric, model=model.name,
                           prepend_bos=prompts.prepend_bos, saes=args.saes if k == "feature" else None)
                 for k in kinds]
        results = [run_on_shards(model, prompts, dataclasses.replace(spec, model=args.model), args, redis_url,
                                 f"{spec.kind:>12}") if redis_url else
                   sweep(model, prompts, spec, max_memory_mb=args.max_memory) for spec in specs]
    return rank_components(*results, reduce=args.reduce)


def _curve(args: argparse.Namespace, model, prompts, ranked, keep, redis_url: str | None):
    """The faithfulness curve of `ranked`; with --shards, its k-chunks on the workers."""
    from patching.methods.circuit import CurveSpec, faithfulness_curve
    if not redis_url:
        return faithfulness_curve(model, prompts, ranked, ablation=args.ablation, seed=args.ablation_seed,
                                  metric=args.metric, keep=keep, max_memory_mb=args.max_memory, saes=args.saes)
    from patching.cli.sweep import run_on_shards
    spec = CurveSpec.of(ranked, keep=keep, ablation=args.ablation, seed=args.ablation_seed, metric=args.metric,
                        model=args.model, prepend_bos=prompts.prepend_bos, saes=args.saes)
    return run_on_shards(model, prompts, spec, args, redis_url, "curve")


def cmd_edges(args: argparse.Namespace) -> int:
    """--edges SHARE: the EAP graph's edges with |score| >= SHARE x the largest, as CSV."""
    from patching.methods.attribution import edge_attribution
    from patching.methods.circuit import edge_graph
    from patching.core.results import write_csv
    if not 0 <= args.edges <= 1:
        raise BadInput(f"--edges takes a share of the largest |score| from 0 to 1, not {args.edges}")
    model, prompts = _prompts(args)
    edges = edge_attribution(model, prompts, metric=args.metric, direction=args.direction)
    biggest = float(edges.scores.abs().nan_to_num(0.0).max())
    graph = edge_graph(edges, args.edges * biggest, n_heads=model.n_heads, n_kv_heads=model.n_kv_heads)
    print(f"{len(graph.edges)} of {graph.n_edges_total} edges with |score| >= {graph.threshold:.4g}",
          file=sys.stderr)
    write(write_csv(graph.edges.drop(columns=["x0", "y0", "x1", "y1"])), args.csv or "-")
    return EXIT_OK


def cmd_circuit(args: argparse.Namespace) -> int:
    from patching.methods.circuit import CircuitSpec, faithfulness, parse_components
    check_outputs(args)
    redis_url = check_shards(args)
    if redis_url and not args.curve_from:
        raise BadInput("--shards splits the ranking sweeps and the faithfulness curve; add --curve-from or "
                       "leave out --shards (one circuit is three batched runs)")
    if redis_url and args.edges is not None:
        raise BadInput("--edges is not sharded: leave out --shards")
    if args.edges is not None:
        return cmd_edges(args)
    if not args.components and not args.curve_from:
        raise BadInput("give --components (e.g. L0H0,MLP0) and/or --curve-from head_out[,mlp_out]")
    if args.top is not None and args.top < 0:
        raise BadInput(f"--top must be >= 0, not {args.top}")
    components = _components(args.components, "--components") if args.components else None
    keep = _components(args.keep, "--keep") if args.keep else parse_components(args.keep)
    model, prompts = _prompts(args)
    curve = ranked = None
    if args.curve_from:
        ranked = _ranking(args, model, prompts, redis_url)
        if args.top is not None:
            ranked = ranked[:args.top]
        curve = _curve(args, model, prompts, ranked, keep, redis_url)
    if components is None:
        components = keep + tuple(c for c, _ in ranked if c not in keep)
    result = faithfulness(model, prompts, CircuitSpec(components, args.ablation, args.ablation_seed, args.saes),
                          metric=args.metric, max_memory_mb=args.max_memory)
    if args.csv:
        frame = curve.to_dataframe() if curve is not None else None
        if frame is None:
            import pandas as pd
            frame = pd.DataFrame([result.to_dict()])
        from patching.core.results import write_csv
        write(write_csv(frame), args.csv)
    if args.json:
        out = {"circuit": result.to_dict()}
        if curve is not None:
            out["curve"] = curve.to_dataframe().drop(columns=["m_full", "m_empty", "ablation", "seed", "metric"]) \
                .astype(object).where(lambda d: d.notna(), None).to_dict(orient="records")
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return EXIT_OK
    r = result
    lines = [f"circuit: {len(r.spec.components)} components ({r.spec.to_dict()['components'] or 'none'})",
             f"faithfulness {r.faithfulness:.4f}  ({r.metric}: circuit {r.m_circuit:.4f}, full {r.m_full:.4f}, "
             f"all ablated {r.m_empty:.4f}; {r.spec.ablation} ablation, {r.per_pair.numel()} pairs)"]
    if curve is not None:
        lines.append(f"curve ({args.curve_from}, {args.rank_by}, by |effect|"
                     + (f", always keeping {len(keep)}" if keep else "") + "):")
        lines += [f"  k={row.k:<3d} {row.added:<8s} faithfulness {row.faithfulness:8.4f}"
                  for row in curve.to_dataframe().itertuples()]
    sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK


def add_commands(sub) -> None:
    """Register `circuit` on the CLI's subparsers (see the module's example)."""
    from patching.methods.circuit import ABLATIONS, REDUCTIONS
    p = sub.add_parser("circuit", help="faithfulness of a circuit (kept components, the rest ablated) "
                                       "and the faithfulness curve by effect")
    model_flags(p)
    pair_flags(p, wrong_example=None, task="ioi")
    p.add_argument("--components", help="kept components: L<layer>H<head>, MLP<layer>, ATTN<layer>, "
                                        "or SAE units L<layer>F<feature>, L<layer>ERR (a feature circuit), "
                                        "comma-separated (default: the curve's top --top)")
    p.add_argument("--ablation", default="mean", choices=ABLATIONS,
                   help="what other components' outputs become: mean over the corrupt prompts (default), "
                        "another pair's corrupt value (resample), zero, or the pair's own corrupt value (corrupt)")
    p.add_argument("--ablation-seed", type=whole(0, MAX_SEED), default=0, help="resample ablation's seed (default 0)")
    p.add_argument("--metric", default="logit_diff", help="metric (default logit_diff)")
    p.add_argument("--curve-from", help="rank components by these sweeps' effects and draw the curve: "
                                        "head_out, mlp_out, attn_out (comma-separated), or feature")
    p.add_argument("--rank-by", default="exact", choices=["exact", "attribution"],
                   help="ranking sweep: exact patching (default) or attribution estimates")
    p.add_argument("--direction", default="denoise", choices=["denoise", "noise"], help="ranking sweep's direction")
    p.add_argument("--reduce", default="sum", choices=REDUCTIONS,
                   help="per-position effects (mlp_out) over positions: sum (default) or max |effect|")
    p.add_argument("--top", type=whole(0, MAX_COUNT), help="the curve's first N components (default: all)")
    p.add_argument("--keep", help="components in every circuit of the curve, e.g. MLP0,MLP1 (or every "
                                  "error node: L0ERR,L1ERR,...)")
    p.add_argument("--saes", help="a feature circuit's SAEs: a folder of sae-lens SAE folders (default: the "
                                  "model's own saes/)")
    p.add_argument("--csv", help="write the curve (or the circuit's row) as CSV to this path (- = stdout)")
    p.add_argument("--json", action="store_true", help="print the circuit (and curve) as JSON")
    p.add_argument("--edges", type=float, metavar="SHARE",
                   help="instead of a circuit: the EAP edge graph's edges with |score| >= SHARE x the "
                        "largest (0-1), as CSV (upstream, downstream, via, score, ...) to --csv or stdout")
    p.add_argument("--max-memory", type=megabytes, default=None, metavar="MB",
                   help="memory budget for a batch of runs (default: a share of the memory free on the device)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (--shards)")
    shard_flags(p, "the ranking sweeps and the curve")
    p.set_defaults(func=cmd_circuit)
