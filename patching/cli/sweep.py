"""`python -m patching sweep|path|attribution ...`: the patching commands and their shared flags.

    python -m patching sweep --clean "..." --corrupt "..." --answer " Mary" --wrong " John" --kind head_out
    python -m patching path --pairs pairs.csv --receivers q:3.0,q:3.1 --mode heads_frozen
    python -m patching attribution --pairs pairs.csv --method ig --steps 5

`--dry-run`, `--compare-exact` and `--refine` come from `cli/cost.py`, `--save-run` from
`cli/runs.py`.

>>> from patching.cli import build_parser
>>> build_parser().parse_args(["path", "--receivers", "q:3.0", "--dry-run"]).mode
'heads_frozen'
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from patching.cli import cost as cli_cost
from patching.cli import runs as cli_runs
from patching.cli.common import (EXIT_OK, BadInput, TimedOut, check_outputs, check_shards, load, megabytes,
                                 metric_flag, model_flags, out_flag, pair_flags, shard_flags, sigterm_interrupts,
                                 time_left, whole, write)
from patching.kinds import KINDS


class ProgressBar:
    """A progress bar on stderr, shown only once a sweep has run for more than a second.

    >>> ProgressBar("sweep")(3, 10)         # within the first second: nothing
    """

    def __init__(self, label: str, stream=sys.stderr, quiet: bool = False):
        self.label, self.stream, self.quiet = label, stream, quiet
        self.start, self.shown = time.perf_counter(), False

    def __call__(self, done: int, total: int) -> None:
        elapsed = time.perf_counter() - self.start
        if self.quiet or (elapsed < 1.0 and not self.shown):
            return
        self.shown = True
        width = 30
        filled = int(width * done / max(total, 1))
        eta = elapsed / max(done, 1) * (total - done)
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
                          f"{elapsed:5.1f}s eta {eta:4.1f}s")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def patch_flags(p: argparse.ArgumentParser) -> None:
    """The flags of every patching command: model, prompt pairs, metric, direction, memory, output.

    >>> patch_flags(p := argparse.ArgumentParser()); p.parse_args([]).direction
    'denoise'
    """
    model_flags(p)
    pair_flags(p)
    metric_flag(p)
    p.add_argument("--direction", default="denoise", choices=["denoise", "noise"])
    p.add_argument("--max-memory", type=megabytes, default=None, metavar="MB",
                   help="memory budget for a batch of patched runs (default: a share of the memory "
                        "free on the device)")
    out_flag(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _kind_list(text: str, flag: str = "--kind") -> list[str]:
    """'resid_pre, head_out' -> ['resid_pre', 'head_out']; BadInput naming the flag when no kind
    is named, or a kind is unknown.

    >>> _kind_list("resid_pre, head_out,")
    ['resid_pre', 'head_out']
    """
    from patching.core.spec import shorten
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    if not kinds:
        raise BadInput(f"{flag} {shorten(text)} names no kind; give one or more of {', '.join(KINDS)}, "
                       "comma-separated")
    unknown = next((k for k in kinds if k not in KINDS), None)
    if unknown is not None:
        raise BadInput(f"unknown kind {shorten(unknown)}; choose one of {', '.join(KINDS)} (in {flag})")
    return kinds


def run_on_shards(model, prompts, spec, args: argparse.Namespace, redis_url: str, label: str):
    """`spec`'s run (a sweep, path, attribution or curve spec) as `--shards N` pieces on the workers
    of `redis_url`, merged: the one-worker result under the same --max-memory. Says on stderr which
    workers took shards. Ctrl-C, SIGTERM and --timeout cancel every shard (TimedOut for the last)."""
    from patching.methods.shards import plan, work_of
    from patching.model.loading import require_runner
    from patching.runs.sharded import ShardTimeout, run_sharded
    require_runner(model, f"a sharded {work_of(spec).noun} (--shards)")
    status = []
    try:
        with sigterm_interrupts():
            result, _parts = run_sharded(redis_url, prompts, plan(spec, args.shards, getattr(args, "max_memory", None)),
                                         on_progress=ProgressBar(label, quiet=args.quiet), on_status=status.append,
                                         timeout_s=time_left(args))
    except ShardTimeout as exc:
        raise TimedOut(f"--timeout {args.timeout:g}: {exc}") from None
    except KeyboardInterrupt:
        print(f"{label.strip()}: every shard cancelled", file=sys.stderr)
        raise
    if not args.quiet and status:
        print(f"{label.strip()}: {status[-1].line()}", file=sys.stderr)
    return result


def sharded_sweep(model, prompts, spec, args: argparse.Namespace, redis_url: str):
    """The sweep as `--shards N` pieces (`run_on_shards`); the same result as `sweep` (its provenance
    included)."""
    from patching.core.provenance import attach
    start = time.perf_counter()
    result = run_on_shards(model, prompts, spec, args, redis_url, f"{spec.kind:>12}")
    return attach(dataclasses.replace(result, seconds=time.perf_counter() - start), model, prompts)


def cmd_sweep(args: argparse.Namespace) -> int:
    check_outputs(args)
    redis_url = check_shards(args)
    kinds = _kind_list(args.kind)
    if args.save_run and len(kinds) > 1:                     # refused before anything runs or is written
        raise BadInput(f"--save-run writes one run; this sweep has {len(kinds)} kinds ({', '.join(kinds)}); "
                       "run one kind at a time")
    from patching.methods.sweep import sweep
    from patching.core.results import write_csv
    from patching.core.spec import PatchSpec, parse_heads, parse_int_list
    import pandas as pd
    specs = [PatchSpec(kind=k, direction=args.direction, metric=args.metric,
                       per_position=args.per_position and KINDS[k].has_per_position if k in KINDS else args.per_position,
                       layers=parse_int_list(args.layers, "layers"),
                       positions=parse_int_list(args.positions, "positions"),
                       heads=parse_heads(args.heads), model=args.model, prepend_bos=not args.no_bos,
                       saes=args.saes if k == "feature" else None)
             for k in kinds]
    model, prompts = load(args)
    if args.dry_run:
        cli_cost.dry_run_sweep(model, prompts, specs, args)
        return EXIT_OK
    frames, results = [], []
    for spec in specs:
        result = sharded_sweep(model, prompts, spec, args, redis_url) if redis_url else \
            sweep(model, prompts, spec, on_progress=ProgressBar(f"{spec.kind:>12}", quiet=args.quiet),
                  max_memory_mb=args.max_memory)
        frames.append(result.to_dataframe())
        results.append(result)
        if not args.quiet:
            print(f"{spec.kind}: {result.values.numel()} cells in {result.seconds:.2f}s; clean "
                  f"{result.clean_value:.4f}, corrupt {result.corrupt_value:.4f}", file=sys.stderr)
    text = write_csv(pd.concat(frames, ignore_index=True))
    if args.save_run:                        # the run file first: a refused one leaves no CSV behind
        cli_runs.save_run(args.save_run, results, prompts)
    write(text, args.out)
    return EXIT_OK


def cmd_path(args: argparse.Namespace) -> int:
    check_outputs(args)
    redis_url = check_shards(args)
    from patching.methods.path import PathSpec, run_path
    from patching.core.spec import parse_int_list
    spec = PathSpec(receivers=args.receivers, senders=args.senders, sweep=args.sweep, mode=args.mode,
                    direction=args.direction, metric=args.metric, per_position=args.per_position,
                    positions=parse_int_list(args.positions, "positions"),
                    receiver_positions=parse_int_list(args.receiver_positions, "receiver positions"),
                    model=args.model, prepend_bos=not args.no_bos)
    model, prompts = load(args)
    if args.dry_run:
        cli_cost.dry_run_path(model, prompts, spec, args)
        return EXIT_OK
    if redis_url:
        from patching.core.provenance import attach
        result = attach(run_on_shards(model, prompts, spec, args, redis_url, "path"), model, prompts)
    else:
        result = run_path(model, prompts, spec, on_progress=ProgressBar("path", quiet=args.quiet),
                          max_memory_mb=args.max_memory)
    write(result.to_csv(), args.out)
    return EXIT_OK


def cmd_attribution(args: argparse.Namespace) -> int:
    from patching.methods.attribution import attribution_csv, edge_attribution, run_attribution
    from patching.core.spec import parse_int_list
    check_outputs(args)
    redis_url = check_shards(args)
    if redis_url and args.edges:
        raise BadInput("--edges runs one backward for every edge at once; it is not sharded: leave out --shards")
    kinds = tuple(_kind_list(args.kinds, "--kinds")) if args.kinds is not None else None
    model, prompts = load(args)
    if args.dry_run:
        cli_cost.dry_run_attribution(model, prompts, kinds, args)
        return EXIT_OK
    if args.edges:
        edges = edge_attribution(model, prompts, metric=args.metric, direction=args.direction,
                                 method=args.method, steps=args.steps, max_memory_mb=args.max_memory)
        write(edges.to_csv(), args.out)
        return EXIT_OK
    positions = parse_int_list(args.positions, "positions")
    if redis_url:
        results = sharded_attribution(model, prompts, kinds, positions, args, redis_url)
    else:
        results = run_attribution(model, prompts, kinds=kinds, metric=args.metric, direction=args.direction,
                                  method=args.method, steps=args.steps, per_position=args.per_position,
                                  positions=positions, max_memory_mb=args.max_memory, saes=args.saes)
    if args.compare_exact or args.refine is not None:     # the report on stdout; the CSV only to a file
        if args.out != "-":
            write(attribution_csv(results), args.out)
        cli_cost.compare_and_refine(model, prompts, results, args)
        return EXIT_OK
    write(attribution_csv(results), args.out)
    return EXIT_OK


def sharded_attribution(model, prompts, kinds, positions, args: argparse.Namespace, redis_url: str):
    """`attribution --shards N`: the pair batches over the workers (`run_on_shards`), with provenance."""
    from patching.core.provenance import attach
    from patching.methods.attribution import AttributionSpec
    spec = AttributionSpec(kinds=kinds, metric=args.metric, direction=args.direction, method=args.method,
                           steps=args.steps, per_position=args.per_position, positions=positions, saes=args.saes,
                           model=args.model, prepend_bos=not args.no_bos)
    return [attach(r, model, prompts) for r in run_on_shards(model, prompts, spec, args, redis_url, "attribution")]


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="exact activation patching over one or more kinds")
    patch_flags(p)
    p.add_argument("--kind", required=True, help=f"one or more of {', '.join(KINDS)} (comma-separated)")
    p.add_argument("--per-position", action="store_true", help="head kinds: one cell per position too")
    p.add_argument("--layers", help="e.g. 0-5,8 (default: all)")
    p.add_argument("--positions", help="e.g. 3,7 (default: all)")
    p.add_argument("--heads", help="LAYER.HEAD pairs, e.g. 1.4,9.9 (default: all)")
    p.add_argument("--saes", help="kind feature: a folder of sae-lens SAE folders (default: the model's own saes/)")
    cli_cost.add_dry_run(p)
    cli_runs.add_save_run(p)
    shard_flags(p, "the sweep")
    p.set_defaults(func=cmd_sweep)


def _add_path(sub) -> None:
    p = sub.add_parser("path", help="path patching: sender -> receivers, everything else frozen")
    patch_flags(p)
    p.add_argument("--receivers", help="comma-separated receivers: q:L.H, k:L.H, v:L.H, mlp:L or logits "
                   "(default: logits for a senders sweep, everything downstream for a receivers sweep)")
    p.add_argument("--senders", help="comma-separated senders: L.H, head:L.H@POS, mlp:L, resid:L@POS "
                   "(default: every head)")
    p.add_argument("--sweep", default="senders", choices=["senders", "receivers"],
                   help="senders: each sender into the receiver set; receivers: one sender through each receiver")
    p.add_argument("--mode", default="heads_frozen", choices=["heads_frozen", "direct"])
    p.add_argument("--per-position", action="store_true", help="every head x position as senders")
    p.add_argument("--positions", help="sender positions with --per-position, e.g. 3,7 (default: all)")
    p.add_argument("--receiver-positions", help="positions where receivers are patched (default: all)")
    cli_cost.add_dry_run(p)
    shard_flags(p, "the senders (or receivers)")
    p.set_defaults(func=cmd_path)


def _add_attribution(sub) -> None:
    p = sub.add_parser("attribution", help="attribution patching (gradients) for all kinds at once")
    patch_flags(p)
    p.add_argument("--kinds", help="comma-separated kinds (default: all supported)")
    p.add_argument("--method", default="plain", choices=["plain", "ig"])
    p.add_argument("--steps", type=whole(1, 1024), default=16, help="integrated-gradients steps (--method ig)")
    p.add_argument("--per-position", action="store_true", help="head kinds: one cell per position too")
    p.add_argument("--positions", help="neuron kind: positions to attribute at (default: all)")
    p.add_argument("--saes", help="kind feature: a folder of sae-lens SAE folders (default: the model's own saes/)")
    p.add_argument("--edges", action="store_true",
                   help="write EAP edge scores (head/MLP -> head q/k/v, MLP, logits) instead of node scores")
    cli_cost.add_dry_run(p)
    cli_cost.add_compare(p)
    shard_flags(p, "the pairs (in batches)")
    p.set_defaults(func=cmd_attribution)


def add_commands(sub) -> None:
    """Register `sweep`, `path` and `attribution` on the CLI's subparsers (see the module's example)."""
    _add_sweep(sub)
    _add_path(sub)
    _add_attribution(sub)
