"""A model's tokenizer and shape, without its weights: what a web host needs when every
computation runs on Celery workers (`python -m dashboard --jobs celery --tokenizers-only`).

It tokenizes, validates prompts and filters, and names layers and heads exactly like the full
`Model`; anything that would run the model (`runner`, `bridge`, `arch`, `hf`) raises
`NoWeightsError`, a ValueError that the dashboard shows inline like any refusal (and an
AttributeError, so `getattr(model, "runner", None)` reads None).

>>> m = load_tokenizer_only("default")
>>> m.n_layers, m.encode(" Mary")
(4, [555])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from patching.model.resolve import Tokenizing


class NoWeightsError(AttributeError, ValueError):
    """A computation asked for weights on a host that loaded tokenizers only."""


def _no_weights(name: str, what: str) -> NoWeightsError:
    return NoWeightsError(f"this web host loads no model weights (--tokenizers-only), so {what} of {name!r} "
                          "cannot run here; background runs (Run, Path, Attribution, Circuit) go to the "
                          "workers — start the dashboard without --tokenizers-only for this view")


def _needs_weights(what: str) -> property:
    """A property of a tokenizer-only model that refuses, naming `what` needs the weights."""
    def refuse(self):
        raise _no_weights(self.name, what)
    return property(refuse)


@dataclass(eq=False)
class TokenizerOnlyModel(Tokenizing):
    """The tokenizer and config of a model, with the `Model` attributes that need no weights."""
    name: str
    tokenizer: object
    config: object                     # transformers' PretrainedConfig
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def _get(self, *names, default=None):
        for n in names:
            v = getattr(self.config, n, None)
            if v is not None:
                return v
        return default

    @property
    def n_layers(self) -> int:
        return int(self._get("num_hidden_layers", "n_layer"))

    @property
    def n_heads(self) -> int:
        return int(self._get("num_attention_heads", "n_head"))

    @property
    def n_kv_heads(self) -> int:
        return int(self._get("num_key_value_heads", default=self.n_heads))

    @property
    def d_model(self) -> int:
        return int(self._get("hidden_size", "n_embd"))

    @property
    def d_mlp(self) -> int:
        return int(self._get("intermediate_size", "n_inner", default=4 * self.d_model))

    @property
    def n_ctx(self) -> int:
        return int(self._get("max_position_embeddings", "n_positions"))

    @property
    def parallel_attn_mlp(self) -> bool:
        return self.config.model_type == "gpt_neox" and bool(self._get("use_parallel_residual", default=False))

    @property
    def cfg(self) -> SimpleNamespace:
        """The fields of TransformerLens' config that the engine reads for shapes and sizes."""
        return SimpleNamespace(n_layers=self.n_layers, n_heads=self.n_heads, n_key_value_heads=self.n_kv_heads,
                               d_model=self.d_model, d_mlp=self.d_mlp, n_ctx=self.n_ctx,
                               d_vocab=int(self._get("vocab_size")), architecture=self.config.model_type)

    # -- what needs the weights ----------------------------------------------------------------
    runner = _needs_weights("the engine's runner")
    bridge = arch = hf = _needs_weights("the model")


def load_tokenizer_only(name: str = "default") -> TokenizerOnlyModel:
    """The tokenizer and config of a model by name (as `load_model` resolves it); no weights read.

    >>> load_tokenizer_only("no-such-model")
    Traceback (most recent call last):
    ...
    ValueError: unknown model 'no-such-model': not shipped in assets/models, not a local directory and not in the Hugging Face cache; use 'default', a directory with config.json + model.safetensors, or a cached hub name (see `python -m patching models`)
    """
    from patching.model.checks import check_tokenizer, check_tokenizer_files
    from patching.model.resolve import resolve_model
    where = resolve_model(name)
    from transformers import AutoConfig, AutoTokenizer
    local = not isinstance(where, str)
    try:
        if local:
            check_tokenizer_files(where)
        tokenizer = AutoTokenizer.from_pretrained(str(where), trust_remote_code=False, local_files_only=local)
        config = AutoConfig.from_pretrained(str(where), trust_remote_code=False, local_files_only=local)
        check_tokenizer(tokenizer)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot load the tokenizer of model {name!r}: {first[:400]}") from None
    return TokenizerOnlyModel(name, tokenizer, config)
