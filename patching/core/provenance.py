"""Provenance: what a run was made from, so it can be checked and reproduced elsewhere.

A `Provenance` records the model (name, Hugging Face revision when known, a sha256 of its
safetensors weights and of its tokenizer), the prompt pairs, the metric (a registry name, or a
user metric's qualified name and source), the spec, package versions, device, dtype, seeds,
Python and platform, and when the run was made. `attach` puts it on a result
(`PatchResult.provenance`, a plain dict, so it travels inside `to_json` and the run store).

The weights hash is computed once per loaded model (streamed, 1 MiB at a time) and cached on
the model object itself, never at module level.

>>> result = attach(sweep(model, prompts, spec), model, prompts)   # doctest: +SKIP
>>> Provenance.from_dict(result.provenance).weights_sha256[:12]     # doctest: +SKIP
'5f0c2a9e81d4'
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from patching.paths import CHECKOUT as ROOT   # the git commit is read from here, when a checkout

PROVENANCE_VERSION = 1
PACKAGES = ("torch", "transformer_lens", "transformers")
CACHE_ATTR = "_patchboard_fingerprint"       # where a model's fingerprint is cached (on the model)
ENV_ATTR = "_patchboard_environment"         # versions / platform, read once per loaded model
CHUNK = 2**20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# -- model fingerprint: weights and tokenizer hashes (once per loaded model) ----------------------
@dataclass(frozen=True)
class ModelFingerprint:
    """Hashes that identify a loaded model's weights and tokenizer."""
    revision: str | None                       # Hugging Face commit, when the model came from the hub cache
    weights_sha256: str | None                 # one file: its sha256; several: sha256 of "name sha256\n" lines
    weights_files: tuple[tuple[str, str], ...]  # (file name, sha256) per safetensors file
    tokenizer_sha256: str | None
    directory: str | None                      # where the weights were read (not exported)


def hash_file(path: str | Path) -> str:
    """sha256 of a file, streamed.

    >>> hash_file("assets/models/patchboard-tiny/model.safetensors")[:8]   # doctest: +SKIP
    '8a3f09c1'
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def weights_hash(directory: str | Path) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """(combined sha256, per-file sha256s) of the *.safetensors files of a model directory.

    One file: the combined hash is that file's sha256 (what `sha256sum model.safetensors` prints,
    and what the Hugging Face hub shows for an LFS file). Several (sharded) files: the sha256 of
    the lines "name sha256\\n" in name order. No files: (None, ()).

    >>> weights_hash("assets/models/patchboard-tiny")[0][:8]   # doctest: +SKIP
    '8a3f09c1'
    """
    files = sorted(Path(directory).glob("*.safetensors"))
    per_file = tuple((f.name, hash_file(f)) for f in files)
    if not per_file:
        return None, ()
    if len(per_file) == 1:
        return per_file[0][1], per_file
    manifest = "".join(f"{name} {sha}\n" for name, sha in per_file)
    return hashlib.sha256(manifest.encode()).hexdigest(), per_file


def tokenizer_hash(tokenizer) -> str | None:
    """sha256 of the tokenizer's full definition (a fast tokenizer's JSON: vocab, merges, normaliser,
    special tokens), else of its sorted vocabulary; None if neither can be read."""
    try:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            text = backend.to_str()
        else:
            text = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    except Exception:
        return None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_directory(model) -> Path | None:
    """The local directory the model's weights were loaded from (a local dir or the hub cache);
    None for a model given in memory (`from_model`: its weights may differ from any file)."""
    if getattr(model, "source", None) == "object":
        return None
    hf = getattr(getattr(model, "bridge", None), "original_model", None)
    where = getattr(getattr(hf, "config", None), "_name_or_path", None) or getattr(model, "name", None)
    if not where:
        return None
    path = Path(str(where)).expanduser()
    if path.is_dir():
        return path
    try:
        from patching.model.loading import resolve_model
        resolved = resolve_model(str(where))
    except Exception:
        return None
    return resolved if isinstance(resolved, Path) and resolved.is_dir() else None


def _revision(model, directory: Path | None) -> str | None:
    hf = getattr(getattr(model, "bridge", None), "original_model", None)
    commit = getattr(getattr(hf, "config", None), "_commit_hash", None)
    if commit:
        return str(commit)
    if directory is not None and directory.parent.name == "snapshots":   # hub cache layout
        return directory.name
    return None


def fingerprint(model) -> ModelFingerprint:
    """The model's weights / tokenizer hashes; computed on first use, then cached on `model`.

    >>> fingerprint(model) is fingerprint(model)      # doctest: +SKIP
    True
    """
    cached = getattr(model, CACHE_ATTR, None)
    if isinstance(cached, ModelFingerprint):
        return cached
    directory = model_directory(model)
    sha, files = weights_hash(directory) if directory is not None else (None, ())
    fp = ModelFingerprint(_revision(model, directory), sha, files,
                          tokenizer_hash(getattr(model, "tokenizer", None)),
                          str(directory) if directory is not None else None)
    try:
        setattr(model, CACHE_ATTR, fp)
    except (AttributeError, TypeError):      # a model object that takes no attributes: no cache
        pass
    return fp


# -- the rest of the record -----------------------------------------------------------------------
def package_versions() -> dict[str, str | None]:
    """torch, transformer_lens, transformers versions, Python's, and this checkout's git commit.

    >>> sorted(package_versions())
    ['patchboard', 'python', 'torch', 'transformer_lens', 'transformers']
    """
    from importlib import metadata
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            try:
                out[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                out[name] = None
    out["python"] = platform.python_version()
    out["patchboard"] = git_commit(ROOT)
    return out


def git_commit(root: Path) -> str | None:
    """The commit checked out at `root` (read from .git, no subprocess), or None."""
    git = root / ".git"
    try:
        if git.is_file():                                   # a worktree: "gitdir: <path>"
            git = (root / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head if re.fullmatch(r"[0-9a-f]{40}", head) else None
        ref = head.split(":", 1)[1].strip()
        common = git
        if (git / "commondir").is_file():
            common = (git / (git / "commondir").read_text().strip()).resolve()
        for base in (git, common):
            if (base / ref).is_file():
                return (base / ref).read_text().strip()
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split(" ", 1)[0]
    except (OSError, IndexError):
        return None
    return None


def describe_metric(metric) -> dict:
    """A metric as JSON: {"name", "source": "registry" | "module" | "callable", "qualname", "code"}.

    Registry metrics are named only; a `package.module:function` or a callable also records its
    qualified name and, when `inspect.getsource` can read it, its source code.

    >>> describe_metric("logit_diff")
    {'name': 'logit_diff', 'source': 'registry'}
    """
    from metrics import METRICS, Metric
    if isinstance(metric, str) and metric in METRICS:
        return {"name": metric, "source": "registry"}
    if isinstance(metric, Metric) and METRICS.get(metric.name) is metric:
        return {"name": metric.name, "source": "registry"}
    if isinstance(metric, str):
        from metrics import get_metric
        name, fn, source = metric, get_metric(metric).fn, "module"
    elif isinstance(metric, Metric):
        name, fn, source = metric.name, metric.fn, "module" if ":" in metric.name else "callable"
    elif callable(metric):
        name, fn, source = getattr(metric, "__name__", "custom"), metric, "callable"
    else:
        return {"name": str(metric), "source": "unknown"}
    out = {"name": name, "source": source,
           "qualname": f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"}
    try:
        out["code"] = inspect.getsource(fn)
    except (OSError, TypeError):
        out["code"] = None
    return out


def _pairs(prompts) -> tuple[tuple[str, str, str, str], ...]:
    return tuple((p.clean, p.corrupt, p.answer, p.wrong) for p in getattr(prompts, "pairs", ()))


def _dtype(model) -> str | None:
    hf = getattr(getattr(model, "bridge", None), "original_model", None)
    try:
        return str(next(hf.parameters()).dtype).replace("torch.", "")
    except Exception:
        return None


def _seeds() -> dict:
    import torch
    return {"torch_initial_seed": int(torch.initial_seed()), "bootstrap": 0}


@dataclass(frozen=True)
class Provenance:
    """Where a result came from. `to_dict()` is JSON-able; `from_dict` validates and restores it."""
    model_name: str
    weights_sha256: str | None = None
    model_revision: str | None = None
    weights_files: tuple[tuple[str, str], ...] = ()
    tokenizer_sha256: str | None = None
    pairs: tuple[tuple[str, str, str, str], ...] = ()
    prepend_bos: bool = True
    metric: dict = field(default_factory=dict)        # describe_metric(...)
    spec: dict = field(default_factory=dict)          # spec.to_dict()
    versions: dict = field(default_factory=dict)      # package_versions()
    device: str | None = None
    dtype: str | None = None
    seeds: dict = field(default_factory=dict)
    created: float = 0.0                              # unix seconds
    python: str = ""
    platform: str = ""
    version: int = PROVENANCE_VERSION

    def __post_init__(self):
        if not isinstance(self.model_name, str) or not self.model_name:
            raise ValueError(f"provenance model_name must be a non-empty string, not {self.model_name!r}")
        for name in ("weights_sha256", "tokenizer_sha256"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and _HEX64.match(value)):
                raise ValueError(f"provenance {name} must be 64 lowercase hex digits or null, not {value!r}")
        if not isinstance(self.version, int) or self.version > PROVENANCE_VERSION or self.version < 1:
            raise ValueError(f"provenance version {self.version!r} is not one this Patchboard reads "
                             f"(1-{PROVENANCE_VERSION}); upgrade Patchboard to read it")
        for n, p in enumerate(self.pairs):
            if len(p) != 4 or not all(isinstance(s, str) for s in p):
                raise ValueError(f"provenance pair {n} must be 4 strings (clean, corrupt, answer, wrong), not {p!r}")
        for name in ("metric", "spec", "versions", "seeds"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"provenance {name} must be an object, not {type(getattr(self, name)).__name__}")

    @property
    def created_iso(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["weights_files"] = [list(x) for x in self.weights_files]
        d["pairs"] = [list(p) for p in self.pairs]
        d["created_iso"] = self.created_iso
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Provenance":
        """Restore (and validate) a provenance dict; unknown keys are ignored, missing ones default."""
        if not isinstance(d, dict):
            raise ValueError(f"provenance must be an object, not {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        try:
            kw["weights_files"] = tuple(tuple(x) for x in kw.get("weights_files") or ())
            kw["pairs"] = tuple(tuple(p) for p in kw.get("pairs") or ())
        except TypeError:
            raise ValueError("provenance weights_files and pairs must be lists of lists") from None
        return cls(**kw)

    def summary_lines(self) -> list[str]:
        """Human-readable lines (CLI `show`, the dashboard's provenance panel)."""
        v = self.versions
        metric = self.metric.get("name", "?") + ("" if self.metric.get("source") == "registry"
                                                 else f" ({self.metric.get('source')}: {self.metric.get('qualname', '?')})")
        return [
            f"model        {self.model_name}" + (f" @ {self.model_revision}" if self.model_revision else ""),
            f"weights      sha256 {self.weights_sha256 or 'unknown'}"
            + (f" ({len(self.weights_files)} files)" if len(self.weights_files) > 1 else ""),
            f"tokenizer    sha256 {self.tokenizer_sha256 or 'unknown'}",
            f"metric       {metric}",
            f"spec         {json.dumps(self.spec, sort_keys=True)}",
            f"prompts      {len(self.pairs)} pair{'s' if len(self.pairs) != 1 else ''}"
            + (", BOS prepended" if self.prepend_bos else ", no BOS"),
            f"device       {self.device} · {self.dtype}",
            "versions     " + ", ".join(f"{k} {v.get(k) or '?'}" for k in (*PACKAGES, "python")),
            f"commit       {v.get('patchboard') or 'unknown'}",
            f"seeds        {json.dumps(self.seeds, sort_keys=True)}",
            f"platform     {self.platform}",
            f"created      {self.created_iso}",
        ]


def environment(model) -> dict:
    """Package versions, git commit, Python and platform: read once per loaded model (the code
    a process runs is what it imported), then cached on `model` like its fingerprint."""
    env = getattr(model, ENV_ATTR, None)
    if not isinstance(env, dict):
        env = {"versions": package_versions(), "python": sys.version.split()[0], "platform": platform.platform()}
        try:
            setattr(model, ENV_ATTR, env)
        except (AttributeError, TypeError):
            pass
    return {**env, "versions": dict(env["versions"])}        # a copy: callers cannot change the cache


def record(model, prompts, spec, metric=None) -> Provenance:
    """The provenance of a run of `spec` on `model` and `prompts` (metric: what the caller passed;
    None = the spec's metric name).

    >>> record(model, prompts, PatchSpec(kind="resid_pre")).model_name    # doctest: +SKIP
    'default'
    """
    fp, env = fingerprint(model), environment(model)
    spec_dict = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec or {})
    device = getattr(model, "device", None)
    return Provenance(
        model_name=str(getattr(model, "name", "") or spec_dict.get("model") or "unknown"),
        weights_sha256=fp.weights_sha256, model_revision=fp.revision, weights_files=fp.weights_files,
        tokenizer_sha256=fp.tokenizer_sha256, pairs=_pairs(prompts),
        prepend_bos=bool(getattr(prompts, "prepend_bos", True)),
        metric=describe_metric(metric if metric is not None else spec_dict.get("metric", "logit_diff")),
        spec=spec_dict, versions=dict(env["versions"]), device=str(device) if device is not None else None,
        dtype=_dtype(model), seeds=_seeds(), created=time.time(), python=env["python"],
        platform=env["platform"])


def attach(result, model, prompts, metric=None, spec=None):
    """`result` with its provenance set (a new frozen result; the same class).

    >>> attach(result, model, prompts).provenance["model_name"]     # doctest: +SKIP
    'default'
    """
    prov = record(model, prompts, spec if spec is not None else result.spec, metric)
    return dataclasses.replace(result, provenance=prov.to_dict())


def recorded(run: Callable) -> Callable:
    """Decorator for the engine's entry points (`sweep`, `run_path`, `run_attribution`): their
    result (or each result of a list) comes back with its provenance attached.

    >>> @recorded
    ... def sweep(model, prompts, spec, *, metric=None): ...       # doctest: +SKIP
    """
    @functools.wraps(run)
    def wrapper(model, prompts, *args, **kwargs):
        out = run(model, prompts, *args, **kwargs)
        metric = kwargs.get("metric")
        if isinstance(out, list):
            return [attach(r, model, prompts, metric) for r in out]
        return attach(out, model, prompts, metric)
    return wrapper


def check_weights(prov: Provenance | dict, local_sha256: str | None, where: str = "") -> str | None:
    """A warning when the recorded weights hash and the local one differ (or one is unknown); None
    when they match.

    >>> check_weights({"model_name": "m", "weights_sha256": "a" * 64}, "a" * 64) is None
    True
    """
    prov = Provenance.from_dict(prov) if isinstance(prov, dict) else prov
    if prov.weights_sha256 is None:
        return f"the run records no weights hash for model {prov.model_name!r}; cannot check the weights"
    if local_sha256 is None:
        return (f"model {prov.model_name!r} is not available {where or 'here'}; its weights were not checked "
                f"(recorded sha256 {prov.weights_sha256[:12]}…)")
    if local_sha256 != prov.weights_sha256:
        return (f"the local weights of {prov.model_name!r} differ from the run's: sha256 "
                f"{local_sha256[:12]}… here, {prov.weights_sha256[:12]}… recorded; values may not reproduce")
    return None


__all__ = ["Provenance", "ModelFingerprint", "attach", "record", "fingerprint", "weights_hash", "hash_file",
           "tokenizer_hash", "describe_metric", "recorded", "package_versions", "check_weights", "PROVENANCE_VERSION"]
