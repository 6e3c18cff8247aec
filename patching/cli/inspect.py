"""`python -m patching lens|dla|topk|attention|attention-overview|highlight|norms|heads ...`:
inspection views (nothing is patched) as CSV.

    python -m patching lens --pairs pairs.csv --mode per_layer --k 3
    python -m patching attention-overview --pairs pairs.csv --layers 0,3 --out overview.csv
    python -m patching highlight --pairs pairs.csv --source neuron --layer 1 --neuron 7 --html text.html
    python -m patching highlight --source effect --result run.patchboard.zip --layer 1 --out effect.csv
    python -m patching norms --pairs pairs.csv --all-pairs --out bands.csv
    python -m patching heads --detect previous_token,induction --out heads.csv
    python -m patching dla --clean "..." --corrupt "..." --answer " Mary" --wrong " John"
    python -m patching attention --pairs pairs.csv --layer -1 --heads 0,3

>>> from patching.cli import build_parser
>>> build_parser().parse_args(["dla", "--pairs", "pairs.csv"]).func.function
'direct_logit_attribution'
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from patching.cli.common import (EXIT_OK, BadInput, load, load_model, model_flags, out_flag, pair_flags, whole,
                                 write)

INDEX = whole(-1_000_000, 1_000_000)     # a position / layer / pair; negative counts from the end
from patching.inspect.detectors import DETECTORS, MAX_SEQUENCES


def inspect_flags(p: argparse.ArgumentParser, run: bool = True, pair: bool = True) -> None:
    """Prompt flags of the inspection commands (no metric / direction: nothing is patched).

    >>> inspect_flags(p := argparse.ArgumentParser()); (p.parse_args([]).run, p.parse_args([]).pair)
    ('clean', 0)
    """
    model_flags(p)
    pair_flags(p)
    if run:
        p.add_argument("--run", default="clean", choices=["clean", "corrupt"], help="which prompt to run")
    if pair:
        p.add_argument("--pair", type=INDEX, default=0, help="which prompt pair (default 0)")
    out_flag(p)


def _pair_or_all(value: str, flag: str = "--pair") -> int | None:
    """'all' -> None (every pair), else the pair number.

    >>> _pair_or_all("all"), _pair_or_all("2")
    (None, 2)
    """
    if value == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise BadInput(f"{flag} must be an integer or 'all', not {value!r}") from None


def _heads(text: str | None, flag: str = "--heads") -> list[int] | None:
    """--heads '0,3' -> [0, 3] (also --layers); None when not given.

    >>> _heads("0,3"), _heads("-1", "--layers")
    ([0, 3], [-1])
    """
    if not text:
        return None
    try:
        return [int(h) for h in text.split(",") if h.strip()]
    except ValueError:
        what = "layer" if flag == "--layers" else "head"
        raise BadInput(f"{flag} must be comma-separated {what} numbers, e.g. 0,3, not {text!r}") from None


def _prompt_only(args: argparse.Namespace) -> bool:
    """--clean given without --pairs and without --corrupt (a one-prompt view)."""
    return bool(args.clean) and not args.pairs and args.corrupt is None


def load_one_prompt(args: argparse.Namespace):
    """(model, PromptSet) of the one prompt --clean, with --answer / --wrong when given.

    >>> ns = argparse.Namespace(model="default", device="cpu", dtype="float32", device_map=None, pairs=None,
    ...                         clean="When Mary and John went out, John gave it to", corrupt=None,
    ...                         answer=" Mary", wrong=None, no_bos=False, run="clean")
    >>> load_one_prompt(ns)[1].n_pairs
    1
    """
    from patching.core.prompts import PromptSet
    if getattr(args, "run", "clean") == "corrupt":
        raise BadInput("--run corrupt needs a --corrupt prompt (or --pairs)")
    model = load_model(args)
    return model, PromptSet.prompt(model, args.clean, args.answer, args.wrong, prepend_bos=not args.no_bos)


@dataclass(frozen=True)
class View:
    """One inspection command: a function of `patching.inspect.lens` and its options from the flags.

    Called with the parsed flags, it loads the model and prompts, runs the view and writes its
    DataFrame as CSV to --out.

    >>> View("top_k", lambda a: {"k": a.k}).function
    'top_k'
    """
    function: str                                        # a name in patching.inspect.lens
    options: Callable[[argparse.Namespace], dict]        # flags -> the function's keyword arguments
    one_prompt: bool = False                             # reads one run: --clean alone is enough

    def __post_init__(self):
        if not self.function.isidentifier():
            raise ValueError(f"View.function must be a function name in patching.inspect.lens, not {self.function!r}")

    def __call__(self, args: argparse.Namespace) -> int:
        from patching.inspect import lens
        from patching.core.results import write_csv
        model, prompts = load_one_prompt(args) if self.one_prompt and _prompt_only(args) else load(args)
        df = getattr(lens, self.function)(model, prompts, **self.options(args))
        write(write_csv(df), args.out)
        return EXIT_OK


def detector_names(text: str) -> tuple[str, ...]:
    """--detect 'previous_token, induction' -> ('previous_token', 'induction').

    >>> detector_names("previous_token, induction")
    ('previous_token', 'induction')
    """
    return tuple(name.strip() for name in text.split(",") if name.strip())


def cmd_heads(args: argparse.Namespace) -> int:
    from patching.core.results import write_csv
    from patching.inspect.detectors import DetectorSpec, head_scores
    spec = DetectorSpec(detector_names(args.detect), n_sequences=args.n, half_length=args.half_length,
                        seed=args.seed)                        # a bad value: ValueError -> exit 2
    write(write_csv(head_scores(load_model(args), spec)), args.out)
    return EXIT_OK


def cmd_norms(args: argparse.Namespace) -> int:
    """`norms`: one pair's (or every pair's) norms, or with --all-pairs the mean ± std bands."""
    if args.all_pairs:
        if args.pair != "0":
            raise BadInput("--all-pairs summarises every pair; leave out --pair")
        return View("residual_norm_bands", lambda a: {})(args)
    return View("residual_norms", lambda a: dict(pair=_pair_or_all(a.pair)))(args)


def _highlight_frame(args: argparse.Namespace):
    """The highlight's DataFrame: a run file's effect (--source effect), else a forward of the prompt."""
    from patching.inspect.highlight import HighlightSpec, effect_values, highlight_values
    if args.source == "effect":
        if not args.result:
            raise BadInput("--source effect needs --result RUN.patchboard.zip (a per-position sweep saved with "
                           "`sweep --per-position --save-run` or exported from the dashboard)")
        from patching.runs.bundle import read_bundle
        return effect_values(read_bundle(args.result).result, layer=args.layer, head=args.head)
    if args.result:
        raise BadInput(f"--result is read by --source effect only, not --source {args.source}")
    spec = HighlightSpec(args.source, layer=args.layer, neuron=args.neuron, head=0 if args.head is None else args.head,
                         dest=args.dest, run=args.run, pair=args.pair)
    model, prompts = load_one_prompt(args) if _prompt_only(args) else load(args)
    return highlight_values(model, prompts, spec)


def cmd_highlight(args: argparse.Namespace) -> int:
    from patching.core.results import write_csv
    from patching.figures.highlight import highlight_html
    df = _highlight_frame(args)
    if args.html:
        write(highlight_html(df, mark=int(df.pos.iloc[args.dest]) if args.source == "attention" else None),
              args.html)
    write(write_csv(df), args.out)
    return EXIT_OK


def _add_views(sub) -> None:
    """`attention-overview`, `highlight` (issue #20's views)."""
    from patching.inspect.highlight import SOURCES
    p = sub.add_parser("attention-overview", help="every layer's and head's attention pattern of one prompt "
                                                  "(dest x src, one forward)")
    inspect_flags(p)
    p.add_argument("--layers", help="comma-separated layers, e.g. 0,3 (default: all; negative counts from the end)")
    p.set_defaults(func=View("attention_overview",
                             lambda a: dict(run=a.run, pair=a.pair, layers=_heads(a.layers, "--layers")),
                             one_prompt=True))

    p = sub.add_parser("highlight", help="one value per token of a prompt (a neuron, a head's output norm, an "
                                         "attention row, a sweep's effect), as CSV and optionally HTML")
    inspect_flags(p)
    p.add_argument("--source", default="neuron", choices=list(SOURCES),
                   help="; ".join(f"{k}: {v}" for k, v in SOURCES.items()))
    p.add_argument("--layer", type=INDEX, default=0, help="the layer (default 0)")
    p.add_argument("--neuron", type=INDEX, default=0, help="--source neuron: the neuron (default 0)")
    p.add_argument("--head", type=INDEX, default=None, help="head_norm, attention (default 0) and a head kind's effect")
    p.add_argument("--dest", type=INDEX, default=-1, help="--source attention: the destination position (default -1)")
    p.add_argument("--result", help="--source effect: a run file of a per-position sweep (.patchboard.zip)")
    p.add_argument("--html", help="also write the highlighted text as an HTML fragment to this file")
    p.set_defaults(func=cmd_highlight)


def add_commands(sub) -> None:
    """Register `lens`, `dla`, `topk`, `attention`, `attention-overview`, `highlight`, `norms` and
    `heads` (see the module's example)."""
    p = sub.add_parser("lens", help="logit lens: each layer's (or component's) prediction at every position")
    inspect_flags(p)
    p.add_argument("--mode", default="accumulated", choices=["accumulated", "per_layer"],
                   help="accumulated: the residual stream after each layer; per_layer: each block's "
                        "and head's direct contribution")
    p.add_argument("--k", type=int, default=1, help="top tokens per cell (default 1)")
    p.set_defaults(func=View("logit_lens", lambda a: dict(run=a.run, pair=a.pair, mode=a.mode, k=a.k),
                             one_prompt=True))

    p = sub.add_parser("dla", help="direct logit attribution of answer - wrong per layer and head")
    inspect_flags(p, pair=False)
    p.add_argument("--pair", default="all", help="a pair number, or all (default: the mean over pairs)")
    p.add_argument("--pos", type=INDEX, default=-1, help="position (default -1: the last)")
    p.set_defaults(func=View("direct_logit_attribution",
                             lambda a: dict(run=a.run, pair=_pair_or_all(a.pair), pos=a.pos)))

    p = sub.add_parser("topk", help="the k most likely next tokens at one position")
    inspect_flags(p)
    p.add_argument("--pos", type=INDEX, default=-1, help="position (default -1: the last)")
    p.add_argument("--k", type=int, default=10, help="how many tokens (default 10)")
    p.set_defaults(func=View("top_k", lambda a: dict(run=a.run, pos=a.pos, k=a.k, pair=a.pair), one_prompt=True))

    p = sub.add_parser("attention", help="every head's attention pattern of one layer (dest x src)")
    inspect_flags(p)
    p.add_argument("--layer", type=INDEX, required=True, help="the layer (negative counts from the end)")
    p.add_argument("--heads", help="comma-separated heads, e.g. 0,3 (default: all)")
    p.set_defaults(func=View("attention_patterns",
                             lambda a: dict(layer=a.layer, run=a.run, pair=a.pair, heads=_heads(a.heads)),
                             one_prompt=True))

    _add_views(sub)

    p = sub.add_parser("norms", help="residual stream L2 norms by layer and position, clean and corrupt")
    inspect_flags(p, run=False, pair=False)
    p.add_argument("--pair", default="0", help="a pair number (default 0), or all")
    p.add_argument("--all-pairs", action="store_true",
                   help="mean and std over the set's pairs per depth and position (columns run,depth,layer,stage,"
                        "label,pos,token,mean,std,n_pairs; a set of mixed lengths by role)")
    p.set_defaults(func=cmd_norms)

    p = sub.add_parser("heads", help="head detectors: previous-token, duplicate-token and induction scores "
                                     "(columns layer,head,detector,score)")
    model_flags(p)
    p.add_argument("--detect", default=",".join(DETECTORS),
                   help=f"comma-separated detectors (default: all of {', '.join(DETECTORS)})")
    p.add_argument("--n", type=whole(1, MAX_SEQUENCES), default=32, help="random sequences (default 32)")
    p.add_argument("--half-length", type=whole(2, 4096), default=20,
                   help="tokens in each sequence's half; the sequence is BOS + the half twice (default 20)")
    p.add_argument("--seed", type=whole(0, 2**32 - 1), default=0, help="the sequences' seed (default 0)")
    out_flag(p)
    p.set_defaults(func=cmd_heads)
