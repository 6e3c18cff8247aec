"""`python -m patching models|eval`: what can be loaded here, and the shipped model's task scores.

    python -m patching models [--json]
    python -m patching eval --json [--n 200] [--model default]

>>> from patching.cli import build_parser
>>> build_parser().parse_args(["eval", "--n", "5"]).n
5
"""
from __future__ import annotations

import argparse
import json

from patching.cli.common import EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from patching.model.loading import available_models
    rows = available_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no models found: the default model is missing from assets/models and the Hugging Face cache is empty")
    for r in rows:
        flag = "" if r["safetensors"] else "  (no safetensors weights: cannot load)"
        print(f"{r['name']:<40} {r['source']:<9} {r['path']}{flag}")
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from patching.tasks.evaluate import evaluate, format_table
    from patching.model.loading import resolve_model
    where = resolve_model(args.model)
    scores = evaluate(str(where), n=args.n)
    print(json.dumps(scores, indent=2) if args.json else format_table(scores))
    return EXIT_OK


def add_commands(sub) -> None:
    """Register `models` and `eval` (see the module's example)."""
    p = sub.add_parser("models", help="what can be loaded here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("eval", help="the model's scores on the held-out task items")
    p.add_argument("--model", default="default")
    p.add_argument("--n", type=int, default=200, help="items per task")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)
