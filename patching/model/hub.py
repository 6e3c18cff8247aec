"""A hub model is fetched as a local snapshot of safetensors only, then loads like any local model.

transformers' own download follows a safetensors index wherever it points (a `.bin` shard is
`torch.load`ed), so Patchboard fetches the files itself: first the small ones (config, index,
tokenizer), then exactly the safetensors files that `checks.weight_names` accepts. A repository
whose weights are a pickle is refused before any weight file is downloaded.

>>> fetch_hub_model("openai-community/gpt2")                       # doctest: +SKIP
PosixPath('/root/.cache/huggingface/hub/models--openai-community--gpt2/snapshots/607a30d7...')
"""
from __future__ import annotations

from pathlib import Path

SMALL_FILES = ("*.json", "*.txt", "*.model", "*.tiktoken")     # config, index, tokenizer; no weights


def fetch_hub_model(repo_id: str) -> Path:
    """Download `repo_id`'s config and tokenizer files, then the safetensors weights its config
    or index names (never a pickle); the local snapshot directory. ValueError when its weights
    are not safetensors; huggingface_hub's errors when the repository cannot be fetched.

    >>> fetch_hub_model("someone/pickle-only-model")                # doctest: +SKIP
    Traceback (most recent call last):
    ...
    ValueError: model directory '...' has no model.safetensors or model.safetensors.index.json; ...
    """
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from patching.model.checks import read_config, weight_names
    snapshot = Path(snapshot_download(repo_id, allow_patterns=list(SMALL_FILES)))
    revision = snapshot.name                       # the commit: every file from the same one
    remote = set(HfApi().list_repo_files(repo_id, revision=revision))
    for name in weight_names(snapshot, read_config(snapshot), lambda f: f in remote):
        hf_hub_download(repo_id, name, revision=revision)
    return snapshot
