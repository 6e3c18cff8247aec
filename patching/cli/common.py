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
import errno
import math
import os
import time
import sys
import tempfile
from pathlib import Path

from patching.core.prompts import MAX_PAIRS
from patching.runs.signals import Terminated, sigterm_interrupts  # noqa: F401 - for the commands

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2
EXIT_CHECK_FAILED = 1        # check-placement: an analysis differs between placements
EXIT_INTERRUPTED = 130       # Ctrl-C, as a shell reports SIGINT
EXIT_TERMINATED = 143        # SIGTERM, as a shell reports it (a sharded run cancels its shards first)
EXIT_TIMEOUT = 124           # --timeout ran out (as coreutils' timeout); every shard was cancelled
PAIR_FIELDS = ("clean", "corrupt", "answer", "wrong")
MAX_MESSAGE = 1000           # characters of one error line; longer ones are cut with "…"
MAX_COUNT = 1_000_000        # the largest count / index an integer flag takes (layers, neurons, k, ...)
MAX_SEED = 2**32 - 1
MAX_MB = 2**30               # --max-memory: 1 PiB, more than any machine has
KEEP = "\n\t"               # control characters kept in multi-line output


def terminal_safe(text: str, keep: str = KEEP) -> str:
    """`text` with control characters (C0, DEL, C1; all but `keep`) and lone surrogates escaped,
    so nothing printed can move the cursor, recolour or retitle the terminal.

    >>> print(terminal_safe("a" + chr(27) + "[31mb" + chr(0x9B) + "c" + chr(0xD800)))
    a\\x1b[31mb\\x9bc\\ud800
    """
    return "".join(ch if ch in keep or not _is_control(ch) else ascii(ch)[1:-1] for ch in text)


def _is_control(ch: str) -> bool:
    code = ord(ch)
    return code < 0x20 or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF


def error_line(message: str, limit: int = MAX_MESSAGE) -> str:
    """One error line: control characters and newlines escaped, cut to `limit` characters.

    >>> print(error_line("bad" + chr(10) + "value" + "x" * 10, limit=12))
    bad\\nvaluex…
    """
    line = terminal_safe(str(message), keep="")
    return line if len(line) <= limit else line[:limit - 1] + "…"


def whole(lo: int, hi: int):
    """An argparse `type`: a whole number from lo to hi, else one line naming the value.

    >>> whole(1, 10)("3")
    3
    >>> whole(1, 10)("99999999999999999999")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: '99999999999999999999' is not a whole number from 1 to 10
    """
    def parse(text: str) -> int:
        body = text.strip()
        digits = body[1:] if body[:1] in "+-" else body
        if not (digits.isascii() and digits.isdigit() and len(digits) <= 19) or not lo <= int(body) <= hi:
            raise argparse.ArgumentTypeError(f"{_short(text)} is not a whole number from {lo} to {hi}")
        return int(body)
    parse.__name__ = "whole number"
    return parse


def megabytes(text: str) -> float:
    """An argparse `type` for --max-memory: a finite number of MB above 0 (at most 1 PiB).

    >>> megabytes("512")
    512.0
    >>> megabytes("inf")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: 'inf' is not a memory budget; give megabytes as a number above 0 and at most 1073741824, e.g. 4096
    """
    try:
        value = float(text) if len(text) <= 40 else math.nan
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_MB):
        raise argparse.ArgumentTypeError(f"{_short(text)} is not a memory budget; give megabytes as a number "
                                         f"above 0 and at most {MAX_MB}, e.g. 4096")
    return value


def _short(text, limit: int = 60) -> str:
    text = str(text)
    return repr(text) if len(text) <= limit else repr(text[:limit])[:-1] + "…'"


def _short_path(path, limit: int = 60) -> str:
    """A path as a repr keeping its end (the file name), cut to `limit` characters.

    >>> _short_path("/very/long/" * 10 + "out.csv", limit=20)
    "'…//very/long/out.csv'"
    """
    text = str(path)
    return repr(text) if len(text) <= limit else "'…" + repr(text[-(limit - 1):])[1:]


class BadInput(ValueError):
    """Bad input found by the CLI itself: exit 2 with its one-line message."""


class Parser(argparse.ArgumentParser):
    """argparse, with its own errors as one line and exit 2 (naming the command's --help)."""

    def error(self, message):
        command = " ".join(self.prog.split()[3:4])            # 'python -m patching sweep' -> 'sweep'
        where = f"python -m patching {command} --help" if command else "python -m patching --help"
        self.exit(EXIT_BAD_INPUT, f"error: {error_line(message)} (see `{where}`)\n")


def model_flags(p: argparse.ArgumentParser) -> None:
    """--model, --device, --dtype, --device-map.

    >>> model_flags(p := argparse.ArgumentParser()); p.parse_args([]).dtype
    'float32'
    """
    p.add_argument("--model", default="default", help="default | a hub name | a local directory")
    p.add_argument("--device", default="auto", type=device_name, help="auto (default: CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device-map", default=None, metavar="auto",
                   help="spread a large model over the GPUs, the CPU and disk (accelerate); the engine "
                        "runs each module where it is placed")


def device_name(text: str) -> str:
    """An argparse `type` for --device: auto, cpu, cuda, cuda:N or mps (whether it is present is
    checked when the model loads); anything else, e.g. meta, is one line naming it.

    >>> device_name("cuda:1")
    'cuda:1'
    """
    kind, _, index = text.partition(":")
    if kind in ("auto", "cpu", "mps") and not _ or kind == "cuda" and (not _ or index.isascii() and index.isdigit()
                                                                      and len(index) <= 4):
        return text
    raise argparse.ArgumentTypeError(f"unusable device {_short(text)}; use auto, cpu, cuda, cuda:N or mps")


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
    p.add_argument("--pairs", help="a CSV with columns clean,corrupt,answer,wrong (+ positions: ROLE:INDEX ...; "
                   "pairs of mixed lengths need it)")
    if task is not None:
        p.add_argument("--task", default=task, help="prompts from a task (ioi, factual, greater_than, induction, induction_keys) "
                                                    f"when no prompts are given (default: {task})")
        p.add_argument("--n", type=whole(1, MAX_PAIRS), default=32, help="how many task prompts (default 32)")
        p.add_argument("--seed", type=whole(0, MAX_SEED), default=0, help="task prompts' seed (default 0)")
    p.add_argument("--no-bos", action="store_true", help="do not prepend the BOS token")


def out_flag(p: argparse.ArgumentParser) -> None:
    """--out PATH, - (the default) for stdout.

    >>> out_flag(p := argparse.ArgumentParser()); p.parse_args([]).out
    '-'
    """
    p.add_argument("--out", default="-", help="output CSV path, or - for stdout (default)")


def seconds(text: str) -> float:
    """An argparse `type` for --timeout: a finite number of seconds above 0.

    >>> seconds("90")
    90.0
    >>> seconds("-1")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: '-1' is not a time limit; give seconds as a number above 0, e.g. 600
    """
    return _above_zero(text, "is not a time limit; give seconds as a number above 0, e.g. 600")


def shard_flags(p: argparse.ArgumentParser, what: str = "the run") -> None:
    """--shards N, --redis-url URL and --timeout S: `what` split over Celery workers (`check_shards`).

    >>> shard_flags(p := argparse.ArgumentParser()); p.parse_args(["--shards", "4"]).shards
    4
    """
    p.add_argument("--shards", type=whole(1, 256), default=None, metavar="N",
                   help=f"split {what} into N shards run by `python -m dashboard worker`s (needs --redis-url); "
                        "the merged result is the one-worker result (same --max-memory), value for value")
    p.add_argument("--redis-url", default=None,
                   help="with --shards: the workers' Redis, redis://HOST:PORT/DB (default: $PATCHBOARD_REDIS_URL)")
    p.add_argument("--timeout", type=seconds, default=None, metavar="S",
                   help=f"with --shards: give up on {what} after S seconds (model loading included), cancel "
                        f"every shard and exit {EXIT_TIMEOUT}")


def check_shards(args: argparse.Namespace) -> str | None:
    """The Redis URL a sharded run uses (None without --shards); BadInput for a combination that
    cannot work: --shards without a Redis URL, --redis-url or --timeout without --shards. Sets
    `args.deadline` (time.monotonic() when --timeout runs out; None without).

    >>> check_shards(argparse.Namespace(shards=2, redis_url=None, dry_run=False, timeout=None))
    Traceback (most recent call last):
    ...
    patching.cli.common.BadInput: --shards 2 needs --redis-url redis://HOST:PORT/DB (the Redis the workers use) or $PATCHBOARD_REDIS_URL
    """
    timeout = getattr(args, "timeout", None)
    args.deadline = None if timeout is None else time.monotonic() + timeout
    if args.shards is None:
        if args.redis_url:
            raise BadInput(f"--redis-url {_short(args.redis_url)} is only used with --shards N; add --shards "
                           "or leave --redis-url out")
        if timeout is not None:
            raise BadInput(f"--timeout {timeout:g} limits a sharded run; add --shards N --redis-url URL or leave "
                           "--timeout out")
        return None
    url = args.redis_url or os.environ.get("PATCHBOARD_REDIS_URL")
    if not url:
        raise BadInput(f"--shards {args.shards} needs --redis-url redis://HOST:PORT/DB (the Redis the workers use) "
                       "or $PATCHBOARD_REDIS_URL")
    if getattr(args, "dry_run", False):
        raise BadInput("--dry-run estimates a one-worker run; leave out --shards")
    from patching.runs.celery_app import celery_app
    celery_app(url)                  # a bad URL or missing package: refused before the model loads
    return url


def time_left(args: argparse.Namespace) -> float | None:
    """Seconds left before --timeout runs out (None without --timeout).

    >>> time_left(argparse.Namespace(deadline=None)) is None
    True
    """
    deadline = getattr(args, "deadline", None)
    return None if deadline is None else deadline - time.monotonic()


class TimedOut(Exception):
    """--timeout ran out: `main` prints the message and exits EXIT_TIMEOUT."""


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


def metric_flag(p: argparse.ArgumentParser, help_prefix: str = "") -> None:
    """--metric: a registry name (listed from the registry) or package.module:function.

    >>> metric_flag(p := argparse.ArgumentParser()); p.parse_args([]).metric
    'logit_diff'
    """
    from metrics import METRICS, MULTI_TOKEN_METRICS
    p.add_argument("--metric", default="logit_diff",
                   help=f"{help_prefix}{', '.join(METRICS)} (default logit_diff), or package.module:function; "
                        f"answers of several tokens need {' or '.join(MULTI_TOKEN_METRICS)}")


def load(args: argparse.Namespace):
    """(model, PromptSet) from --pairs or from all four of --clean/--corrupt/--answer/--wrong;
    answers may be several tokens when --metric takes them (seq_logprob_diff)."""
    from metrics import takes_multi_token
    from patching.core.prompts import PromptSet
    multi_token = takes_multi_token(getattr(args, "metric", None))
    model = load_model(args)
    if args.pairs:
        if any(getattr(args, k) for k in PAIR_FIELDS):
            raise BadInput("give either --pairs or --clean/--corrupt/--answer/--wrong, not both")
        prompts = PromptSet.from_csv(model, Path(args.pairs),      # streamed, whatever its suffix
                                     prepend_bos=not args.no_bos, multi_token=multi_token)
    else:
        missing = [f"--{k}" for k in PAIR_FIELDS if getattr(args, k) is None]
        if missing:
            raise BadInput(f"missing {', '.join(missing)}; give all four, or --pairs pairs.csv")
        prompts = PromptSet.single(model, args.clean, args.corrupt, args.answer, args.wrong,
                                   prepend_bos=not args.no_bos, multi_token=multi_token)
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


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (the same inode, or the same resolved path).

    >>> same_file("x/../pairs.csv", "pairs.csv")
    True
    """
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def check_outputs(args: argparse.Namespace, outputs: tuple[str, ...] = ("out", "save_run", "csv"),
                  inputs: tuple[str, ...] = ("pairs", "texts")) -> None:
    """BadInput when an output flag names an input file (or two outputs one file): never overwrite
    an input. '-' (stdout) is no file.

    >>> check_outputs(argparse.Namespace(out="-", pairs="p.csv"))
    """
    given = [(f"--{k.replace('_', '-')}", getattr(args, k, None)) for k in outputs]
    outs = [(flag, v) for flag, v in given if v is not None and v != "-"]
    for flag, path in outs:
        _check_writable_path(flag, path)
    ins = [(f"--{k}", getattr(args, k, None)) for k in inputs if getattr(args, k, None)]
    for i, (flag, path) in enumerate(outs):
        for other, source in ins + outs[:i]:
            if same_file(path, source):
                raise BadInput(f"{flag} {_short_path(path)} is the same file as {other}; "
                               "write the results to another file (inputs are never overwritten)")


def _check_writable_path(flag: str, path: str) -> None:
    """BadInput, before any work, for an output path that can never be written: empty, a
    directory, or in a folder that does not exist."""
    if not str(path).strip():
        raise BadInput(f"{flag} is empty; give a file path, or - for stdout")
    if Path(path).is_dir():
        raise BadInput(f"{flag} {_short_path(path)} is a directory; give a file path inside it")
    parent = Path(path).parent
    if not parent.is_dir():
        raise BadInput(f"{flag} {_short_path(path)}: the folder {_short_path(parent)} does not exist")


def positive(text: str) -> float:
    """An argparse `type`: a finite number above 0.

    >>> positive("2.5")
    2.5
    """
    return _above_zero(text, "is not a number above 0")


def _above_zero(text: str, complaint: str) -> float:
    """`text` as a finite float above 0, else ArgumentTypeError "'TEXT' <complaint>"."""
    try:
        value = float(text) if len(text) <= 40 else math.nan
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{_short(text)} {complaint}")
    return value


def write(text: str, out: str) -> None:
    """Write `text` to the file `out`, or to stdout for "-" (escaped when stdout is a terminal); an
    unwritable path or a full device is bad input. A regular file (or a new one) is written
    atomically: a temporary file beside it (beside a symlink's target), then renamed over it, so a
    failed write leaves the old file whole. A device or pipe (/dev/full, a FIFO) is written in place.

    >>> write("kind,value\\n", "-")
    kind,value
    """
    if out == "-":
        _write_stdout(text)
        return
    try:
        if Path(out).is_dir():
            raise IsADirectoryError(errno.EISDIR, "Is a directory")
        if Path(out).exists() and not Path(out).is_file():
            _write_in_place(text, out)
        else:
            _write_atomic(text, Path(os.path.realpath(out)))
    except OSError as exc:
        raise BadInput(f"cannot write {_short_path(out)}: {exc.strerror or exc}") from None


def _write_in_place(text: str, out: str) -> None:
    with open(out, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def _write_atomic(text: str, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:40]}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_stdout(text: str) -> None:
    try:
        sys.stdout.write(terminal_safe(text) if sys.stdout.isatty() else text)
        sys.stdout.flush()
    except OSError as exc:
        raise BadInput(f"cannot write the output to stdout: {exc.strerror}") from None
