"""What every command group shares: exit codes, `BadInput`, the parser class, the model and
prompt-pair flags, loading the model and prompts from them, and writing the output.

Exit codes (contract): 0 ok, 2 bad input (one line on stderr naming the problem, no traceback),
1 internal error (and `check-placement`'s "differs"). `main` in `patching/cli/__init__.py` maps
`ValueError` (and so `BadInput`) to 2.

>>> p = Parser(prog="python -m patching sweep")
>>> model_flags(p); pair_flags(p)
>>> args = p.parse_args(["--clean", "a b", "--corrupt", "a c", "--answer", " x", "--wrong", " y"])
>>> (args.model, args.device, args.no_bos, has_pairs(args))
('default', 'auto', False, True)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2
EXIT_CHECK_FAILED = 1        # check-placement: an analysis differs between placements
EXIT_INTERRUPTED = 130       # Ctrl-C, as a shell reports SIGINT
PAIR_FIELDS = ("clean", "corrupt", "answer", "wrong")


class BadInput(ValueError):
    """Bad input found by the CLI itself: exit 2 with its one-line message."""


class Parser(argparse.ArgumentParser):
    """argparse, with its own errors as one line and exit 2 (naming the command's --help)."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see `python -m patching {self.prog.split()[-1]} --help`)\n")


def model_flags(p: argparse.ArgumentParser) -> None:
    """--model, --device, --dtype, --device-map.

    >>> model_flags(p := argparse.ArgumentParser()); p.parse_args([]).dtype
    'float32'
    """
    p.add_argument("--model", default="default", help="default | a hub name | a local directory")
    p.add_argument("--device", default="auto", help="auto (default: CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device-map", default=None, metavar="auto",
                   help="spread a large model over the GPUs, the CPU and disk (accelerate); the engine "
                        "runs each module where it is placed")


def pair_flags(p: argparse.ArgumentParser, answer_example: str = " Mary", wrong_example: str | None = " John",
               task: str | None = None) -> None:
    """--clean, --corrupt, --answer, --wrong, --pairs [, --task, --n, --seed], --no-bos.

    With `task` (its default name), prompts can come from a task family when none are given.

    >>> pair_flags(p := argparse.ArgumentParser(), task="ioi"); p.parse_args([]).task
    'ioi'
    """
    p.add_argument("--clean", help="the clean prompt")
    p.add_argument("--corrupt", help="the corrupted prompt (same token length)")
    p.add_argument("--answer", help=f"the clean answer token, e.g. '{answer_example}'")
    p.add_argument("--wrong", help="the corrupt answer token" + (f", e.g. '{wrong_example}'" if wrong_example else ""))
    p.add_argument("--pairs", help="a CSV with columns clean,corrupt,answer,wrong")
    if task is not None:
        p.add_argument("--task", default=task, help="prompts from a task (ioi, factual, greater_than, induction) "
                                                    f"when no prompts are given (default: {task})")
        p.add_argument("--n", type=int, default=32, help="how many task prompts (default 32)")
        p.add_argument("--seed", type=int, default=0, help="task prompts' seed (default 0)")
    p.add_argument("--no-bos", action="store_true", help="do not prepend the BOS token")


def out_flag(p: argparse.ArgumentParser) -> None:
    """--out PATH, - (the default) for stdout.

    >>> out_flag(p := argparse.ArgumentParser()); p.parse_args([]).out
    '-'
    """
    p.add_argument("--out", default="-", help="output CSV path, or - for stdout (default)")


def has_pairs(args: argparse.Namespace) -> bool:
    """Whether --pairs or any of --clean/--corrupt/--answer/--wrong was given.

    >>> has_pairs(argparse.Namespace(pairs=None, clean=None, corrupt=None, answer=None, wrong=None))
    False
    """
    return bool(args.pairs) or any(getattr(args, k) for k in PAIR_FIELDS)


def load_model(args: argparse.Namespace):
    """The model named by --model on --device in --dtype (and --device-map where the command has it)."""
    from patching.model.loading import load_model as load
    return load(args.model, device=args.device, dtype=args.dtype, device_map=getattr(args, "device_map", None))


def load(args: argparse.Namespace):
    """(model, PromptSet) from --pairs or from all four of --clean/--corrupt/--answer/--wrong."""
    from patching.core.prompts import PromptSet
    model = load_model(args)
    if args.pairs:
        if any(getattr(args, k) for k in PAIR_FIELDS):
            raise BadInput("give either --pairs or --clean/--corrupt/--answer/--wrong, not both")
        prompts = PromptSet.from_csv(model, Path(args.pairs),      # streamed, whatever its suffix
                                     prepend_bos=not args.no_bos)
    else:
        missing = [f"--{k}" for k in PAIR_FIELDS if getattr(args, k) is None]
        if missing:
            raise BadInput(f"missing {', '.join(missing)}; give all four, or --pairs pairs.csv")
        prompts = PromptSet.single(model, args.clean, args.corrupt, args.answer, args.wrong,
                                   prepend_bos=not args.no_bos)
    return model, prompts


def load_pairs_or_task(args: argparse.Namespace):
    """(model, PromptSet): the given pairs through `load`, else --task's largest same-length group
    of --n prompts (saying on stderr how many of them that is)."""
    from patching.inspect.neurons import task_prompt_set
    if has_pairs(args):
        return load(args)
    model = load_model(args)
    prompts = task_prompt_set(model, args.task, args.n, seed=args.seed, prepend_bos=not args.no_bos)
    print(f"{args.task}: {prompts.n_pairs} of {args.n} pairs have {prompts.n_pos} tokens; using those",
          file=sys.stderr)
    return model, prompts


def write(text: str, out: str) -> None:
    """Write `text` to the file `out`, or to stdout for "-"; an unwritable path is bad input.

    >>> write("kind,value\\n", "-")
    kind,value
    """
    if out == "-":
        sys.stdout.write(text)
        return
    try:
        with open(out, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    except OSError as exc:
        raise BadInput(f"cannot write {out!r}: {exc.strerror}") from None
