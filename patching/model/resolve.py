"""Where a model is found by name, and text <-> token ids (shared by full and tokenizer-only models).

"default" is the shipped model in assets/models/; otherwise a local directory, or a hub name
from the local Hugging Face cache (or the hub, when reachable).

>>> resolve_model("default").name
'patchboard-tiny'
"""
from __future__ import annotations

import os
from pathlib import Path

from patching.paths import models_dir

MODELS_DIR = models_dir()        # assets/models in a checkout, the packaged copy when installed
DEFAULT_MODEL = "patchboard-tiny"


def _has_safetensors(directory: Path) -> bool:
    """Does the directory hold safetensors weights or a safetensors index (checked when loading)?"""
    return any(directory.glob("*.safetensors")) or any(directory.glob("*.safetensors.index.json"))


def _cached_hub_dir(name: str) -> Path | None:
    """The local snapshot of a hub model, if the Hugging Face cache has one."""
    try:
        from huggingface_hub import try_to_load_from_cache
        hit = try_to_load_from_cache(name, "config.json")
    except Exception:
        return None
    return Path(hit).parent if isinstance(hit, str) else None


def resolve_model(name: str) -> Path | str:
    """A model name -> a local directory (or a hub id to fetch); ValueError with the choices.

    >>> resolve_model("/nonexistent/dir")
    Traceback (most recent call last):
    ...
    ValueError: model directory '/nonexistent/dir' does not exist
    """
    if not name or not str(name).strip():
        raise ValueError("model name is empty; use 'default', a local directory or a hub name")
    if name == "default":
        name = DEFAULT_MODEL
    shipped = MODELS_DIR / name
    if "/" not in name and shipped.is_dir():
        path = shipped
    elif name.startswith((".", "/", "~")) or Path(name).expanduser().is_dir():
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ValueError(f"model directory {name!r} does not exist")
    else:
        path = _cached_hub_dir(name)
        if path is None:
            where = ("not shipped in assets/models, not a local directory and not in the Hugging "
                     "Face cache")
            choices = ("use 'default', a directory with config.json + model.safetensors, or a cached "
                       "hub name (see `python -m patching models`)")
            if os.environ.get("HF_HUB_OFFLINE") == "1" or "/" not in name and not _looks_like_hub_id(name):
                raise ValueError(f"unknown model {name!r}: {where}; {choices}")
            if not _hub_reachable():
                raise ValueError(f"unknown model {name!r}: {where}, and the hub is unreachable from "
                                 f"here; {choices}")
            return name
    if not (path / "config.json").is_file():
        raise ValueError(f"model directory {str(path)!r} has no config.json")
    if not _has_safetensors(path):
        raise ValueError(f"model directory {str(path)!r} has no *.safetensors weights; Patchboard "
                         "loads weights only from safetensors (convert .bin with save_pretrained)")
    from patching.model.checks import read_config, refusing, weight_files
    with refusing(name):              # every caller (load, tokenizer-only, eval) gets safetensors only
        weight_files(path, read_config(path))
    return path


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Can the Hugging Face hub be reached at all? (One quick TCP connect, no retries.)"""
    import socket
    from urllib.parse import urlparse
    try:
        from huggingface_hub import constants
        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    except Exception:
        host = "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _looks_like_hub_id(name: str) -> bool:
    return name in {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2"}


class Tokenizing:
    """Text <-> token ids through `self.tokenizer` (shared by `Model` and `TokenizerOnlyModel`)."""
    tokenizer: object

    @property
    def bos_token_id(self) -> int | None:
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def encode(self, text: str) -> list[int]:
        """Token ids of text, without special tokens."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def to_str_tokens(self, ids_or_text) -> list[str]:
        ids = self.encode(ids_or_text) if isinstance(ids_or_text, str) else [int(i) for i in ids_or_text]
        return [self.tokenizer.decode([i]) for i in ids]
