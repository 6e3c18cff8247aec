"""`python -m patching check-placement`: does a model split by a device map give the numbers it
gives on one device? The check to run once on new hardware before trusting `--device-map`.

It loads the model twice — on one device (`--reference-device`, default cpu) and with the device
map — and runs the same analyses on both: sweeps of four kinds, path patching, attribution and
DLA, on IOI-style prompt pairs. One row per analysis: max |difference|, seconds on each, and ok
when the difference is within `atol` (a share of the largest |value| for half precision).
Exit code 1 when any row is not ok.

    python -m patching check-placement --model /models/mistral-7b --device-map auto \\
        --max-memory 0=12GiB,cpu=48GiB --dtype bfloat16 --reference-device cpu

>>> parse_max_memory("0=12GiB, cpu=48GiB")
{0: '12GiB', 'cpu': '48GiB'}
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass

import torch

DEFAULT_PAIRS = (
    ("When Mary and John went to the store, John gave a drink to",
     "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
    ("When John and Mary went to the park, Mary gave a book to",
     "When John and Mary went to the park, John gave a book to", " John", " Mary"),
)
SWEEP_KINDS = ("resid_pre", "attn_out", "mlp_out", "head_out")


def parse_max_memory(text: str | None) -> dict | None:
    """'0=12GiB,cpu=48GiB' -> {0: '12GiB', 'cpu': '48GiB'} (accelerate's max_memory); None for none.

    >>> parse_max_memory("")
    >>> parse_max_memory("gpu")
    Traceback (most recent call last):
    ...
    ValueError: --max-memory entry 'gpu' is not DEVICE=SIZE; e.g. 0=12GiB,cpu=48GiB
    """
    if not text or not text.strip():
        return None
    out: dict = {}
    for part in text.split(","):
        device, sep, size = part.strip().partition("=")
        if not sep or not device.strip() or not size.strip():
            raise ValueError(f"--max-memory entry {part.strip()!r} is not DEVICE=SIZE; e.g. 0=12GiB,cpu=48GiB")
        device = device.strip()
        out[int(device) if device.isdigit() else device] = size.strip()
    return out


@dataclass(frozen=True)
class PlacementRow:
    analysis: str
    max_abs_diff: float
    max_abs_value: float
    seconds_reference: float
    seconds_placed: float
    ok: bool


def _analyses():
    """name -> a function of (model, prompts) returning one float tensor."""
    from patching import PatchSpec, run_attribution, sweep
    from patching.inspect.lens import direct_logit_attribution
    from patching.methods.path import PathSpec, run_path
    out = {f"sweep {k}": (lambda m, p, k=k: sweep(m, p, PatchSpec(kind=k)).values) for k in SWEEP_KINDS}
    out["path patching (heads -> logits)"] = lambda m, p: run_path(m, p, PathSpec()).values
    out["attribution (all kinds)"] = lambda m, p: torch.cat([r.values.flatten() for r in run_attribution(m, p)])
    out["direct logit attribution"] = lambda m, p: torch.tensor(
        direct_logit_attribution(m, p).select_dtypes("floating").to_numpy(dtype="float64", na_value=float("nan")))
    return out


def check_placement(name: str, device_map, *, max_memory: dict | None = None, offload_folder=None,
                    dtype: str = "float32", reference_device: str = "cpu", pairs=DEFAULT_PAIRS,
                    atol: float | None = None) -> list[PlacementRow]:
    """Rows of placed-vs-reference differences; see the module doc. `atol` defaults to 1e-4 in
    float32 and 3% of the largest |value| in half precision (docs/DEPLOY.md).

    >>> rows = check_placement("default", "auto", max_memory={"cpu": "3MiB"})   # doctest: +SKIP
    """
    from patching.bench.circuits import timed
    from patching.model.loading import is_split, load_model
    from patching.core.prompts import PromptSet
    reference = load_model(name, device=reference_device, dtype=dtype)
    with tempfile.TemporaryDirectory(prefix="patchboard-offload-") as scratch:
        placed = load_model(name, dtype=dtype, device_map=device_map, max_memory=max_memory,
                            offload_folder=offload_folder or scratch)
        if not is_split(placed.device_map):
            raise ValueError(f"the device map put all of {name!r} on one device ({placed.device_map}); "
                             "nothing to compare: give --max-memory limits that split it")
        rows = []
        for label, fn in _analyses().items():
            want, t_ref = timed(lambda: fn(reference, PromptSet.from_pairs(reference, list(pairs))))
            got, t_placed = timed(lambda: fn(placed, PromptSet.from_pairs(placed, list(pairs))))
            want, got = want.double().cpu(), got.double().cpu()
            both = want.isfinite() & got.isfinite()
            same_nan = bool((want.isnan() == got.isnan()).all())
            diff = float((want[both] - got[both]).abs().max()) if both.any() else 0.0
            scale = float(want[both].abs().max()) if both.any() else 0.0
            tol = atol if atol is not None else (1e-4 if dtype == "float32" else 0.03 * max(scale, 1e-6))
            rows.append(PlacementRow(label, diff, scale, t_ref, t_placed, same_nan and diff <= tol))
    return rows


def format_rows(rows: list[PlacementRow]) -> str:
    """The rows as a fixed-width table."""
    lines = [f"{'analysis':34} {'max |diff|':>11} {'max |value|':>11} {'ref s':>8} {'placed s':>9}  ok"]
    for r in rows:
        lines.append(f"{r.analysis:34} {r.max_abs_diff:11.2e} {r.max_abs_value:11.3g} {r.seconds_reference:8.2f} "
                     f"{r.seconds_placed:9.2f}  {'ok' if r.ok else 'DIFFERS'}")
    return "\n".join(lines)
