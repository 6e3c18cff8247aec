"""CLI commands for run files (`patching/runs/bundle.py`): export, import, show, and `sweep --save-run`.

Registered by `cli.build_parser` through `add_commands(sub)`; `sweep` adds `--save-run` with
`add_save_run(p)`.

    python -m patching export --data-dir D --run ID -o run-ID.patchboard.zip
    python -m patching export --data-dir D --attribution ID -o attribution-ID.patchboard.zip
    python -m patching import run-ID.patchboard.zip --data-dir D      # prints the new id
    python -m patching show run-ID.patchboard.zip                      # provenance + summary
    python -m patching sweep ... --save-run run.patchboard.zip
    python -m patching clustergram --run ID --out order.csv [--linkage-out L.csv] [--detect]

Bad files exit 2 with one line naming the problem (`bundle.read_bundle`'s ValueError).

>>> from patching.cli import build_parser
>>> build_parser().parse_args(["export", "--run", "3"]).run
3
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from patching.cli.common import EXIT_OK, terminal_safe
from patching.runs import bundle



def default_data_dir() -> str:
    """The dashboard's default data dir (patching.paths: $PATCHBOARD_DATA_DIR, else .patchboard in
    the checkout, else ~/.patchboard for an installed copy)."""
    from patching.paths import default_data_dir as data_dir
    return str(data_dir())


def _store(args):
    """The run store the dashboard would use: --store-url (or PATCHBOARD_STORE_URL) when given,
    else the SQLite file in --data-dir."""
    from patching.runs import store
    url = getattr(args, "store_url", None)
    if url:
        if not hasattr(store, "open_store"):
            raise ValueError("--store-url is not supported by this run store; use --data-dir")
        return store.open_store(url, data_dir=args.data_dir)
    return store.RunStore(Path(args.data_dir))


def _store_args(p) -> None:
    p.add_argument("--data-dir", default=default_data_dir(), help="the run store's folder (default: the dashboard's)")
    p.add_argument("--store-url", default=os.environ.get("PATCHBOARD_STORE_URL"),
                   help="a run store URL instead (sqlite:///..., postgresql://...), as the dashboard's --store-url")


def cmd_export(args) -> int:
    if (args.run is None) == (args.attribution is None):
        raise ValueError("give exactly one of --run ID or --attribution ID")
    store = _store(args)
    if args.run is not None:
        data, name = bundle.export_run(store, args.run), bundle.file_name(args.run)
    else:
        data, name = bundle.export_attribution(store, args.attribution), bundle.file_name(args.attribution, "attribution")
    out = Path(args.out or name)
    try:
        out.write_bytes(data)
    except OSError as exc:
        raise ValueError(f"cannot write {str(out)!r}: {exc.strerror}") from None
    print(f"wrote {out} ({len(data) / 1024:.1f} KiB)", file=sys.stderr)
    return EXIT_OK


def cmd_import(args) -> int:
    b = bundle.read_bundle(args.file)
    warning = bundle.weights_warning(b, bundle.local_weights_sha256(b.provenance["model_name"])
                                     if b.provenance else None)
    if warning:
        print(terminal_safe(f"warning: {warning}"), file=sys.stderr)
    new_id = bundle.import_bundle(_store(args), b)
    what = "attribution run" if b.type == "attribution" else "run"
    print(terminal_safe(f"imported {args.file} as {what} #{new_id} in {args.store_url or args.data_dir}"),
          file=sys.stderr)
    print(new_id)
    return EXIT_OK


def cmd_show(args) -> int:
    b = bundle.read_bundle(args.file)              # the validator `import` uses
    print(terminal_safe(f"{args.file}"))
    for line in bundle.show_lines(b):              # a label or prompt may hold ESC bytes: escaped
        print(terminal_safe(line))
    return EXIT_OK


def save_run(path: str, results, prompts, label: str = "") -> Path:
    """`sweep --save-run FILE`: the sweep's result as a run file (one kind per file)."""
    if len(results) != 1:
        raise ValueError(f"--save-run writes one run; this sweep has {len(results)} kinds "
                         f"({', '.join(r.spec.kind for r in results)}); run one kind at a time")
    r = results[0]
    try:
        out = bundle.write_bundle(path, results, prompts.pairs,
                                  label or f"{r.spec.kind}{' per position' if r.spec.per_position else ''}, "
                                           f"{r.spec.direction}")
    except OSError as exc:
        raise ValueError(f"cannot write {path!r}: {exc.strerror}") from None
    print(f"saved run to {out}", file=sys.stderr)
    return out


def add_save_run(p) -> None:
    p.add_argument("--save-run", metavar="FILE",
                   help="also save the run (result, prompts, provenance) as a run file, e.g. run.patchboard.zip")


def _run_result(args):
    """The result `clustergram` reads: --run ID (the store) or --run-file F (a run file; an
    attribution run's result of --kind)."""
    if (args.run is None) == (args.run_file is None):
        raise ValueError("give exactly one of --run ID or --run-file FILE")
    if args.run is not None:
        return _store(args).get(args.run).result
    results = bundle.read_bundle(args.run_file).results
    if len(results) == 1:
        return results[0]
    kinds = [r.spec.kind for r in results]
    if args.kind not in kinds:
        raise ValueError(f"--kind {args.kind!r} is not in this run file; it has {', '.join(kinds)}")
    return results[kinds.index(args.kind)]


def cmd_clustergram(args) -> int:
    """Heads of a head-kind run clustered by their effect profile: the leaf order as CSV (one row
    per head), optionally the linkage and the clustered matrix as CSVs."""
    from patching.cli.common import check_outputs, write
    from patching.core.results import write_csv
    from patching.inspect.clustergram import ClusterSpec, clustergram
    check_outputs(args, outputs=("out", "linkage_out", "profile_out"), inputs=("run_file",))
    result = _run_result(args)
    labels = None
    if args.detect:
        from patching.figures.detectors import firing_labels
        from patching.inspect.detectors import head_scores
        from patching.model.loading import load_model
        labels = firing_labels(head_scores(load_model(result.spec.model or result.model_name)), args.fires)
    cg = clustergram(result, ClusterSpec(args.profile, args.distance, args.linkage, args.value), labels)
    write(write_csv(cg.frame()), args.out)
    if args.linkage_out:
        write(write_csv(cg.linkage_frame()), args.linkage_out)
    if args.profile_out:
        write(write_csv(cg.profile_frame()), args.profile_out)
    return EXIT_OK


def _add_clustergram(sub) -> None:
    from patching.cli.common import out_flag
    from patching.figures.detectors import FIRES
    from patching.inspect.clustergram import DISTANCES, LINKAGES, PROFILES, VALUES
    p = sub.add_parser("clustergram", help="heads of a head-kind run clustered by their effect profile "
                                           "(order CSV: order,layer,head,label,detector,joins_at)")
    _store_args(p)
    p.add_argument("--run", type=int, help="a stored run's id (History tab, `#ID`)")
    p.add_argument("--run-file", help="a .patchboard.zip run file instead")
    p.add_argument("--kind", default="head_out", help="an attribution run file: which kind's result (default head_out)")
    p.add_argument("--profile", default="pairs", choices=PROFILES,
                   help="pairs: each pair's effect (x position); mean: the mean over pairs (default pairs)")
    p.add_argument("--distance", default="euclidean", choices=DISTANCES)
    p.add_argument("--linkage", default="average", choices=LINKAGES)
    p.add_argument("--value", default="normalized", choices=VALUES,
                   help="normalized: effect / (clean - corrupt); effect: in the metric's units")
    p.add_argument("--detect", action="store_true",
                   help="name heads that fire on a head detector (loads the run's model)")
    p.add_argument("--fires", type=float, default=FIRES, help=f"--detect: the score a head fires from (default {FIRES})")
    out_flag(p)
    p.add_argument("--linkage-out", help="also write the merges: step,left,right,left_label,right_label,distance,size")
    p.add_argument("--profile-out", help="also write the clustered matrix: order,layer,head,label,feature,value")
    p.set_defaults(func=cmd_clustergram)


def add_commands(sub) -> None:
    """Register `export`, `import`, `show` and `clustergram` on the CLI's subparsers."""
    p = sub.add_parser("export", help="write a stored run as one file (run-ID.patchboard.zip)")
    _store_args(p)
    p.add_argument("--run", type=int, help="the run's id (History tab, `#ID`)")
    p.add_argument("--attribution", type=int, help="an attribution run's id instead")
    p.add_argument("-o", "--out", help="output file (default: run-ID.patchboard.zip)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="store a run file as a new run; prints its id")
    p.add_argument("file", help="a .patchboard.zip run file")
    _store_args(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("show", help="print a run file's provenance and a summary")
    p.add_argument("file", help="a .patchboard.zip run file")
    p.set_defaults(func=cmd_show)
    _add_clustergram(sub)
