"""`python -m patching ...`: one module per command group, each with `add_commands(sub)`.

    sweep.py    sweep, path, attribution (and their shared prompt / metric flags)
    inspect.py  lens, dla, topk, attention, attention-overview, highlight, norms (--all-pairs), heads
    neurons.py  neurons, weights
    circuit.py  circuit
    models.py   models, eval
    bench.py    bench, check-placement
    runs.py     export, import, show (and `sweep --save-run`)
    cost.py     --dry-run, --compare-exact, --refine (flags and reports of sweep, path, attribution)
    common.py   exit codes, BadInput, the parser class, model / prompt-pair flags, loading, output

Exit codes: 0 ok, 2 bad input (one line on stderr naming the problem), 1 internal error; 130 Ctrl-C,
143 SIGTERM, 124 a sharded run's --timeout (every shard cancelled).

>>> build_parser().parse_args(["eval", "--json"]).n
200
>>> main(["worker"])                 # retired here: a pointer on stderr, exit 2
2
"""
from __future__ import annotations

import argparse
import sys

from patching.cli import bench, circuit, inspect, models, neurons, runs, sweep
from patching.cli.common import (EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_TIMEOUT, Parser,
                                 Terminated, TimedOut, error_line)

WORKER_MOVED = "the Celery worker is the dashboard's own command now: python -m dashboard worker --redis-url ..."


def _add_worker_pointer(sub) -> None:
    sub.add_parser("worker", help="moved: `python -m dashboard worker`")   # main() answers it


# Every command's registration, in the order `python -m patching --help` lists them.
COMMANDS = (sweep.add_commands, models.add_commands, bench.add_bench, inspect.add_commands, neurons.add_commands,
            runs.add_commands, circuit.add_commands, _add_worker_pointer, bench.add_check_placement)


def build_parser() -> argparse.ArgumentParser:
    """The whole CLI: each command group adds its commands to one set of subparsers."""
    parser = Parser(prog="python -m patching", description="Activation patching from the command line.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code (argparse's own errors exit 2 through `SystemExit`)."""
    if (sys.argv[1:] if argv is None else argv)[:1] == ["worker"]:
        print(f"error: {WORKER_MOVED}", file=sys.stderr)
        return EXIT_BAD_INPUT
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:                 # BadInput included
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TimedOut as exc:                   # --timeout of a sharded run: its shards are cancelled
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return EXIT_TIMEOUT
    except Terminated:
        print("terminated (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the one place internal errors are reported
        print(f"internal error: {type(exc).__name__}: {error_line(exc)}", file=sys.stderr)
        return EXIT_INTERNAL
