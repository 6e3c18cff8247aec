"""`patchboard ...` / `python -m patchboard ...`: one command for every front end.

`patchboard dashboard [flags]` serves the dashboard (`python -m dashboard`), `patchboard worker
[flags]` starts a Celery worker for it (`python -m dashboard worker`); every other subcommand is
`python -m patching`'s (sweep, path, attribution, lens, models, bench, eval, ...).

>>> main(["models", "--help"])          # doctest: +SKIP
"""
from __future__ import annotations

import sys

DASHBOARD_COMMANDS = ("dashboard", "worker")


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the dashboard's or the engine's command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in DASHBOARD_COMMANDS:
        from dashboard.__main__ import main as dashboard_main
        return dashboard_main(argv[1:] if argv[0] == "dashboard" else argv)
    from patching.cli import main as cli_main
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
