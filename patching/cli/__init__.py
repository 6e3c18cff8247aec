"""`python -m patching ...`: sweep, path, attribution, lens, dla, topk, attention, norms, models, bench, eval.

Exit codes: 0 ok, 2 bad input (one line on stderr naming the problem), 1 internal error.

>>> main(["sweep", "--model", "default", "--clean", "...", "--corrupt", "...",
...       "--answer", " Mary", "--wrong", " John", "--kind", "resid_pre", "--out", "-"])  # doctest: +SKIP
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from patching.kinds import KINDS

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):          # argparse's own errors: one line, exit 2
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see `python -m patching {self.prog.split()[-1]} --help`)\n")


class ProgressBar:
    """A progress bar on stderr, shown only once a sweep has run for more than a second."""

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


# -- shared argument groups ------------------------------------------------------------------------
def _model_args(p):
    p.add_argument("--model", default="default", help="default | a hub name | a local directory")
    p.add_argument("--device", default="auto", help="auto (default: CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device-map", default=None, metavar="auto",
                   help="spread a large model over the GPUs, the CPU and disk (accelerate); the engine "
                        "runs each module where it is placed")


def _prompt_args(p):
    p.add_argument("--clean", help="the clean prompt")
    p.add_argument("--corrupt", help="the corrupted prompt (same token length)")
    p.add_argument("--answer", help="the clean answer token, e.g. ' Mary'")
    p.add_argument("--wrong", help="the corrupt answer token, e.g. ' John'")
    p.add_argument("--pairs", help="a CSV with columns clean,corrupt,answer,wrong")
    p.add_argument("--no-bos", action="store_true", help="do not prepend the BOS token")
    p.add_argument("--metric", default="logit_diff",
                   help="logit_diff (default), prob_diff, logprob, kl, accuracy, or package.module:function")
    p.add_argument("--direction", default="denoise", choices=["denoise", "noise"])
    p.add_argument("--max-memory", type=float, default=None, metavar="MB",
                   help="memory budget for a batch of patched runs (default: a share of the memory "
                        "free on the device)")
    p.add_argument("--out", default="-", help="output CSV path, or - for stdout (default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _load(args):
    from patching.model.loading import load_model
    from patching.core.prompts import PromptSet
    model = load_model(args.model, device=args.device, dtype=args.dtype,
                       device_map=getattr(args, "device_map", None))
    if args.pairs:
        if any(getattr(args, k) for k in ("clean", "corrupt", "answer", "wrong")):
            raise BadInput("give either --pairs or --clean/--corrupt/--answer/--wrong, not both")
        prompts = PromptSet.from_csv(model, Path(args.pairs),      # streamed, whatever its suffix
                                     prepend_bos=not args.no_bos)
    else:
        missing = [f"--{k}" for k in ("clean", "corrupt", "answer", "wrong") if getattr(args, k) is None]
        if missing:
            raise BadInput(f"missing {', '.join(missing)}; give all four, or --pairs pairs.csv")
        prompts = PromptSet.single(model, args.clean, args.corrupt, args.answer, args.wrong,
                                   prepend_bos=not args.no_bos)
    return model, prompts


def _write(text: str, out: str) -> None:
    if out == "-":
        sys.stdout.write(text)
        return
    try:
        with open(out, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    except OSError as exc:
        raise BadInput(f"cannot write {out!r}: {exc.strerror}") from None


# -- commands ----------------------------------------------------------------------------------------
def cmd_sweep(args) -> int:
    from patching.methods.sweep import sweep
    from patching.core.results import write_csv
    from patching.core.spec import PatchSpec, parse_heads, parse_int_list
    import pandas as pd
    kinds = [k.strip() for k in args.kind.split(",") if k.strip()]
    specs = [PatchSpec(kind=k, direction=args.direction, metric=args.metric,
                       per_position=args.per_position and KINDS[k].has_per_position if k in KINDS else args.per_position,
                       layers=parse_int_list(args.layers, "layers"),
                       positions=parse_int_list(args.positions, "positions"),
                       heads=parse_heads(args.heads), model=args.model, prepend_bos=not args.no_bos)
             for k in kinds]
    model, prompts = _load(args)
    if args.dry_run:
        from patching.cli import cost as cli_cost
        cli_cost.dry_run_sweep(model, prompts, specs, args)
        return EXIT_OK
    frames, results = [], []
    for spec in specs:
        result = sweep(model, prompts, spec, on_progress=ProgressBar(f"{spec.kind:>12}", quiet=args.quiet),
                       max_memory_mb=args.max_memory)
        frames.append(result.to_dataframe())
        results.append(result)
        if not args.quiet:
            print(f"{spec.kind}: {result.values.numel()} cells in {result.seconds:.2f}s; clean "
                  f"{result.clean_value:.4f}, corrupt {result.corrupt_value:.4f}", file=sys.stderr)
    _write(write_csv(pd.concat(frames, ignore_index=True)), args.out)
    if args.save_run:
        from patching.cli import runs as cli_share
        cli_share.save_run(args.save_run, results, prompts)
    return EXIT_OK


def cmd_models(args) -> int:
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


def cmd_eval(args) -> int:
    from patching.tasks.evaluate import evaluate, format_table
    from patching.model.loading import resolve_model
    where = resolve_model(args.model)
    scores = evaluate(str(where), n=args.n)
    print(json.dumps(scores, indent=2) if args.json else format_table(scores))
    return EXIT_OK


def cmd_bench(args) -> int:
    from patching.bench.sweeps import run_bench
    run_bench(quick=args.quick, models=args.models.split(","), out=sys.stdout)
    return EXIT_OK


def cmd_path(args) -> int:
    from patching.methods.path import PathSpec, run_path
    from patching.core.spec import parse_int_list
    spec = PathSpec(receivers=args.receivers, senders=args.senders, sweep=args.sweep, mode=args.mode,
                    direction=args.direction, metric=args.metric, per_position=args.per_position,
                    positions=parse_int_list(args.positions, "positions"),
                    receiver_positions=parse_int_list(args.receiver_positions, "receiver positions"),
                    model=args.model, prepend_bos=not args.no_bos)
    model, prompts = _load(args)
    if args.dry_run:
        from patching.cli import cost as cli_cost
        cli_cost.dry_run_path(model, prompts, spec, args)
        return EXIT_OK
    result = run_path(model, prompts, spec, on_progress=ProgressBar("path", quiet=args.quiet),
                      max_memory_mb=args.max_memory)
    _write(result.to_csv(), args.out)
    return EXIT_OK


def cmd_attribution(args) -> int:
    from patching.methods.attribution import attribution_csv, edge_attribution, run_attribution
    from patching.core.spec import parse_int_list
    model, prompts = _load(args)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip()) if args.kinds else None
    if args.dry_run:
        from patching.cli import cost as cli_cost
        cli_cost.dry_run_attribution(model, prompts, kinds, args)
        return EXIT_OK
    if args.edges:
        edges = edge_attribution(model, prompts, metric=args.metric, direction=args.direction,
                                 method=args.method, steps=args.steps, max_memory_mb=args.max_memory)
        _write(edges.to_csv(), args.out)
        return EXIT_OK
    results = run_attribution(model, prompts, kinds=kinds, metric=args.metric, direction=args.direction,
                              method=args.method, steps=args.steps, per_position=args.per_position,
                              positions=parse_int_list(args.positions, "positions"), max_memory_mb=args.max_memory)
    if args.compare_exact or args.refine is not None:     # the report on stdout; the CSV only to a file
        from patching.cli import cost as cli_cost
        if args.out != "-":
            _write(attribution_csv(results), args.out)
        cli_cost.compare_and_refine(model, prompts, results, args)
        return EXIT_OK
    _write(attribution_csv(results), args.out)
    return EXIT_OK


def _inspect_args(p, run: bool = True, pair: bool = True):
    """Prompt flags of the inspection commands (no metric / direction: nothing is patched)."""
    _model_args(p)
    p.add_argument("--clean", help="the clean prompt")
    p.add_argument("--corrupt", help="the corrupted prompt (same token length)")
    p.add_argument("--answer", help="the clean answer token, e.g. ' Mary'")
    p.add_argument("--wrong", help="the corrupt answer token, e.g. ' John'")
    p.add_argument("--pairs", help="a CSV with columns clean,corrupt,answer,wrong")
    p.add_argument("--no-bos", action="store_true", help="do not prepend the BOS token")
    if run:
        p.add_argument("--run", default="clean", choices=["clean", "corrupt"], help="which prompt to run")
    if pair:
        p.add_argument("--pair", type=int, default=0, help="which prompt pair (default 0)")
    p.add_argument("--out", default="-", help="output CSV path, or - for stdout (default)")


def cmd_lens(args) -> int:
    from patching.inspect.lens import logit_lens
    from patching.core.results import write_csv
    model, prompts = _load(args)
    df = logit_lens(model, prompts, run=args.run, pair=args.pair, mode=args.mode, k=args.k)
    _write(write_csv(df), args.out)
    return EXIT_OK


def cmd_dla(args) -> int:
    from patching.inspect.lens import direct_logit_attribution
    from patching.core.results import write_csv
    model, prompts = _load(args)
    pair = None if args.pair == "all" else _int_arg(args.pair, "--pair")
    df = direct_logit_attribution(model, prompts, run=args.run, pair=pair, pos=args.pos)
    _write(write_csv(df), args.out)
    return EXIT_OK


def cmd_topk(args) -> int:
    from patching.inspect.lens import top_k
    from patching.core.results import write_csv
    model, prompts = _load(args)
    df = top_k(model, prompts, run=args.run, pos=args.pos, k=args.k, pair=args.pair)
    _write(write_csv(df), args.out)
    return EXIT_OK


def cmd_attention(args) -> int:
    from patching.inspect.lens import attention_patterns
    from patching.core.results import write_csv
    model, prompts = _load(args)
    heads = None
    if args.heads:
        try:
            heads = [int(h) for h in args.heads.split(",") if h.strip()]
        except ValueError:
            raise BadInput(f"--heads must be comma-separated head numbers, e.g. 0,3, not {args.heads!r}") from None
    df = attention_patterns(model, prompts, layer=args.layer, run=args.run, pair=args.pair, heads=heads)
    _write(write_csv(df), args.out)
    return EXIT_OK


def cmd_norms(args) -> int:
    from patching.inspect.lens import residual_norms
    from patching.core.results import write_csv
    model, prompts = _load(args)
    pair = None if args.pair == "all" else _int_arg(args.pair, "--pair")
    _write(write_csv(residual_norms(model, prompts, pair=pair)), args.out)
    return EXIT_OK


def _int_arg(value: str, flag: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise BadInput(f"{flag} must be an integer or 'all', not {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from patching.cli import cost as cli_cost
    parser = _Parser(prog="python -m patching", description="Activation patching from the command line.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("sweep", help="exact activation patching over one or more kinds")
    _model_args(p)
    _prompt_args(p)
    p.add_argument("--kind", required=True, help=f"one or more of {', '.join(KINDS)} (comma-separated)")
    p.add_argument("--per-position", action="store_true", help="head kinds: one cell per position too")
    p.add_argument("--layers", help="e.g. 0-5,8 (default: all)")
    p.add_argument("--positions", help="e.g. 3,7 (default: all)")
    p.add_argument("--heads", help="LAYER.HEAD pairs, e.g. 1.4,9.9 (default: all)")
    cli_cost.add_dry_run(p)
    from patching.cli import runs as cli_share
    cli_share.add_save_run(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("path", help="path patching: sender -> receivers, everything else frozen")
    _model_args(p)
    _prompt_args(p)
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
    p.set_defaults(func=cmd_path)

    p = sub.add_parser("attribution", help="attribution patching (gradients) for all kinds at once")
    _model_args(p)
    _prompt_args(p)
    p.add_argument("--kinds", help="comma-separated kinds (default: all supported)")
    p.add_argument("--method", default="plain", choices=["plain", "ig"])
    p.add_argument("--steps", type=int, default=16, help="integrated-gradients steps (--method ig)")
    p.add_argument("--per-position", action="store_true", help="head kinds: one cell per position too")
    p.add_argument("--positions", help="neuron kind: positions to attribute at (default: all)")
    p.add_argument("--edges", action="store_true",
                   help="write EAP edge scores (head/MLP -> head q/k/v, MLP, logits) instead of node scores")
    cli_cost.add_dry_run(p)
    cli_cost.add_compare(p)
    p.set_defaults(func=cmd_attribution)

    p = sub.add_parser("models", help="what can be loaded here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("eval", help="the model's scores on the held-out task items")
    p.add_argument("--model", default="default")
    p.add_argument("--n", type=int, default=200, help="items per task")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="speed vs TransformerLens' patching.py on the same sweeps")
    p.add_argument("--quick", action="store_true",
                   help="time the reference on a sample of indices and scale up (labelled as such)")
    p.add_argument("--models", default="default,gpt2-small-random",
                   help="comma-separated: default, gpt2-small-random")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("lens", help="logit lens: each layer's (or component's) prediction at every position")
    _inspect_args(p)
    p.add_argument("--mode", default="accumulated", choices=["accumulated", "per_layer"],
                   help="accumulated: the residual stream after each layer; per_layer: each block's "
                        "and head's direct contribution")
    p.add_argument("--k", type=int, default=1, help="top tokens per cell (default 1)")
    p.set_defaults(func=cmd_lens)

    p = sub.add_parser("dla", help="direct logit attribution of answer - wrong per layer and head")
    _inspect_args(p, pair=False)
    p.add_argument("--pair", default="all", help="a pair number, or all (default: the mean over pairs)")
    p.add_argument("--pos", type=int, default=-1, help="position (default -1: the last)")
    p.set_defaults(func=cmd_dla)

    p = sub.add_parser("topk", help="the k most likely next tokens at one position")
    _inspect_args(p)
    p.add_argument("--pos", type=int, default=-1, help="position (default -1: the last)")
    p.add_argument("--k", type=int, default=10, help="how many tokens (default 10)")
    p.set_defaults(func=cmd_topk)

    p = sub.add_parser("attention", help="every head's attention pattern of one layer (dest x src)")
    _inspect_args(p)
    p.add_argument("--layer", type=int, required=True, help="the layer (negative counts from the end)")
    p.add_argument("--heads", help="comma-separated heads, e.g. 0,3 (default: all)")
    p.set_defaults(func=cmd_attention)

    p = sub.add_parser("norms", help="residual stream L2 norms by layer and position, clean and corrupt")
    _inspect_args(p, run=False, pair=False)
    p.add_argument("--pair", default="0", help="a pair number (default 0), or all")
    p.set_defaults(func=cmd_norms)
    from patching.cli import neurons as cli_neurons
    cli_neurons.add_commands(sub, sys.modules[__name__])
    cli_share.add_commands(sub, sys.modules[__name__])
    from patching.cli import circuit as cli_circuit
    cli_circuit.add_commands(sub, sys.modules[__name__])
    from patching.bench import placement as placement_check
    sub.add_parser("worker", help="moved: `python -m dashboard worker`")   # main() answers it
    placement_check.add_command(sub)
    return parser


WORKER_MOVED = "the Celery worker is the dashboard's own command now: python -m dashboard worker --redis-url ..."


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv)[:1] == ["worker"]:
        print(f"error: {WORKER_MOVED}", file=sys.stderr)
        return EXIT_BAD_INPUT
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, BadInput) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place internal errors are reported
        print(f"internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
