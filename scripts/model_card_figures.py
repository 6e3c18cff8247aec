"""Heatmaps for the default model's card, from Patchboard's own engine, rendered in headless Chromium.

    python scripts/model_card_figures.py [--n 32] [--out assets/models/patchboard-tiny]
    python scripts/model_card_figures.py --model patchboard-circuits --out assets/models/patchboard-circuits

Writes ioi_head_out.png (layer x head) and ioi_head_out_per_pos.png (layer.head x position),
denoise, normalized, over n held-out IOI pairs of one token length; prints the top heads, then
the numbers the card quotes: path patching of the top head (into the logits, both modes, and
through each receiver) and the faithfulness of the top-k heads (mean ablation, MLPs kept).
With ``--mechanisms`` also: the engine's head detectors, the strongest K- and V-compositions,
induction_head_out.png (head_out on held-out induction pairs), path patching from every head
into each induction head's keys on pairs that change only the token before the answer's first
occurrence (induction_keys_path.png: all of them together), and from each top layer-0 IOI head
into every receiver.
"""
from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from patching import PatchSpec, PromptSet, figures, load_model, sweep   # noqa: E402
from patching.methods.circuit import (CircuitSpec, all_components, faithfulness,  # noqa: E402
                              faithfulness_curve, rank_components)
from patching.methods.path import PathSpec, run_path               # noqa: E402
from patching.tasks.families import induction_key_pair, make_pairs  # noqa: E402


def render(fig, path: Path, width=900, height=520) -> None:
    from playwright.sync_api import sync_playwright
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "fig.html"
        fig.write_html(html, include_plotlyjs=True, full_html=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(html.as_uri())
            page.wait_for_selector(".main-svg")
            page.screenshot(path=str(path))
            browser.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--model", default="default", help="the model to analyse (default: default)")
    ap.add_argument("--out", type=Path, default=ROOT / "assets" / "models" / "patchboard-tiny")
    ap.add_argument("--mechanisms", action="store_true",
                    help="also detectors, composition scores and induction / IOI path patching")
    args = ap.parse_args(argv)
    model = load_model(args.model, device="cpu")
    pairs = make_pairs("ioi", 4 * args.n, split="eval", seed=0)
    by_len = collections.defaultdict(list)
    for p in pairs:
        by_len[len(model.encode(p.clean))].append(p)
    group = max(by_len.values(), key=len)[: args.n]
    prompts = PromptSet.from_pairs(model, group)
    for name, spec in (("ioi_head_out", PatchSpec(kind="head_out")),
                       ("ioi_head_out_per_pos", PatchSpec(kind="head_out", per_position=True))):
        result = sweep(model, prompts, spec)
        fig = figures.heatmap(result, mode="normalized")
        render(fig, args.out / f"{name}.png", height=420 if not spec.per_position else 560)
        norm = result.normalized
        flat = [(float(norm[idx]), idx) for idx in zip(*[t.tolist() for t in norm.isfinite().nonzero(as_tuple=True)])]
        flat.sort(key=lambda t: -abs(t[0]))
        print(f"{name}: {prompts.n_pairs} pairs, clean {result.clean_value:.2f}, corrupt {result.corrupt_value:.2f}; top:",
              ", ".join(f"{tuple(result.coords[a][i] for a, i in zip(result.axes, idx))}={v:+.2f}" for v, idx in flat[:5]))
        if not spec.per_position:
            heads = result
    circuit_numbers(model, prompts, heads)
    if args.mechanisms:
        mechanism_numbers(model, prompts, heads, args.out, args.n)
    return 0


def same_length_pairs(model, task: str, n: int, transform=None) -> list:
    """n held-out pairs of one task (each passed through ``transform`` if given), all of the
    most common token length."""
    by_len = collections.defaultdict(list)
    for p in make_pairs(task, 8 * n, split="eval", seed=0):
        p = transform(p) if transform else p
        by_len[len(model.encode(p.clean))].append(p)
    return max(by_len.values(), key=len)[:n]


def same_length_prompts(model, task: str, n: int, transform=None) -> PromptSet:
    return PromptSet.from_pairs(model, same_length_pairs(model, task, n, transform))


def write_pairs_csv(pairs, path: Path) -> None:
    """The pairs as the CSV the CLI's --pairs and the dashboard's upload read."""
    import csv
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clean", "corrupt", "answer", "wrong"])
        w.writerows([p.clean, p.corrupt, p.answer, p.wrong] for p in pairs)


def _top(values, labels, k=5) -> str:
    best = sorted(((v, label) for v, label in zip(values, labels) if v == v), key=lambda t: -abs(t[0]))[:k]
    return ", ".join(f"{label}={v:+.2f}" for v, label in best)


def mechanism_numbers(model, ioi_prompts, ioi_heads, out: Path, n: int) -> None:
    """Detectors, compositions, and path patching for induction and IOI, printed."""
    from patching.inspect.detectors import head_scores
    from patching.inspect.weights import composition_scores

    scores = head_scores(model)
    for name, group in scores.groupby("detector", sort=False):
        top = group.nlargest(3, "score")
        print(f"detector {name}: " + ", ".join(f"L{r.layer}H{r.head}={r.score:.2f}" for r in top.itertuples()))
    comp = composition_scores(model)
    for kind in ("k", "q", "v"):
        top = comp[comp.composition == kind].nlargest(4, "score")
        print(f"{kind}-composition top: " + ", ".join(f"{r.src_label}->{r.dst_label}={r.score:.2f}"
                                                       for r in top.itertuples()))
    induction = scores[scores.detector == "induction"].nlargest(1, "score").iloc[0]
    prompts = same_length_prompts(model, "induction", n)
    result = sweep(model, prompts, PatchSpec(kind="head_out"))
    render(figures.heatmap(result, mode="normalized"), out / "induction_head_out.png", height=420)
    labels = [f"L{layer}H{head}" for layer in range(model.n_layers) for head in range(model.n_heads)]
    print(f"induction head_out: {prompts.n_pairs} pairs, clean {result.clean_value:.2f}, corrupt "
          f"{result.corrupt_value:.2f}; top: {_top(result.normalized.flatten().tolist(), labels)}")
    if induction["layer"] == 0:
        print("path into the induction head's keys: none (the top induction head is in layer 0)")
    else:
        # keys-only pairs: the corrupt prompt changes only the token before the answer's first
        # occurrence, so the induction head's values are the same and only its keys differ
        key_pairs = same_length_pairs(model, "induction", n, transform=induction_key_pair)
        write_pairs_csv(key_pairs, out / "induction_key_pairs.csv")
        keys = PromptSet.from_pairs(model, key_pairs)
        layer = int(induction["layer"])
        heads = scores[(scores.detector == "induction") & (scores.layer == layer) & (scores.score >= 0.5)]
        receivers = tuple(f"k:{layer}.{int(h)}" for h in heads["head"])
        for receiver in receivers:
            r = run_path(model, keys, PathSpec(receivers=(receiver,)))
            print(f"path every head -> {receiver} (induction key pairs, {keys.n_pairs}): "
                  f"{_top(r.normalized.flatten().tolist(), labels)}")
        r = run_path(model, keys, PathSpec(receivers=receivers))
        render(figures.heatmap(r, mode="normalized"), out / "induction_keys_path.png", height=420)
        print(f"path every head -> {', '.join(receivers)} together (clean {r.clean_value:.2f}, corrupt "
              f"{r.corrupt_value:.2f}): {_top(r.normalized.flatten().tolist(), labels)}")
    ranked = [c for c, _ in rank_components(ioi_heads) if c.kind == "head" and c.layer == 0][:2]
    for c in ranked:
        r = run_path(model, ioi_prompts, PathSpec(senders=(f"head:{c.layer}.{c.head}",), sweep="receivers"))
        rec = [r.receiver_labels[i] for i in r.coords["receiver"]]
        print(f"path {c} -> each receiver (IOI, heads_frozen), top: {_top(r.normalized.flatten().tolist(), rec)}")


def circuit_numbers(model, prompts, heads) -> None:
    """Path patching of the top head and faithfulness of the top-k heads, printed."""
    ranked = [(c, e) for c, e in rank_components(heads) if c.kind == "head"]
    top = ranked[0][0]
    sender = f"head:{top.layer}.{top.head}"
    for mode in ("heads_frozen", "direct"):
        r = run_path(model, prompts, PathSpec(senders=(sender,), mode=mode))
        print(f"path {top} -> logits ({mode}): {float(r.normalized.flatten()[0]):+.2f} normalized")
    r = run_path(model, prompts, PathSpec(senders=(sender,), sweep="receivers"))
    norm = r.normalized.flatten().tolist()
    labels = [r.receiver_labels[i] for i in r.coords["receiver"]]
    best = sorted(((v, label) for v, label in zip(norm, labels) if v == v), key=lambda t: -abs(t[0]))[:5]
    print(f"path {top} -> each receiver (heads_frozen), top:",
          ", ".join(f"{label}={v:+.2f}" for v, label in best))
    mlps = [c for c in all_components(model) if c.kind == "mlp"]
    for ablation in ("mean", "resample"):
        curve = faithfulness_curve(model, prompts, ranked[:8], ablation=ablation, keep=mlps)
        print(f"faithfulness, top-k heads by head_out effect + every MLP ({ablation} ablation): " +
              ", ".join(f"k={k}: {f:.2f}" for k, f in zip(curve.ks, curve.faithfulness)))
    for ablation in ("mean", "resample"):
        spec = CircuitSpec(tuple(c for c, _ in ranked[:3]) + tuple(mlps[:1]), ablation=ablation)
        res = faithfulness(model, prompts, spec)
        print(f"faithfulness of {', '.join(str(c) for c in spec.components)} alone ({ablation}): "
              f"{res.faithfulness:.2f} (m_circuit {res.m_circuit:.2f}, full {res.m_full:.2f}, "
              f"empty {res.m_empty:.2f})")


if __name__ == "__main__":
    sys.exit(main())
