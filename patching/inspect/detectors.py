"""Head detectors: which heads attend to the previous token, to the token's previous occurrence,
and to the token after its previous occurrence (induction), from the weights alone.

Each score is a mean attention weight (0..1) on seeded repeated random token sequences
`[BOS, x_1..x_n, x_1..x_n]` drawn from the model's vocabulary (no token twice within a half):
- `previous_token`: from every position after BOS to the one before it;
- `duplicate_token`: from each second-half token to its first occurrence;
- `induction`: from each second-half token to the token after its first occurrence.
A textbook previous-token or induction head scores well above 0.5; a uniform head scores about
1 / (its position).

>>> from patching import load_model
>>> scores = head_scores(load_model("default"), DetectorSpec(n_sequences=4, half_length=8))
>>> list(scores.columns), sorted(scores.detector.unique())
(['layer', 'head', 'detector', 'score'], ['duplicate_token', 'induction', 'previous_token'])
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from patching.model import hooks

DETECTORS = ("previous_token", "duplicate_token", "induction")
DETECTOR_COLUMNS = ("layer", "head", "detector", "score")
MAX_SEQUENCES = 1024


@dataclass(frozen=True)
class DetectorSpec:
    """Which detectors, on how many seeded random sequences of which half length.

    >>> DetectorSpec(detectors=("induction",)).detectors
    ('induction',)
    >>> DetectorSpec(detectors=("copying",))
    Traceback (most recent call last):
    ...
    ValueError: unknown detector 'copying'; choose from previous_token, duplicate_token, induction
    """
    detectors: tuple[str, ...] = DETECTORS
    n_sequences: int = 32
    half_length: int = 20
    seed: int = 0

    def __post_init__(self):
        if not self.detectors:
            raise ValueError(f"no detector chosen; choose from {', '.join(DETECTORS)}")
        for name in self.detectors:
            if name not in DETECTORS:
                raise ValueError(f"unknown detector {str(name)[:40]!r}; choose from {', '.join(DETECTORS)}")
        for field_name, low, high in (("n_sequences", 1, MAX_SEQUENCES), ("half_length", 2, 4096)):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"{field_name} must be a whole number from {low} to {high}, not {value!r}")


def repeated_random_tokens(model, n_sequences: int, half_length: int, seed: int = 0) -> Tensor:
    """[n_sequences, 1 + 2 * half_length] token ids: BOS, a random half (no repeats), the half again.

    >>> from patching import load_model
    >>> t = repeated_random_tokens(load_model("default"), 2, 5)
    >>> tuple(t.shape), bool((t[:, 1:6] == t[:, 6:]).all())
    ((2, 11), True)
    """
    vocab = int(model.cfg.d_vocab)
    special = {i for i in (model.bos_token_id, getattr(model.tokenizer, "eos_token_id", None),
                           getattr(model.tokenizer, "pad_token_id", None)) if i is not None}
    pool = torch.tensor([i for i in range(vocab) if i not in special])
    if len(pool) < half_length:
        raise ValueError(f"half_length {half_length} exceeds the {len(pool)} distinct tokens of the vocabulary")
    n_ctx = int(model.n_ctx)
    if 1 + 2 * half_length > n_ctx:
        raise ValueError(f"half_length {half_length} makes {1 + 2 * half_length} tokens; the model takes "
                         f"at most {n_ctx} (half_length <= {(n_ctx - 1) // 2})")
    g = torch.Generator().manual_seed(seed)
    halves = torch.stack([pool[torch.randperm(len(pool), generator=g)[:half_length]] for _ in range(n_sequences)])
    bos = torch.full((n_sequences, 1), model.bos_token_id, dtype=halves.dtype)
    return torch.cat([bos, halves, halves], dim=1).to(model.device)


def attention_patterns(model, tokens: Tensor) -> Tensor:
    """tokens [batch, pos] -> every layer's attention patterns [layer, batch, head, dest, src]."""
    with torch.inference_mode():
        if getattr(model, "runner", None) is not None:
            cache = model.runner.run(tokens)
            return torch.stack([layer.pattern for layer in cache.layers]).float().cpu()
        names = {hooks.pattern(layer) for layer in range(model.n_layers)}
        _, cache = model.bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
        return torch.stack([cache[hooks.pattern(layer)] for layer in range(model.n_layers)]).float().cpu()


def _detector_sources(name: str, n_pos: int, half: int) -> tuple[Tensor, Tensor]:
    """(dest, src) positions whose attention weight the detector averages."""
    if name == "previous_token":
        dest = torch.arange(1, n_pos)
        return dest, dest - 1
    dest = torch.arange(1 + half, n_pos)                 # the second half
    first = dest - half                                   # the same token's first occurrence
    return dest, first if name == "duplicate_token" else first + 1


def head_scores(model, spec: DetectorSpec = DetectorSpec()) -> pd.DataFrame:
    """One row per layer, head and detector: the mean attention weight the detector looks for.

    >>> from patching import load_model
    >>> df = head_scores(load_model("default"), DetectorSpec(("previous_token",), 2, 6))
    >>> len(df) == load_model("default").n_layers * load_model("default").n_heads
    True
    """
    tokens = repeated_random_tokens(model, spec.n_sequences, spec.half_length, spec.seed)
    patterns = attention_patterns(model, tokens)            # [layer, batch, head, dest, src]
    n_layers, _, n_heads, n_pos, _ = patterns.shape
    rows = []
    for name in spec.detectors:
        dest, src = _detector_sources(name, n_pos, spec.half_length)
        score = patterns[..., dest, src].mean(dim=(1, 3))    # [layer, head]
        rows += [(layer, head, name, float(score[layer, head]))
                 for layer in range(n_layers) for head in range(n_heads)]
    return pd.DataFrame(rows, columns=list(DETECTOR_COLUMNS))
