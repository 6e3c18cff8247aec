"""Heatmaps for the default model's card, from Patchboard's own engine, rendered in headless Chromium.

    python scripts/model_card_figures.py [--n 32] [--out assets/models/patchboard-tiny]

Writes ioi_head_out.png (layer x head) and ioi_head_out_per_pos.png (layer.head x position),
denoise, normalized, over n held-out IOI pairs of one token length; prints the top heads.
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

from dashboard import figures                              # noqa: E402
from patching import PatchSpec, PromptSet, load_model, sweep   # noqa: E402
from patching.tasks import make_pairs                      # noqa: E402


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
    ap.add_argument("--out", type=Path, default=ROOT / "assets" / "models" / "patchboard-tiny")
    args = ap.parse_args(argv)
    model = load_model("default", device="cpu")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
