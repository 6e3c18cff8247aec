"""Which SAE features carry the shipped model's IOI and induction behaviour? One command, seeded:

    PYTHONPATH=. python scripts/feature_circuits.py [--n 16] [--out docs/feature-circuits.json]

Per task (the preset's first n pairs of one length, denoise, logit_diff), for two ablations of
the units not kept -- `mean` (over the corrupt prompts) and `corrupt` (the pair's own corrupt
prompt: only what differs between the two prompts is removed):
- the exact feature sweep (every feature and error node of every layer): the top features and the
  error nodes by effect, as a share of the clean - corrupt gap;
- attribution's agreement with it (Pearson r, Spearman, top-10 overlap, flags);
- the faithfulness of feature circuits of the top k features by |exact effect| (k = 5, 10, 20),
  without the error nodes (every error ablated) and with them (every layer's error node kept),
  and of the error nodes alone; and the curve further out (k up to every feature), to see how
  many features a faithful feature circuit needs.
Prints a table and writes the numbers as JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from patching import PatchSpec, PromptSet, load_model, sweep
from patching.methods.attribution import run_attribution
from patching.methods.circuit import CircuitSpec, Component, faithfulness, faithfulness_curve, rank_components
from patching.methods.compare import compare_cells
from patching.tasks.presets import runnable_pairs

TASKS = ("ioi", "induction")
KS = (5, 10, 20)
ABLATIONS = ("mean", "corrupt")
CURVE_KS = (0, 5, 10, 20, 50, 100, 200, 500, 1000, 1500)   # + every feature


def measure(model, task: str, n: int) -> dict:
    """The numbers of one task (module doc)."""
    prompts = PromptSet.from_pairs(model, runnable_pairs(model, task, n))
    exact = sweep(model, prompts, PatchSpec(kind="feature", model=model.name))
    gap = float(exact.clean_value - exact.corrupt_value)
    ranked = rank_components(exact)
    features = [(c, e) for c, e in ranked if c.kind == "feature"]
    errors = [Component(layer, "error") for layer in range(model.n_layers)]
    effect = dict(ranked)
    (estimate,) = run_attribution(model, prompts, kinds=["feature"])
    agree = compare_cells(exact, estimate)
    ks = tuple(k for k in CURVE_KS if k < len(features)) + (len(features),)
    circuits, errors_only, curve = {}, {}, {}
    for ablation in ABLATIONS:
        circuits[ablation] = {}
        for k in KS:
            top = [c for c, _ in features[:k]]
            without = faithfulness(model, prompts, CircuitSpec(top, ablation)).faithfulness
            with_err = faithfulness(model, prompts, CircuitSpec(top + errors, ablation)).faithfulness
            circuits[ablation][k] = {"features": [c.name for c in top], "without_errors": without,
                                     "with_errors": with_err}
        errors_only[ablation] = faithfulness(model, prompts, CircuitSpec(errors, ablation)).faithfulness
        curve[ablation] = {}
        for name, keep in (("without_errors", ()), ("with_errors", errors)):
            c = faithfulness_curve(model, prompts, features, ks=ks, keep=keep, ablation=ablation)
            curve[ablation][name] = dict(zip(map(str, ks), c.faithfulness))
    return {"task": task, "n_pairs": prompts.n_pairs, "clean": float(exact.clean_value),
            "corrupt": float(exact.corrupt_value), "gap": gap,
            "top_features": [{"unit": c.name, "effect": e, "share_of_gap": e / gap} for c, e in features[:10]],
            "error_nodes": [{"unit": c.name, "effect": effect[c], "share_of_gap": effect[c] / gap} for c in errors],
            "attribution": {"pearson": agree.pearson, "spearman": agree.spearman, "topk_overlap": agree.topk_overlap,
                            "k": agree.k, **agree.counts()},
            "circuits": circuits, "errors_only": errors_only, "curve": curve, "seconds_exact": exact.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="pairs per task (default 16)")
    parser.add_argument("--out", default="docs/feature-circuits.json", help="where the JSON goes")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = load_model("default", device="cpu")
    start = time.perf_counter()
    out = [measure(model, task, args.n) for task in TASKS]
    for r in out:
        print(f"\n{r['task']}: {r['n_pairs']} pairs, gap {r['gap']:.3f}")
        print("  top features: " + ", ".join(f"{f['unit']} {f['share_of_gap']:+.3f}" for f in r["top_features"]))
        print("  error nodes:  " + ", ".join(f"{f['unit']} {f['share_of_gap']:+.3f}" for f in r["error_nodes"]))
        a = r["attribution"]
        print(f"  attribution vs exact: Pearson {a['pearson']:.3f}, Spearman {a['spearman']:.3f}, "
              f"top-{a['k']} overlap {a['topk_overlap']:.2f}, {a['missed']} missed, {a['invented']} invented")
        for ablation in ABLATIONS:
            print(f"  {ablation} ablation:")
            for k, c in r["circuits"][ablation].items():
                print(f"    top {k:>2} features: faithfulness {c['without_errors']:+.3f} without error nodes, "
                      f"{c['with_errors']:+.3f} with them")
            print(f"    error nodes alone: {r['errors_only'][ablation]:+.3f}")
            for name, points in r["curve"][ablation].items():
                print(f"    curve {name}: " + ", ".join(f"k={k} {v:+.3f}" for k, v in points.items()))
    Path(args.out).write_text(json.dumps({"model": "default", "ablations": list(ABLATIONS), "direction": "denoise",
                                          "metric": "logit_diff", "tasks": out,
                                          "seconds": time.perf_counter() - start}, indent=1) + "\n")
    print(f"\nwrote {args.out} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
