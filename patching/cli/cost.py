"""CLI pieces for the cost preview and the exact-vs-attribution check (used by `cli.py`).

    python -m patching sweep ... --kind resid_pre,head_out --dry-run [--json]
    python -m patching path ... --dry-run [--json]
    python -m patching attribution ... --dry-run [--json]
    python -m patching attribution ... --kinds head_out --compare-exact [--json] [--out attribution.csv]
    python -m patching attribution ... --kinds head_out --refine 5 [--json]

`--dry-run` prints the estimate and exits 0 without running anything but the two cached forwards
the estimate needs. `--compare-exact` runs the exact sweep of each kind and prints each kind's
agreement and its flagged cells (missed / invented); `--refine K` runs exact patching of each
kind's top-K attribution cells only and prints them next to their estimates. With either, the
report goes to stdout and the attribution CSV is written only to an --out file.
"""
from __future__ import annotations

import json
import sys


def add_dry_run(p) -> None:
    p.add_argument("--dry-run", action="store_true",
                   help="print the cost estimate (patched forwards, forward-equivalents, seconds, peak memory) "
                        "and exit without running")
    p.add_argument("--json", action="store_true", help="with --dry-run, --compare-exact or --refine: JSON output")


def add_compare(p) -> None:
    p.add_argument("--compare-exact", action="store_true",
                   help="also run exact patching of each kind and print the cells attribution misses or invents")
    p.add_argument("--refine", type=int, metavar="K",
                   help="also run exact patching of each kind's top-K attribution cells only and print them")


def _print_estimates(estimates: list, as_json: bool, out=None) -> None:
    out = out or sys.stdout
    if as_json:
        out.write(json.dumps([e.to_dict() for e in estimates], indent=2) + "\n")
        return
    for e in estimates:
        out.write(f"{e.kind}: {e.text()}\n")
    if len(estimates) > 1:
        total = sum(e.seconds for e in estimates)
        out.write(f"total: ≈ {sum(e.patched_rows for e in estimates):,} patched forwards, ≈ {total:.1f} s\n")


def dry_run_sweep(model, prompts, specs, args) -> None:
    from patching.methods.cost import calibrate, estimate_cost
    cal = calibrate(model, prompts)
    _print_estimates([estimate_cost(model, prompts, s, calibration=cal, max_memory_mb=args.max_memory)
                      for s in specs], args.json)


def dry_run_path(model, prompts, spec, args) -> None:
    from patching.methods.cost import estimate_path_cost
    _print_estimates([estimate_path_cost(model, prompts, spec, max_memory_mb=args.max_memory)], args.json)


def dry_run_attribution(model, prompts, kinds, args) -> None:
    from patching.methods.cost import estimate_attribution_cost
    _print_estimates([estimate_attribution_cost(model, prompts, kinds, method=args.method, steps=args.steps,
                                                per_position=args.per_position, edges=args.edges)], args.json)


def compare_and_refine(model, prompts, results, args, out=None) -> None:
    """--compare-exact and --refine K for each attribution result, printed (text or JSON)."""
    out = out or sys.stdout
    from patching.methods.compare import cell_label, compare_cells
    from patching.methods.sweep import sweep
    from patching.methods.refine import refine, top_cells
    if args.refine is not None and args.refine < 1:
        raise ValueError(f"--refine must be a whole number >= 1, not {args.refine}")
    report = []
    for r in results:
        entry = {"kind": r.spec.kind}
        if args.compare_exact:
            a = compare_cells(sweep(model, prompts, r.spec, max_memory_mb=args.max_memory), r)
            entry.update(summary=a.summary(), pearson=a.pearson, spearman=a.spearman, topk_overlap=a.topk_overlap,
                         k=a.k, scale=a.scale, large=a.large, small=a.small, counts=a.counts(),
                         flagged=[{"label": c.label, "cell": list(c.cell), "flag": c.flag, "exact": c.exact,
                                   "approx": c.approx} for c in a.flagged()])
        if args.refine is not None:
            refined = refine(model, prompts, r, args.refine, max_memory_mb=args.max_memory)
            rows = []
            for cell in top_cells(r, args.refine):
                idx = tuple(r.coords[a].index(c) for a, c in zip(r.axes, cell))
                rows.append({"label": cell_label(r, cell), "cell": list(cell),
                             "approx": float(r.values[idx]), "exact": float(refined.values[idx])})
            entry["refined"] = rows
            entry["refine_seconds"] = refined.seconds
        report.append(entry)
    if args.json:
        out.write(json.dumps(report, indent=2) + "\n")
        return
    for e in report:
        if "summary" in e:
            out.write(f"{e['summary']}\n")
            out.write(f"  flags: missed = |exact effect| >= {e['large']:g} x {e['scale']:.4g} (the largest) and "
                      f"the estimate < {e['small']:g} x that or of the other sign; invented = the reverse\n")
            for c in e["flagged"]:
                out.write(f"  {c['flag']:<8} {c['label']:<24} exact {c['exact']:+.4f}  approx {c['approx']:+.4f}\n")
        if "refined" in e:
            out.write(f"{e['kind']}: exact patching of the top {len(e['refined'])} attribution cells "
                      f"({e['refine_seconds']:.2f} s)\n")
            for c in e["refined"]:
                out.write(f"  {c['label']:<24} attribution {c['approx']:+.4f}  exact {c['exact']:+.4f}\n")
