"""`python -m patching bench|check-placement`: measurements, not analyses.

    python -m patching bench [--quick] [--models default,gpt2-small-random]
    python -m patching check-placement --model /models/mistral-7b --device-map auto \\
        --max-memory 0=12GiB,cpu=48GiB --dtype bfloat16 --reference-device cpu

`bench` is speed vs TransformerLens' patching.py (`patching/bench/sweeps.py`); `check-placement`
compares a model split by a device map with the same model on one device
(`patching/bench/placement.py`) and exits 1 when any analysis differs.

>>> from patching.cli import build_parser
>>> build_parser().parse_args(["check-placement", "--max-memory", "0=12GiB"]).device_map
'auto'
"""
from __future__ import annotations

import argparse
import sys

from patching.cli.common import EXIT_CHECK_FAILED, EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from patching.bench.sweeps import run_bench
    run_bench(quick=args.quick, models=args.models.split(","), out=sys.stdout)
    return EXIT_OK


def cmd_check_placement(args: argparse.Namespace) -> int:
    from patching.bench.placement import check_placement, format_rows, parse_max_memory
    rows = check_placement(args.model, args.device_map, max_memory=parse_max_memory(args.max_memory),
                           offload_folder=args.offload_folder, dtype=args.dtype,
                           reference_device=args.reference_device, atol=args.atol)
    print(format_rows(rows))
    return EXIT_OK if all(r.ok for r in rows) else EXIT_CHECK_FAILED


def add_bench(sub) -> None:
    """Register `bench` (see the module's example)."""
    p = sub.add_parser("bench", help="speed vs TransformerLens' patching.py on the same sweeps")
    p.add_argument("--quick", action="store_true",
                   help="time the reference on a sample of indices and scale up (labelled as such)")
    p.add_argument("--models", default="default,gpt2-small-random",
                   help="comma-separated: default, gpt2-small-random")
    p.set_defaults(func=cmd_bench)


def add_check_placement(sub) -> None:
    """Register `check-placement` (see the module's example)."""
    p = sub.add_parser("check-placement",
                       help="compare a model split by --device-map with the same model on one device")
    p.add_argument("--model", default="default", help="default | a hub name | a local directory")
    p.add_argument("--device-map", default="auto", help="auto, balanced, balanced_low_0 or sequential")
    p.add_argument("--max-memory", default=None, metavar="DEV=SIZE,...",
                   help="accelerate's limits per device, e.g. 0=12GiB,1=12GiB,cpu=48GiB (what makes it split)")
    p.add_argument("--offload-folder", default=None, help="where disk-offloaded weights go (default: a temp dir)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--reference-device", default="cpu", help="where the unsplit reference runs (cpu, cuda:0, ...)")
    p.add_argument("--atol", type=float, default=None, help="allowed max |difference| (default: see the module doc)")
    p.set_defaults(func=cmd_check_placement)
