"""One run as one file: `run-<id>.patchboard.zip`, to share a run and import it elsewhere.

The file is a zip archive with exactly two members:
- `run.json`: {"format": "patchboard-run", "version": 1, "type": "run" | "attribution", "label",
  "pairs": [[clean, corrupt, answer, wrong], ...], "results": [result.to_json(), ...] (one for a
  patching / path run, one per kind for an attribution run; each carries its provenance),
  "edges": EdgeScores.to_json() or null, "source_id", "exported"};
- `result.csv`: the contract CSV of the same results, for spreadsheets and pandas (no Patchboard
  needed to read it).

Why a zip of JSON + CSV: one file to attach or upload; the JSON keeps every float exactly (the
CSV rounds to 6 digits), so an imported run redraws the same figures; the CSV is what DESIGN
promises users; zip and deflate are in the standard library (pyarrow / Parquet is not installed).

Reading validates everything before anything is stored: a size cap on the file, a cap on each
member's uncompressed size, checked on the header and again while inflating (zip bombs: reading
stops at the cap whatever the header claims), the member names, the format name and version,
and the result's structure; every refusal is a ValueError naming the problem. Nothing is ever
extracted to disk.

>>> data = bundle_bytes([result], pairs, label="IOI head_out")
>>> read_bundle(data).results[0].values.shape
torch.Size([4, 4])
"""
from __future__ import annotations

import io
import json
import math
import stat
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from patching.core.results import CSV_COLUMNS, PatchResult, write_csv
from patching.core.prompts import roles_text
from patching.runs import limits

FORMAT = "patchboard-run"
BUNDLE_VERSION = 1
SUFFIX = ".patchboard.zip"
RUN_JSON, RESULT_CSV = "run.json", "result.csv"
MEMBERS = (RUN_JSON, RESULT_CSV)
MAX_BUNDLE_BYTES = 64 * 2**20          # the file as uploaded
MAX_MEMBER_BYTES = 256 * 2**20         # one member, uncompressed
TYPES = ("run", "attribution")
RESULT_KEYS = {"spec": dict, "axes": list, "coords": dict, "per_pair": list, "shape": list,
               "clean_baseline": list, "corrupt_baseline": list}


@dataclass(frozen=True, eq=False)
class Bundle:
    """A run read from (or to be written to) a run file."""
    type: str                                    # "run" (sweep / path) or "attribution"
    label: str
    pairs: tuple[tuple[str, str, str, str], ...]
    results: tuple[PatchResult, ...]
    edges: object | None = None                  # EdgeScores of an attribution run, when kept
    source_id: int | None = None                 # the run's id where it was exported
    exported: float = 0.0

    def __post_init__(self):
        if self.type not in TYPES:
            raise ValueError(f"run file type {self.type!r} is not one of {', '.join(TYPES)}")
        if not self.results:
            raise ValueError("a run file needs at least one result")
        if self.type == "run" and len(self.results) != 1:
            raise ValueError(f"a 'run' file holds one result, not {len(self.results)}")

    @property
    def result(self) -> PatchResult:
        return self.results[0]

    @property
    def provenance(self) -> dict | None:
        return self.results[0].provenance


def file_name(run_id: int | None, type_: str = "run") -> str:
    """run-12.patchboard.zip (attribution-3.patchboard.zip for an attribution run).

    >>> file_name(12)
    'run-12.patchboard.zip'
    """
    return f"{type_}-{run_id if run_id is not None else 'new'}{SUFFIX}"


def _pairs(pairs) -> list[list[str]]:
    """[clean, corrupt, answer, wrong] (+ the role positions' text when the pair names roles)."""
    return [[p.clean, p.corrupt, p.answer, p.wrong] + ([roles_text(p.positions)] if getattr(p, "positions", ()) else [])
            if hasattr(p, "clean") else [str(x) for x in p] for p in pairs]


def _csv(results) -> str:
    import pandas as pd
    return write_csv(pd.concat([r.to_dataframe() for r in results], ignore_index=True))


def bundle_bytes(results, pairs, label: str = "", *, type_: str = "run", edges=None,
                 source_id: int | None = None) -> bytes:
    """The run file's bytes for `results` (one for a run, one per kind for an attribution run).

    >>> (tmp_path / "run-1.patchboard.zip").write_bytes(bundle_bytes([result], pairs)) > 0
    True
    """
    results = list(results)
    bundle = Bundle(type_, label, tuple(tuple(p) for p in _pairs(pairs)), tuple(results), edges, source_id,
                    time.time())
    doc = {"format": FORMAT, "version": BUNDLE_VERSION, "type": bundle.type, "label": bundle.label,
           "pairs": _pairs(pairs), "results": [r.to_json() for r in results],
           "edges": edges.to_json() if edges is not None else None, "source_id": source_id,
           "exported": bundle.exported}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(RUN_JSON, json.dumps(doc))
        zf.writestr(RESULT_CSV, _csv(results))
    return buf.getvalue()


def write_bundle(path: str | Path, results, pairs, label: str = "", **kw) -> Path:
    """Write a run file; returns its path."""
    path = Path(path)
    path.write_bytes(bundle_bytes(results, pairs, label, **kw))
    return path


# -- reading ------------------------------------------------------------------------------------
def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def _members(zf: zipfile.ZipFile) -> dict[str, bytes]:
    infos = zf.infolist()
    names = [i.filename for i in infos]
    extra = sorted(set(names) - set(MEMBERS))
    missing = [m for m in MEMBERS if m not in names]
    if extra or len(names) != len(set(names)):
        raise ValueError(f"not a Patchboard run file: unexpected members {extra or names}; a run file "
                         f"holds exactly {', '.join(MEMBERS)}")
    if missing:
        raise ValueError(f"not a Patchboard run file: {', '.join(missing)} is missing (it must hold "
                         f"{', '.join(MEMBERS)})")
    out = {}
    for info in infos:
        if info.flag_bits & 0x1:
            raise ValueError(f"{info.filename} is encrypted (a password-protected zip); Patchboard reads "
                             "unencrypted run files only: export the run again")
        if info.file_size > MAX_MEMBER_BYTES:
            raise ValueError(f"{info.filename} unpacks to {_mb(info.file_size)}; the limit is "
                             f"{_mb(MAX_MEMBER_BYTES)}")
        chunks, size = [], 0
        with zf.open(info) as f:                      # never trust the header's size
            while block := f.read(2**20):
                size += len(block)
                if size > MAX_MEMBER_BYTES:
                    raise ValueError(f"{info.filename} unpacks to more than {_mb(MAX_MEMBER_BYTES)}")
                chunks.append(block)
        out[info.filename] = b"".join(chunks)
    return out


def _check_result(d, n: int) -> None:
    where = f"run.json: result {n}"
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be an object, not {type(d).__name__}")
    for key, typ in RESULT_KEYS.items():
        if key not in d:
            raise ValueError(f"{where} has no {key!r}")
        if not isinstance(d[key], typ):
            raise ValueError(f"{where}: {key!r} must be a {typ.__name__}, not {type(d[key]).__name__}")
    shape, axes = d["shape"], d["axes"]
    if not all(isinstance(a, str) for a in axes):
        raise ValueError(f"{where}: axes must be names, not {axes!r}")
    for a, values in d["coords"].items():
        if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ValueError(f"{where}: coordinates of axis {a!r} must be a list of integers")
    if len(axes) > limits.MAX_AXES:
        raise ValueError(f"{where}: {len(axes)} axes; the limit is {limits.MAX_AXES}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape) or len(shape) != len(axes) + 1:
        raise ValueError(f"{where}: shape {shape} does not fit axes {axes} (one size per axis, then pairs)")
    expected = limits.check_cells(shape, where)
    for a, size in zip(axes, shape):
        if len(d["coords"].get(a, ())) != size:
            raise ValueError(f"{where}: axis {a!r} has {len(d['coords'].get(a, ()))} coordinates, shape says {size}")
    if len(d["clean_baseline"]) != shape[-1] or len(d["corrupt_baseline"]) != shape[-1]:
        raise ValueError(f"{where}: baselines must have one value per pair ({shape[-1]})")
    flat = d["per_pair"]
    for _ in shape[:-1]:
        if flat and isinstance(flat[0], list):
            flat = [x for row in flat for x in row]
    if len(flat) != expected:
        raise ValueError(f"{where}: per_pair has {len(flat)} values, shape {shape} needs {expected}")


def _read_file(path: Path) -> bytes:
    """A run file's bytes: a regular file under the size cap (never a directory, device or pipe,
    which would block or never end), read no further than the cap.

    >>> _read_file(Path("/"))
    Traceback (most recent call last):
    ...
    ValueError: '/' is a directory, not a run file (.patchboard.zip)
    """
    try:
        st = path.stat()
    except OSError as exc:
        raise ValueError(f"cannot read run file {limits.clip(str(path))!r}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{limits.clip(str(path))!r} is a directory, not a run file (.patchboard.zip)")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{limits.clip(str(path))!r} is not a regular file (a device, pipe or socket); "
                         "give a run file (.patchboard.zip)")
    if st.st_size > MAX_BUNDLE_BYTES:
        raise ValueError(f"run file is {_mb(st.st_size)}; the limit is {_mb(MAX_BUNDLE_BYTES)}")
    try:
        with open(path, "rb") as f:
            return f.read(MAX_BUNDLE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read run file {limits.clip(str(path))!r}: {exc.strerror}") from None


def read_bundle(data: bytes | str | Path) -> Bundle:
    """Validate and read a run file (bytes or a path); ValueError naming what is wrong.

    >>> read_bundle(b"not a zip")
    Traceback (most recent call last):
    ...
    ValueError: not a Patchboard run file: not a zip archive (truncated or corrupt?)
    """
    if isinstance(data, (str, Path)):
        data = _read_file(Path(data))
    if len(data) > MAX_BUNDLE_BYTES:
        raise ValueError(f"run file is {_mb(len(data))}; the limit is {_mb(MAX_BUNDLE_BYTES)}")
    buf = io.BytesIO(data)
    if not zipfile.is_zipfile(buf):
        raise ValueError("not a Patchboard run file: not a zip archive (truncated or corrupt?)")
    try:
        with zipfile.ZipFile(buf) as zf:
            members = _members(zf)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError, OSError,
            RuntimeError) as exc:
        raise ValueError(f"corrupt run file (truncated?): {limits.clip(str(exc), 200)}") from None
    try:
        doc = json.loads(members[RUN_JSON].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"run.json is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"not a Patchboard run file: run.json format is {found!r}, expected {FORMAT!r}")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"run.json version {version!r} is not valid (expected an integer >= 1)")
    if version > BUNDLE_VERSION:
        raise ValueError(f"run file version {version} is newer than this Patchboard reads "
                         f"({BUNDLE_VERSION}); upgrade Patchboard to import it")
    limits.check_document(doc)
    type_ = doc.get("type")
    if type_ not in TYPES:
        raise ValueError(f"run.json type {type_!r} is not one of {', '.join(TYPES)}")
    label, pairs, results = doc.get("label", ""), doc.get("pairs"), doc.get("results")
    if not isinstance(label, str):
        raise ValueError(f"run.json label must be a string, not {type(label).__name__}")
    if not isinstance(pairs, list) or not pairs or not all(
            isinstance(p, list) and len(p) in (4, 5) and all(isinstance(s, str) for s in p) for p in pairs):
        raise ValueError("run.json pairs must be a non-empty list of [clean, corrupt, answer, wrong] strings "
                         "(+ the role positions, 'ROLE:INDEX ...')")
    limits.check_pairs(pairs)
    if not isinstance(results, list) or not results:
        raise ValueError("run.json results must be a non-empty list")
    from patching.runs.results import result_from_json
    parsed = []
    for n, d in enumerate(results):
        _check_result(d, n)
        if d.get("provenance") is not None:
            from patching.core.provenance import Provenance
            try:
                Provenance.from_dict(d["provenance"])
            except (ValueError, TypeError) as exc:
                raise ValueError(f"run.json: result {n} provenance: {exc}") from None
        try:
            parsed.append(result_from_json(d))
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise ValueError(f"run.json: result {n} is not a valid Patchboard result: "
                             f"{type(exc).__name__}: {str(exc)[:200]}") from None
        if parsed[-1].n_pairs != len(pairs):
            raise ValueError(f"run.json: result {n} has {parsed[-1].n_pairs} pairs, the file lists {len(pairs)}")
    edges = None
    if type_ == "attribution" and doc.get("edges") is not None:
        from patching.methods.attribution import EdgeScores
        try:
            edges = EdgeScores.from_json(doc["edges"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise ValueError(f"run.json: edges are not valid edge scores: {type(exc).__name__}: {exc}") from None
    try:
        header = members[RESULT_CSV].decode("utf-8").split("\n", 1)[0].strip()
    except UnicodeDecodeError:
        raise ValueError("result.csv is not UTF-8 text") from None
    if not header.startswith(",".join(CSV_COLUMNS)):
        raise ValueError(f"result.csv does not start with the contract columns {','.join(CSV_COLUMNS)}")
    source_id = doc.get("source_id")
    exported = doc.get("exported")
    try:
        b = Bundle(type_, label, tuple(tuple(p) for p in pairs), tuple(parsed), edges,
                   source_id if isinstance(source_id, int) and not isinstance(source_id, bool) else None,
                   float(exported) if isinstance(exported, (int, float)) and math.isfinite(exported) else 0.0)
    except ValueError as exc:
        raise ValueError(f"run.json: {exc}") from None
    _check_showable(b)
    return b


def _check_showable(b: Bundle) -> None:
    """What `show` prints must come out of every file `import` accepts: one validator for both."""
    try:
        show_lines(b)
    except (ValueError, TypeError, AttributeError, KeyError, OverflowError, OSError) as exc:
        raise ValueError(f"run.json: the run cannot be summarised ({type(exc).__name__}: "
                         f"{limits.clip(str(exc), 200)}); its fields have the wrong types") from None


# -- the run store ---------------------------------------------------------------------------------
def export_run(store, run_id: int) -> bytes:
    """A stored patching / path run as a run file's bytes (ValueError for an unknown id)."""
    from patching.runs.store import record_id
    run = store.get(record_id(run_id))
    return bundle_bytes([run.result], run.pairs, run.info.label, type_="run", source_id=run.info.id)


def export_attribution(store, attribution_id: int) -> bytes:
    """A stored attribution run (every kind, and its edges when kept) as a run file's bytes."""
    from patching.runs.store import record_id
    run = store.get_attribution(record_id(attribution_id, "attribution run"))
    return bundle_bytes(run.results, run.pairs, run.label, type_="attribution", edges=run.edges,
                        source_id=run.id)


def import_bundle(store, bundle: Bundle) -> int:
    """Store a read bundle as a new run; returns the new id (the attribution numbering for an
    attribution run)."""
    label = bundle.label if bundle.label.endswith("(imported)") else f"{bundle.label} (imported)".strip()
    if bundle.type == "attribution":
        return store.save_attribution(list(bundle.results), bundle.pairs, label, edges=bundle.edges)
    return store.save(bundle.result, bundle.pairs, label)


def weights_warning(bundle: Bundle, local_sha256: str | None, where: str = "") -> str | None:
    """A warning when the recorded weights differ from the local ones (or cannot be compared)."""
    from patching.core.provenance import check_weights
    prov = bundle.provenance
    if prov is None:
        return "this run was saved without provenance; its model weights cannot be checked"
    return check_weights(prov, local_sha256, where)


def local_weights_sha256(model_name: str) -> str | None:
    """The sha256 of the named model's weights on this machine (shipped, a local directory or the
    Hugging Face cache; nothing is downloaded), or None when it is not here."""
    from patching.model.loading import resolve_model
    from patching.core.provenance import weights_hash
    try:
        where = resolve_model(model_name)
    except ValueError:
        return None
    return weights_hash(where)[0] if isinstance(where, Path) else None


def summary_lines(bundle: Bundle) -> list[str]:
    """What `python -m patching show FILE` prints under the provenance."""
    lines = [f"type         {bundle.type}" + (f" (exported as #{bundle.source_id})" if bundle.source_id else ""),
             f"label        {bundle.label}", f"pairs        {len(bundle.pairs)}"]
    for r in bundle.results:
        values = r.values
        finite = values[~values.isnan()]
        extreme = (f"; values {float(finite.min()):.4f} to {float(finite.max()):.4f}" if finite.numel() else "")
        lines.append(f"result       {r.spec.kind} {r.spec.direction} {r.spec.metric}: "
                     f"{' x '.join(f'{a} {n}' for a, n in zip(r.axes, values.shape))}; clean {r.clean_value:.4f}, "
                     f"corrupt {r.corrupt_value:.4f}{extreme}")
    if bundle.edges is not None:
        lines.append("edges        kept")
    return lines


def show_lines(bundle: Bundle) -> list[str]:
    """Everything `python -m patching show FILE` prints after the file's name (summary,
    provenance, a user metric's source); `read_bundle` builds it once, so a file that imports
    always shows.

    >>> show_lines(read_bundle(data))[0]            # doctest: +SKIP
    """
    from patching.core.provenance import Provenance
    lines = ["  " + line for line in summary_lines(bundle)]
    if bundle.provenance is None:
        return lines + ["  provenance   none (saved before Patchboard recorded it)"]
    lines.append("provenance")
    lines += ["  " + line for line in Provenance.from_dict(bundle.provenance).summary_lines()]
    code = bundle.provenance.get("metric", {}).get("code")
    if code:
        lines.append("metric source")
        lines += ["  | " + line for line in code.rstrip().splitlines()]
    return lines
