"""Load a model by name: "default" (shipped in assets/models/), a local directory, or a hub name;
or take one already in memory (`from_model`: a Hugging Face model + tokenizer, or a TransformerLens
`TransformerBridge`), without reloading its weights.

Every model goes through the same path: a local directory (a hub model is first fetched as a
snapshot of safetensors only, `hub.py`), checked before and after loading (`checks.py`: weights
only from safetensors, exactly the tensors config.json describes, all finite, a tokenizer), never
`trust_remote_code`, wrapped in TransformerLens' `TransformerBridge` (hook names, reference
patching) and, for supported families, in the engine's own runner (fast patching).

>>> model = load_model("default")                    # doctest: +SKIP
>>> model.n_layers, model.to_str_tokens(" Mary")     # doctest: +SKIP
(4, [' Mary'])
"""
from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from patching.model.arch import Arch, arch_for, execution_device
from patching.model.checks import check_loaded, check_model_dir, check_object, refusing
from patching.model.runner import Runner

from patching.model.resolve import (  # noqa: F401 - re-exported: where models are found
    DEFAULT_MODEL, MODELS_DIR, Tokenizing, _has_safetensors, resolve_model,
)

log = logging.getLogger("patching.model.loading")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device(device: str | None = None) -> torch.device:
    """'auto'/None -> CUDA, else MPS, else CPU; otherwise the named device.

    >>> pick_device("cpu")
    device(type='cpu')
    """
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unusable device {device!r}: Patchboard runs models on cpu, cuda or mps only; use auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here; use cpu")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} requested but MPS is not available here; use cpu")
    return dev


def pick_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


@dataclass(eq=False)
class Model(Tokenizing):
    """A loaded model: the bridge, its tokenizer, and the engine's runner when supported."""
    name: str
    bridge: object                 # transformer_lens.model_bridge.TransformerBridge
    tokenizer: object
    device: torch.device
    arch: Arch | None = None
    runner: Runner | None = field(default=None, repr=False)
    device_map: dict[str, str] | None = field(default=None, repr=False)   # module -> device, when mapped
    # "files": loaded from a directory by load_model; "object": given in memory (from_model), so
    # no weights file speaks for it (provenance records no weights hash)
    source: str = field(default="files", repr=False)

    @property
    def hf(self):
        return self.bridge.original_model

    @property
    def cfg(self):
        return self.bridge.cfg

    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    @property
    def n_heads(self) -> int:
        return self.cfg.n_heads

    @property
    def n_kv_heads(self) -> int:
        return getattr(self.cfg, "n_key_value_heads", None) or self.cfg.n_heads

    @property
    def d_mlp(self) -> int:
        return self.arch.d_mlp if self.arch else self.cfg.d_mlp

    @property
    def n_ctx(self) -> int:
        return self.cfg.n_ctx

    @property
    def parallel_attn_mlp(self) -> bool:
        return bool(self.arch and self.arch.parallel) or bool(getattr(self.cfg, "parallel_attn_mlp", False))


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device_map(device_map, device: str | None = None):
    """None, one of DEVICE_MAPS, or a dict module -> device (accelerate's device_map); ValueError
    otherwise, or when an explicit device is asked for too.

    >>> check_device_map("auto"), check_device_map(None)
    ('auto', None)
    """
    if device_map is None or isinstance(device_map, dict):
        pass
    elif device_map not in DEVICE_MAPS:
        raise ValueError(f"unknown device map {device_map!r}; use {', '.join(DEVICE_MAPS)} (accelerate) "
                         "or leave it out for one device")
    if device_map is not None and device not in (None, "auto", "cpu"):   # cpu: the functions' default
        raise ValueError(f"--device {device} and --device-map {device_map if isinstance(device_map, str) else '{...}'}"
                         " both place the model; give one of them")
    return device_map


def placement(hf) -> dict[str, str]:
    """Where a loaded model's modules are: accelerate's hf_device_map ({'': 'cpu'} when it is all
    on one device without one). More than one distinct device, or 'disk', means the model is split.

    >>> placement(hf_model)                       # doctest: +SKIP
    {'transformer.wte': '0', 'transformer.h.0': '0', ..., 'lm_head': 'cpu'}
    """
    m = getattr(hf, "hf_device_map", None)
    if m:
        return {k: str(v) for k, v in m.items()}
    return {"": str(next(hf.parameters()).device)}


def require_runner(model, what: str, hint: str = ""):
    """The model's runner, or a ValueError saying why `what` cannot run without it: an
    architecture outside the runner's families (a split model keeps its runner).

    >>> require_runner(model, "path patching")      # doctest: +SKIP
    """
    if model.runner is not None:
        return model.runner
    arch = getattr(model.cfg, "architecture", None) or "this architecture"
    raise ValueError(f"{what} needs the engine's runner, but it does not support {model.name!r} ({arch}; "
                     f"supported: GPT-2, Llama-style and GPT-NeoX families){hint}")


def mixes_gpu_and_offload(device_map: dict[str, str]) -> bool:
    """A map with a GPU and CPU or disk entries: accelerate then offloads the CPU / disk modules
    (weights in RAM or on disk, loaded onto the GPU for each call).

    >>> mixes_gpu_and_offload({"model.layers.0": "0", "model.layers.1": "cpu"})
    True
    """
    values = {str(v).lower() for v in device_map.values()}
    return bool(values & {"cpu", "disk"}) and any(v.isdigit() or v.startswith("cuda") for v in values)


@contextmanager
def _gpu_offload_admitted(hf, name: str):
    """Boot the bridge on a GPU + CPU/disk map (TransformerLens 4.3 refuses one, since its own
    component wrappers are unverified there) when the engine's runner will do every forward: the
    runner calls each module through accelerate's offload hook (tested with disk offload). The
    bridge then only provides the config; its forward is used by models without a runner, for
    which the map stays refused."""
    placed = getattr(hf, "hf_device_map", None)
    if not placed or not mixes_gpu_and_offload({k: str(v) for k, v in placed.items()}):
        yield
        return
    if arch_for(hf) is None:
        raise ValueError(f"{name!r} mixes GPUs with CPU/disk offload in its device map, which only the "
                         "engine's runner supports (GPT-2, Llama-style and GPT-NeoX families); place it on "
                         "GPUs only (a map without 'cpu' or 'disk') or load it in a smaller --dtype")
    del hf.hf_device_map
    try:
        yield
    finally:
        hf.hf_device_map = placed


def is_split(device_map: dict[str, str]) -> bool:
    return len(set(device_map.values())) > 1 or any(v in ("disk", "meta") for v in device_map.values())


@contextmanager
def _quiet():
    """transformers' warnings and progress bars off (its refusals still raise)."""
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("transformers").setLevel(logging.ERROR)
        yield


def _load_error(name: str, exc: Exception) -> ValueError:
    """A transformers / hub / format error as one clear line naming the model."""
    if "trust_remote_code" in str(exc):
        return ValueError(f"cannot load model {name!r}: it needs its own Python code (trust_remote_code), "
                          "which Patchboard never runs; use a model transformers supports itself")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ValueError(f"cannot load model {name!r}: {first[:300]}")


def _fetch(name: str, repo_id: str) -> Path:
    """A hub model's local snapshot, safetensors only (`hub.fetch_hub_model`); ValueError otherwise."""
    from patching.model.hub import fetch_hub_model
    try:
        with _quiet():
            return fetch_hub_model(repo_id)
    except ValueError as exc:
        raise ValueError(f"cannot load model {name!r}: {str(exc)[:800]}") from None
    except Exception as exc:
        raise _load_error(name, exc) from None


def _read_config(name: str, where: Path):
    """transformers' config of a local model (no code of the model's own is run)."""
    from transformers import AutoConfig
    try:
        with _quiet():
            return AutoConfig.from_pretrained(str(where), trust_remote_code=False, local_files_only=True)
    except Exception as exc:
        raise _load_error(name, exc) from None


def _load_hf(name: str, where: Path, config, torch_dtype: torch.dtype, placed: dict):
    """(tokenizer, Hugging Face model, its loading info: missing / unexpected / mismatched tensors),
    weights from safetensors only; mismatched shapes are reported in the info, not raised."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        with _quiet():
            tokenizer = AutoTokenizer.from_pretrained(str(where), trust_remote_code=False,
                                                      local_files_only=True)
            hf, info = AutoModelForCausalLM.from_pretrained(
                str(where), config=config, trust_remote_code=False, use_safetensors=True, dtype=torch_dtype,
                attn_implementation="eager", local_files_only=True, output_loading_info=True,
                ignore_mismatched_sizes=True, **placed)
            hf.eval()
    except Exception as exc:   # hub / format errors (transformers' ValueErrors too) become one clear line
        raise _load_error(name, exc) from None
    return tokenizer, hf, info


def load_model(name: str | object = "default", device: str | None = "cpu", dtype: str = "float32",
               device_map=None, max_memory: dict | None = None, offload_folder: str | None = None,
               *, tokenizer=None) -> Model:
    """Load by name ('default', a local directory or a hub name); ValueError on a bad name.

    `name` may also be a model already in memory: a Hugging Face causal LM (with `tokenizer=`), a
    TransformerLens `TransformerBridge` or a Patchboard `Model`; see `from_model` (the object
    keeps its own device and dtype: a different explicit `device` / `dtype` is refused).

    `device_map` ('auto', ... or a dict; needs accelerate) spreads a large model over the GPUs,
    the CPU (and `offload_folder` on disk) within `max_memory` ({0: "20GiB", "cpu": "60GiB"}). The
    runner works on a split model too: each module runs where accelerate placed it (offloaded ones
    through accelerate's hook) and activations live on `Model.device`, the embedding's device.

    >>> load_model("no-such-model")
    Traceback (most recent call last):
    ...
    ValueError: unknown model 'no-such-model': not shipped in assets/models, not a local directory and not in the Hugging Face cache; use 'default', a directory with config.json + model.safetensors, or a cached hub name (see `python -m patching models`)
    """
    if not isinstance(name, (str, os.PathLike)):
        _check_object_placement(name, device, dtype, device_map, max_memory, offload_folder)
        return from_model(name, tokenizer)
    if tokenizer is not None:
        raise ValueError("tokenizer= goes with a model object (load_model(hf_model, tokenizer=...)); a model "
                         f"loaded by name ({str(name)!r}) uses the tokenizer saved with it")
    where = resolve_model(os.fspath(name))
    device_map = check_device_map(device_map, device)
    dev, torch_dtype = (pick_device(device) if device_map is None else None), pick_dtype(dtype)
    placed = {}
    if device_map is not None:
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise ValueError("--device-map needs the 'accelerate' package (pip install -r requirements.txt)") from None
        placed = {"device_map": device_map, **({"max_memory": max_memory} if max_memory else {}),
                  **({"offload_folder": str(offload_folder)} if offload_folder else {})}
    from transformer_lens.model_bridge import TransformerBridge
    if isinstance(where, str):           # a hub name not in the cache: fetched as safetensors only
        where = _fetch(name, where)
    config = _read_config(name, where)
    with refusing(name):
        check_model_dir(where, config)
    tokenizer, hf, info = _load_hf(name, where, config, torch_dtype, placed)
    with refusing(name):
        check_loaded(hf, info, tokenizer)
    try:
        with _quiet():
            where_placed = placement(hf)
            if dev is None:               # device map: tokens go where the embedding computes
                dev = execution_device(hf.get_input_embeddings(), torch.device("cpu"))
            with _gpu_offload_admitted(hf, name):
                bridge = TransformerBridge.boot_transformers(
                    str(where), hf_model=hf, tokenizer=tokenizer, device=dev, dtype=torch_dtype)
    except Exception as exc:
        raise _load_error(name, exc) from None
    bridge.eval()
    split = is_split(where_placed)
    arch = arch_for(bridge.original_model, home=dev if split else None)
    if split:
        log.info("model %s is split over %s: %s", name, ", ".join(sorted(set(where_placed.values()))),
                 "the runner keeps activations on " + str(dev) if arch is not None
                 else "its family has no runner, patching goes through TransformerLens' hooks")
    return Model(name=name, bridge=bridge, tokenizer=tokenizer, device=dev, arch=arch,
                 runner=Runner(arch) if arch is not None else None,
                 device_map=where_placed if device_map is not None else None)


# -- a model already in memory ---------------------------------------------------------------------
def _wrapped_by_bridge(hf) -> bool:
    """Does this Hugging Face model already hold TransformerLens bridge components? (Wrapping a
    model replaces its blocks in place; wrapping it twice nests them.)"""
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
    return any(isinstance(m, GeneralizedComponent) for m in hf.modules())


def _object_name(hf, name: str | None) -> str:
    if name is not None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"name must be a non-empty string, not {name!r}")
        return name
    source = getattr(getattr(hf, "config", None), "_name_or_path", None) or type(hf).__name__
    return f"{source} (in memory)"


def _parts(model, tokenizer) -> tuple[object | None, object, object]:
    """(bridge or None, Hugging Face model, tokenizer) of a model object; ValueError naming what
    was given and what is accepted otherwise."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedModel, PreTrainedTokenizerBase
    if isinstance(model, TransformerBridge):
        if tokenizer is not None and tokenizer is not model.tokenizer:
            raise ValueError("a TransformerBridge carries its own tokenizer (bridge.tokenizer); leave tokenizer= out")
        return model, model.original_model, model.tokenizer
    if not isinstance(model, PreTrainedModel):
        raise ValueError(f"cannot use a {type(model).__module__}.{type(model).__name__} as a model; pass a name "
                         "('default', a directory, a hub name), a Hugging Face causal LM (PreTrainedModel) with "
                         "its tokenizer, a TransformerLens TransformerBridge, or a Patchboard Model")
    if model.get_output_embeddings() is None:
        raise ValueError(f"{type(model).__name__} has no language-model head (it returns hidden states, not "
                         "logits); load it with AutoModelForCausalLM (e.g. GPT2LMHeadModel, LlamaForCausalLM)")
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        got = "no tokenizer" if tokenizer is None else f"a {type(tokenizer).__name__}"
        raise ValueError(f"a Hugging Face model needs its tokenizer: from_model(model, tokenizer) with a "
                         f"transformers tokenizer (AutoTokenizer.from_pretrained(...)); got {got}")
    if _wrapped_by_bridge(model):
        raise ValueError(f"this {type(model).__name__} is already wrapped by a TransformerBridge (TransformerLens "
                         "replaces its blocks in place when it wraps a model); pass that bridge instead (a "
                         "Patchboard Model's is model.bridge), or the Model itself")
    return None, model, tokenizer


def _bos_copy(tokenizer):
    """A copy of the tokenizer marked to add BOS, for the bridge: TransformerLens otherwise reloads the
    tokenizer from its saved files with add_bos_token=True (a read of files an in-memory tokenizer may
    not have). The engine tokenizes with the caller's own tokenizer and prepends BOS itself."""
    import copy
    if tokenizer.bos_token is None:
        return tokenizer
    twin = copy.deepcopy(tokenizer)
    twin.init_kwargs["add_bos_token"] = True
    twin.init_kwargs.setdefault("name_or_path", getattr(tokenizer, "name_or_path", ""))   # read, never used
    try:
        twin.add_bos_token = True
    except (AttributeError, ValueError):        # a tokenizer that cannot say it: TransformerLens keeps it as is
        pass
    return twin


def from_model(model, tokenizer=None, *, name: str | None = None) -> Model:
    """A model already in memory as a Patchboard `Model`, its weights not copied or reloaded:
    a Hugging Face causal LM with its tokenizer, a TransformerLens `TransformerBridge` (its
    tokenizer comes with it) or a `Model` (returned as is). The engine's runner is used for the
    supported families (GPT-2, Llama-style, GPT-NeoX), TransformerLens' hooks otherwise (and for a
    bridge in compatibility mode, whose processed weights only the bridge's forward applies).

    The checks that apply to an object run (finite weights, a tokenizer that works and fits the
    embedding); the model is put in eval mode, and a Hugging Face model is wrapped in a bridge,
    which replaces its blocks in place and switches it to eager attention (TransformerLens' boot).

    >>> from transformers import AutoModelForCausalLM, AutoTokenizer     # doctest: +SKIP
    >>> hf = AutoModelForCausalLM.from_pretrained("gpt2")                # doctest: +SKIP
    >>> from_model(hf, AutoTokenizer.from_pretrained("gpt2")).runner is not None   # doctest: +SKIP
    True
    >>> from_model(object())
    Traceback (most recent call last):
    ...
    ValueError: cannot use a builtins.object as a model; pass a name ('default', a directory, a hub name), a Hugging Face causal LM (PreTrainedModel) with its tokenizer, a TransformerLens TransformerBridge, or a Patchboard Model
    """
    if isinstance(model, Model):
        if tokenizer is not None and tokenizer is not model.tokenizer:
            raise ValueError("a Patchboard Model carries its own tokenizer; leave tokenizer= out")
        return model
    bridge, hf, tokenizer = _parts(model, tokenizer)
    name = _object_name(hf, name)
    with refusing(name):
        check_object(hf, tokenizer)
    if hf.training:
        log.info("model %s was in training mode (dropout on); switched to eval mode", name)
    where_placed = placement(hf)
    split = is_split(where_placed)
    dev = execution_device(hf.get_input_embeddings(), torch.device("cpu"))
    if bridge is None:
        dtype = next((p.dtype for p in hf.parameters() if p.is_floating_point()), torch.float32)
        try:
            with _quiet(), _gpu_offload_admitted(hf, name):
                from transformer_lens.model_bridge import TransformerBridge
                bridge = TransformerBridge.boot_transformers(name, hf_model=hf, tokenizer=_bos_copy(tokenizer),
                                                             device=dev, dtype=dtype)
        except ValueError:
            raise
        except Exception as exc:
            raise _load_error(name, exc) from None
    bridge.eval()
    compat = bool(getattr(bridge, "compatibility_mode", False))
    arch = None if compat else arch_for(hf, home=dev if split else None)
    if compat:
        log.info("bridge %s is in compatibility mode: patching goes through its hooks", name)
    return Model(name=name, bridge=bridge, tokenizer=tokenizer, device=dev, arch=arch,
                 runner=Runner(arch) if arch is not None else None,
                 device_map=where_placed if getattr(hf, "hf_device_map", None) else None, source="object")


def _check_object_placement(model, device, dtype, device_map, max_memory, offload_folder) -> None:
    """load_model(object, ...): the object stays where it is; a different explicit placement is refused."""
    if device_map is not None or max_memory or offload_folder:
        raise ValueError("device_map / max_memory / offload_folder place a model while loading it; a model object is "
                         "already placed (give from_pretrained your device_map, then pass the model)")
    hf = getattr(model, "original_model", model)
    params = getattr(hf, "parameters", None)
    first = next(params(), None) if callable(params) else None
    if first is None:
        return
    want = pick_device(device) if device not in (None, "auto", "cpu") else None
    if want is not None and not (want.type == first.device.type and want.index in (None, first.device.index)):
        raise ValueError(f"the model object is on {first.device}, not {device!r}; load_model does not move a model "
                         "object (that would copy its weights): move it first (model.to(...)) or leave device out")
    if dtype != "float32" and pick_dtype(dtype) != first.dtype:
        raise ValueError(f"the model object is in {str(first.dtype).replace('torch.', '')}, not {dtype!r}; load_model "
                         "does not cast a model object: cast it first (model.to(dtype)) or leave dtype out")


class ModelRegistry:
    """Loaded models by name, loaded on first use; passed to the dashboard and the workers."""

    def __init__(self, names: list[str] | None = None, device: str | None = "cpu", dtype: str = "float32",
                 device_map=None, weights: bool = True, pace_s: float = 0.0):
        from patching.model.pacing import check_pace
        self._names = list(dict.fromkeys(names or ["default"]))
        pick_dtype(dtype)
        self.pace_s = check_pace(pace_s)   # tests only: each patched batch waits this long (model/pacing.py)
        self._device, self._dtype, self._device_map = device, dtype, check_device_map(device_map, device)
        self.weights = weights            # False: tokenizers and configs only (a web host for Celery workers)
        self._loaded: dict[str, Model] = {}

    def names(self) -> list[str]:
        return list(self._names)

    def add(self, name: str, model: Model | None = None) -> None:
        if name not in self._names:
            self._names.append(name)
        if model is not None:
            self._loaded[name] = model

    def get(self, name: str) -> Model:
        """The model `name`, loaded on first use (its tokenizer and config only without weights)."""
        if name not in self._loaded:
            if self.weights:
                from patching.model.pacing import paced
                self._loaded[name] = paced(load_model(name, self._device, self._dtype, device_map=self._device_map),
                                           self.pace_s)
            else:
                from patching.model.tokenizer_only import load_tokenizer_only
                self._loaded[name] = load_tokenizer_only(name)
            self.add(name)
        return self._loaded[name]


def available_models() -> list[dict]:
    """What can be loaded here: shipped models (the default first, then by name), then hub models
    in the local cache.

    >>> available_models()[0]["name"]
    'default'
    """
    out = []
    if MODELS_DIR.is_dir():
        for d in sorted(MODELS_DIR.iterdir(), key=lambda d: (d.name != DEFAULT_MODEL, d.name)):
            if (d / "config.json").is_file():
                out.append({"name": "default" if d.name == DEFAULT_MODEL else d.name,
                            "source": "shipped", "path": str(d), "safetensors": _has_safetensors(d)})
    try:
        from huggingface_hub import scan_cache_dir
        for repo in scan_cache_dir().repos:
            if repo.repo_type == "model":
                files = {f.file_name for rev in repo.revisions for f in rev.files}
                out.append({"name": repo.repo_id, "source": "hf-cache", "path": str(repo.repo_path),
                            "safetensors": any(f.endswith(".safetensors") for f in files)})
    except Exception:
        pass
    return out
