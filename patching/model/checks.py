"""Checks that a model directory holds exactly the model it describes, before and after loading.

Before anything is opened (`check_model_dir`): the weights transformers would read are
safetensors files inside the directory (never a pickle: no `.bin`/`.pt`/`.pth`/`.ckpt`, no index
naming one, no path outside), their headers parse, config.json does not describe a model far
larger than those files (checked before allocating), its layer count matches the layers in the
weights, and tokenizer files are present. After loading (`check_loaded`): no tensor missing
(randomly initialised), unexpected or of another shape, no NaN or inf in a weight, and a tokenizer
that turns text into tokens.

Every refusal is a ValueError saying what is wrong, naming the first few bad tensors and the count.

>>> check_model_dir(Path("assets/models/patchboard-tiny"))          # doctest: +SKIP
>>> check_model_dir(Path("/tmp/pickle-only"))                        # doctest: +SKIP
Traceback (most recent call last):
...
ValueError: model directory '/tmp/pickle-only' has no *.safetensors weights; ...
"""
from __future__ import annotations

import json
import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
ACCEPTED = (f"Patchboard loads weights only from safetensors: {SAFE_WEIGHTS}, or {SAFE_INDEX} naming "
            "*.safetensors shards in the same directory")
MAX_INDEX_BYTES = 64 * 2**20            # a 1000-shard index is well under 1 MB
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tiktoken.model")
SAMPLE_TEXT = "When Mary and John went to the store"
LAYER_KEY = re.compile(r"^(.*?(?:^|\.)(?:h|layers|layer|blocks))\.(\d+)\.")
LAYER_FIELDS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
PACKED = {"I32": 8, "U32": 8, "I16": 4, "U16": 4, "I8": 2, "U8": 2}   # 4-bit weights per stored value, at most
Present = Callable[[str], bool]          # does the model directory (or hub repo) hold this file?


@dataclass(frozen=True)
class Headers:
    """What the safetensors headers of a model say: tensor name -> shape, the files' bytes, and
    the most parameters the tensors can hold (`capacity`: values, times the weights a packed
    integer dtype can carry, as in GPTQ or 4-bit checkpoints)."""
    shapes: dict[str, tuple[int, ...]]
    nbytes: int
    capacity: int = 0


def name_some(items: Iterable[str], first: int = 5) -> str:
    """The first few items and how many more, for a message of bounded length.

    >>> name_some(["a", "b", "c"], first=2)
    'a, b and 1 more'
    """
    items = sorted(str(i) for i in items)
    shown = ", ".join(i[:120] for i in items[:first])
    return shown + (f" and {len(items) - first} more" if len(items) > first else "")


def counted(items, noun: str) -> str:
    """'1 tensor', '3 tensors'.

    >>> counted(["a", "b"], "unexpected tensor")
    '2 unexpected tensors'
    """
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


@contextmanager
def refusing(name: str) -> Iterator[None]:
    """Re-raise a check's ValueError as "cannot load model NAME: ...", one bounded line.

    >>> with refusing("m"): raise ValueError("3 tensors missing")
    Traceback (most recent call last):
    ...
    ValueError: cannot load model 'm': 3 tensors missing
    """
    try:
        yield
    except ValueError as exc:
        raise ValueError(f"cannot load model {name!r}: {str(exc)[:800]}") from None


# -- before anything is opened: which files, and are they safetensors -------------------------------------------
def _inside(directory: Path, relative: str) -> bool:
    """Does `relative` (as written in an index or config) name a path inside `directory`?
    Lexical: the Hugging Face cache's snapshot files are symlinks into its blobs, on purpose."""
    if not relative or os.path.isabs(relative) or "\\" in relative or ":" in relative:
        return False
    base = os.path.normpath(directory)
    return os.path.commonpath([base, os.path.normpath(os.path.join(base, relative))]) == base


def _refuse_weight_name(relative: str, where: str, directory: Path, present: Present) -> None:
    """ValueError unless `relative` names a *.safetensors file inside the directory."""
    if not _inside(directory, relative):
        raise ValueError(f"{where} names {relative[:200]!r}, outside the model directory; {ACCEPTED}")
    if not relative.endswith(".safetensors"):
        raise ValueError(f"{where} names {relative[:200]!r}, which is not a safetensors file (a pickle "
                         f"would be unpickled); {ACCEPTED}")
    if not present(relative):
        raise ValueError(f"{where} names {relative[:200]!r}, which is not in the model directory")


def read_index(path: Path) -> dict[str, str]:
    """The weight_map (tensor -> file) of a safetensors index file; ValueError when it is not one.

    >>> read_index(Path("model.safetensors.index.json"))                   # doctest: +SKIP
    {'lm_head.weight': 'model-00002-of-00002.safetensors', ...}
    """
    if path.stat().st_size > MAX_INDEX_BYTES:
        raise ValueError(f"{path.name} is {path.stat().st_size:,} bytes, more than an index file needs "
                         f"({MAX_INDEX_BYTES // 2**20} MB)")
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path.name} is not a safetensors index (JSON with a 'weight_map'): "
                         f"{str(exc)[:200]}") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{path.name}: 'weight_map' must map tensor names to file names")
    return weight_map


def weight_names(directory: Path, config: dict, present: Present) -> list[str]:
    """The safetensors files (relative names) transformers would read for the model in `directory`,
    in its own order of choice: config.json's `transformers_weights`, then model.safetensors, then
    the index (read from `directory`); each checked to be a *.safetensors file inside the directory
    that `present` says exists; ValueError naming the file and what is accepted otherwise.

    >>> weight_names(Path("assets/models/patchboard-tiny"), {}, lambda f: f == "model.safetensors")
    ['model.safetensors']
    """
    if present("adapter_config.json"):
        raise ValueError("adapter_config.json: adapters (PEFT) are not supported, since their weights may be "
                         "a pickle; merge the adapter into the model and save it with save_pretrained")
    explicit = config.get("transformers_weights")
    if explicit is not None:
        name = str(explicit)
        if not name.endswith(".safetensors.index.json"):
            _refuse_weight_name(name, "config.json's transformers_weights", directory, present)
            return [name]
        if not _inside(directory, name) or not (directory / name).is_file():
            raise ValueError(f"config.json's transformers_weights names {name[:200]!r}, which is not an index "
                             f"file in the model directory; {ACCEPTED}")
        index = directory / name
    elif present(SAFE_WEIGHTS):
        return [SAFE_WEIGHTS]
    elif present(SAFE_INDEX) and (directory / SAFE_INDEX).is_file():
        index = directory / SAFE_INDEX
    else:
        raise ValueError(f"model directory {str(directory)!r} has no {SAFE_WEIGHTS} or {SAFE_INDEX}"
                         f"{_found_weights(directory)}; {ACCEPTED}")
    files = sorted(set(read_index(index).values()))
    if not files:
        raise ValueError(f"{index.name} names no weight files; {ACCEPTED}")
    for f in files:
        _refuse_weight_name(f, index.name, directory, present)
    return files


def _found_weights(directory: Path) -> str:
    found = name_some(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".safetensors"))
    return f" (found {found})" if found else ""


def weight_files(directory: Path, config: dict) -> list[Path]:
    """The checked safetensors files of a local model directory (see `weight_names`).

    >>> weight_files(Path("assets/models/patchboard-tiny"), {})            # doctest: +SKIP
    [PosixPath('assets/models/patchboard-tiny/model.safetensors')]
    """
    return [directory / f for f in weight_names(directory, config, lambda f: (directory / f).is_file())]


def read_headers(files: list[Path]) -> Headers:
    """Tensor names and shapes from the safetensors headers only (no tensor data read), and the
    files' total size; ValueError naming a file that is not safetensors or a tensor in two files.

    >>> read_headers([Path("assets/models/patchboard-tiny/model.safetensors")]).nbytes   # doctest: +SKIP
    4284336
    """
    from safetensors import safe_open
    shapes: dict[str, tuple[int, ...]] = {}
    capacity = 0
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    if key in shapes:
                        raise ValueError(f"tensor {key[:120]!r} is in more than one weight file ({path.name})")
                    piece = f.get_slice(key)
                    shapes[key] = tuple(piece.get_shape())
                    capacity += math.prod(shapes[key]) * PACKED.get(piece.get_dtype(), 1)
        except ValueError:
            raise
        except Exception as exc:      # safetensors' own error types
            raise ValueError(f"{path.name} is not a readable safetensors file: {str(exc)[:200]}") from None
    return Headers(shapes=shapes, nbytes=sum(p.stat().st_size for p in files), capacity=capacity)


# -- before allocating: does config.json describe the weights present ----------------------------------------
def _positive(config, *names: str) -> int | None:
    for n in names:
        v = getattr(config, n, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v if v > 0 else None
    return None


def implied_parameters(config) -> int | None:
    """A lower bound on the parameters a transformers config describes (embeddings, and per layer
    two width x width attention matrices and two width x MLP matrices); None when the config
    lacks the sizes.

    >>> from transformers import GPT2Config
    >>> implied_parameters(GPT2Config(n_layer=2, n_embd=8, n_inner=32, vocab_size=10))
    1360
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    d, layers, vocab = (_positive(text, "hidden_size"), _positive(text, "num_hidden_layers"),
                        _positive(text, "vocab_size"))
    if d is None or layers is None or vocab is None:
        return None
    mlp = _positive(text, "intermediate_size", "n_inner") or 0
    return vocab * d + layers * (2 * d * d + 2 * d * mlp)


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def check_config_size(config, headers: Headers) -> None:
    """ValueError when the config describes more parameters than the safetensors files hold (a
    lower bound against their capacity), so a config claiming 100000 layers, a huge width or
    vocabulary is refused before anything is allocated.

    >>> from transformers import GPT2Config
    >>> check_config_size(GPT2Config(n_layer=100000, n_embd=8, vocab_size=10), Headers({}, 4096, 1000))
    Traceback (most recent call last):
    ...
    ValueError: config.json describes at least 12,800,080 parameters (100000 layers of width 8, vocabulary 10) but the safetensors files hold 1,000 values in 4,096 bytes (4.0 kB); refused before allocating it: fix config.json to describe the weights present
    """
    implied = implied_parameters(config)
    if implied is None or implied <= headers.capacity:
        return
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    raise ValueError(f"config.json describes at least {implied:,} parameters ({text.num_hidden_layers} layers "
                     f"of width {text.hidden_size}, vocabulary {text.vocab_size}) but the safetensors files hold "
                     f"{headers.capacity:,} values in {headers.nbytes:,} bytes ({_size(headers.nbytes)}); refused "
                     "before allocating it: fix config.json to describe the weights present")


def layers_in_weights(keys: Iterable[str]) -> dict[str, set[int]]:
    """Layer numbers by block prefix in tensor names ('transformer.h.3.attn...' -> {'transformer.h': {3}}).

    >>> layers_in_weights(["model.layers.0.mlp.w", "model.layers.1.mlp.w", "lm_head.weight"])
    {'model.layers': {0, 1}}
    """
    out: dict[str, set[int]] = {}
    for key in keys:
        m = LAYER_KEY.match(key)
        if m:
            out.setdefault(m.group(1), set()).add(int(m.group(2)))
    return out


def _numbered(numbers: set[int]) -> str:
    """'0-3' for a contiguous run, else the first few numbers and the count."""
    lo, hi = min(numbers), max(numbers)
    return f"{lo}-{hi}" if numbers == set(range(lo, hi + 1)) else name_some(map(str, sorted(numbers)))


def check_layers(config, raw: dict, headers: Headers) -> None:
    """ValueError when layers the config counts are absent from the weights (they would be random;
    checked when the weights hold one stack of numbered layers). Layers beyond the count are left
    to transformers' report of unexpected tensors, which knows each model's extra ones (such as
    multi-token-prediction layers).

    >>> check_layers(GPT2Config(n_layer=6), {"n_layer": 6}, headers_of_4_layers)     # doctest: +SKIP
    Traceback (most recent call last):
    ...
    ValueError: config.json says n_layer=6 but the weights hold 4 layers (transformer.h.0-3)
    """
    stacks = layers_in_weights(headers.shapes)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n = _positive(text, "num_hidden_layers")
    if len(stacks) != 1 or n is None:
        return
    (prefix, present), = stacks.items()
    if set(range(n)) <= present:
        return
    field = next((f for f in LAYER_FIELDS if f in raw), "num_hidden_layers")
    raise ValueError(f"config.json says {field}={n} but the weights hold {len(present)} layers "
                     f"({prefix}.{_numbered(present)}); fix {field} to match the weights")


def check_tokenizer_files(directory: Path) -> None:
    """ValueError when a local model directory has no tokenizer files.

    >>> check_tokenizer_files(Path("assets/models/patchboard-tiny"))     # doctest: +SKIP
    """
    if any((directory / f).is_file() for f in TOKENIZER_FILES) or any(directory.glob("*.tiktoken")):
        return
    raise ValueError(f"no tokenizer files found in {str(directory)!r} (looked for {', '.join(TOKENIZER_FILES)}); "
                     "save the model's tokenizer there with tokenizer.save_pretrained")


def read_config(directory: Path) -> dict:
    """config.json as a dict; ValueError when it is not a JSON object."""
    try:
        raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"config.json is not readable JSON: {str(exc)[:200]}") from None
    if not isinstance(raw, dict):
        raise ValueError("config.json is not a JSON object")
    return raw


def check_model_dir(directory: Path, config=None) -> Headers:
    """Everything checkable before a local model is opened (see the module doc); the headers read.
    `config` is transformers' config of the directory (for the size and layer checks), if loaded.

    >>> check_model_dir(Path("assets/models/patchboard-tiny")).nbytes      # doctest: +SKIP
    4284336
    """
    raw = read_config(directory)
    headers = read_headers(weight_files(directory, raw))
    if config is not None:
        check_config_size(config, headers)
        check_layers(config, raw, headers)
    check_tokenizer_files(directory)
    return headers


# -- after loading: exactly as described --------------------------------------------------------------------
def check_loading_info(info: dict) -> None:
    """ValueError listing the missing, unexpected and mismatched tensors transformers reports
    (`from_pretrained(..., output_loading_info=True)`; tied weights are not missing).

    >>> check_loading_info({"missing_keys": {"lm_head.weight"}, "unexpected_keys": set(), "mismatched_keys": set()})
    Traceback (most recent call last):
    ...
    ValueError: 1 tensor missing from the weights (they would be random): lm_head.weight
    """
    problems = []
    missing, unexpected = info.get("missing_keys") or (), info.get("unexpected_keys") or ()
    mismatched = sorted(info.get("mismatched_keys") or ())
    if missing:
        problems.append(f"{counted(missing, 'tensor')} missing from the weights (they would be random): "
                        f"{name_some(missing)}")
    if unexpected:
        layers = "".join(f"; the weights hold layers {prefix}.{_numbered(numbers)} beyond config.json's layer count"
                         for prefix, numbers in layers_in_weights(unexpected).items())
        problems.append(f"{counted(unexpected, 'unexpected tensor')} in the weights, which the model described by "
                        f"config.json does not have: {name_some(unexpected)}{layers}")
    if mismatched:
        shown = [f"{k} is {list(have)} in the weights but {list(want)} per config.json" for k, have, want in mismatched]
        problems.append(f"{counted(mismatched, 'tensor')} of the wrong shape: {name_some(shown, first=3)}")
    errors = [str(e) for e in info.get("error_msgs") or ()]
    if errors:
        problems.append(f"{counted(errors, 'loading error')}: {errors[0][:200]}")
    if problems:
        raise ValueError("; ".join(problems))


def non_finite(module: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """Parameters holding NaN or inf: name -> (non-finite values, values). One float sum per
    tensor, and a count only for those whose sum is not finite; offloaded (meta) ones are skipped.

    >>> non_finite(torch.nn.Linear(2, 2))
    {}
    """
    bad = {}
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.device.type == "meta" or not p.is_floating_point() or p.numel() == 0:
                continue
            if torch.isfinite(p.sum(dtype=torch.float32)):
                continue
            count = int((~torch.isfinite(p)).sum())
            if count:
                bad[name] = (count, p.numel())
    return bad


def check_finite(module: torch.nn.Module) -> None:
    """ValueError naming the parameters that hold NaN or inf.

    >>> lin = torch.nn.Linear(2, 2); _ = lin.weight.data.fill_(float("nan"))
    >>> check_finite(lin)
    Traceback (most recent call last):
    ...
    ValueError: non-finite weights (NaN or inf) in 1 of 2 tensors: weight (4 of 4 values)
    """
    bad = non_finite(module)
    if bad:
        total = sum(1 for _ in module.parameters())
        shown = [f"{k} ({n:,} of {size:,} values)" for k, (n, size) in bad.items()]
        raise ValueError(f"non-finite weights (NaN or inf) in {len(bad)} of {total} tensors: {name_some(shown)}")


def check_tokenizer(tokenizer) -> None:
    """ValueError when the tokenizer turns a sample sentence into no tokens.

    >>> check_tokenizer(model.tokenizer)                                     # doctest: +SKIP
    """
    try:
        ids = tokenizer(SAMPLE_TEXT, add_special_tokens=False)["input_ids"]
    except Exception as exc:
        raise ValueError(f"its tokenizer fails on text ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not ids:
        raise ValueError(f"its tokenizer turns text into no tokens ({SAMPLE_TEXT!r} -> []); the tokenizer files "
                         "are missing or empty (save them with tokenizer.save_pretrained)")


def check_tokenizer_fits(tokenizer, hf: torch.nn.Module) -> None:
    """ValueError when the tokenizer has more tokens than the model's embedding has rows (a prompt
    with a later token would fail mid-run); fewer is common (padded embeddings) and fine.

    >>> check_tokenizer_fits(model.tokenizer, model.hf)                      # doctest: +SKIP
    """
    embedding = hf.get_input_embeddings()
    rows = getattr(embedding, "num_embeddings", None)
    if isinstance(rows, int) and len(tokenizer) > rows:
        raise ValueError(f"its tokenizer has {len(tokenizer):,} tokens but the model's embedding has {rows:,} rows "
                         "(config.json's vocab_size); use the tokenizer the model was trained with")


def check_object(hf: torch.nn.Module, tokenizer) -> None:
    """What applies to a model given in memory (no files, no loading report): weights present
    (not all on the meta device without an offload map), finite, and a tokenizer that works and
    fits the embedding.

    >>> check_object(model.hf, model.tokenizer)                             # doctest: +SKIP
    """
    params = list(hf.parameters())
    if params and all(p.device.type == "meta" for p in params) and not getattr(hf, "hf_device_map", None):
        raise ValueError("its weights are on the meta device (allocated without values, e.g. under "
                         "init_empty_weights); load them first (from_pretrained)")
    check_finite(hf)
    check_tokenizer(tokenizer)
    check_tokenizer_fits(tokenizer, hf)


def check_loaded(hf: torch.nn.Module, info: dict, tokenizer) -> None:
    """Everything checkable once loaded: the tensors, their values, the tokenizer.

    >>> check_loaded(hf, info, tokenizer)                                    # doctest: +SKIP
    """
    check_loading_info(info)
    check_finite(hf)
    check_tokenizer(tokenizer)
    check_tokenizer_fits(tokenizer, hf)
