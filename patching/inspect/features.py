"""Feature pages: what one SAE feature reads and writes, and where patching it matters.

For feature `f` of the SAE at layer `L`'s block input (patching/model/sae.py):
- **top-activating contexts** over a prompt dataset (`task_texts`, `encode_texts`, a file read
  with `read_texts`), the token with up to `context` tokens on both sides;
- an **activation histogram** (non-zero activations; the share of tokens it is active on);
- its **logit effects**: the decoder direction W_dec[f] through the unembedding, W_U W_dec[f]
  (no final layer norm, as Neuronpedia shows them): the tokens it promotes and suppresses most;
- the **tasks where patching it matters**: the exact effect of patching this one feature (kind
  `feature`, one cell) on each task's pairs, in logit-difference units and normalised.

Activations reuse the neuron explorer's machinery (`patching.inspect.neurons`): the same `Texts`,
padding and masking, with an SAE's features in place of MLP neurons.

>>> from patching.inspect.neurons import encode_texts, task_texts
>>> page = feature_page(model, layer=2, feature=5, texts=task_texts(model, "ioi", 16))
>>> sorted(page.logit_effects["direction"].unique())
['promoted', 'suppressed']
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from patching.inspect.neurons import NeuronActs, Texts, _int, top_activating
from patching.model.sae import Sae, model_saes


@torch.inference_mode()
def collect_feature_activations(model, texts: Texts, saes: dict[int, Sae] | None = None, *,
                                batch_size: int = 32) -> NeuronActs:
    """Every SAE's feature activations on `texts`: acts [n_layers, n, T_max, d_sae] (padding 0).

    >>> from patching.inspect.neurons import encode_texts
    >>> collect_feature_activations(model, encode_texts(model, ["Paris is"])).acts.shape
    torch.Size([4, 1, 3, 512])
    """
    from patching.model.loading import require_runner
    saes = model_saes(model) if saes is None else saes
    runner = require_runner(model, "feature activations")
    layers = sorted(saes)
    if layers != list(range(model.n_layers)):
        raise ValueError(f"feature pages need an SAE on every layer's block input; SAEs on layers {layers}")
    parts = []
    for lo in range(0, texts.n, batch_size):
        cache = runner.run(texts.tokens[lo:lo + batch_size])
        parts.append(torch.stack([saes[layer].encode(cache.layers[layer].resid_pre).float().cpu()
                                  for layer in layers]))
    acts = torch.cat(parts, dim=1) * texts.mask[None, :, :, None]
    return NeuronActs(texts, acts, getattr(model, "name", ""))


def _feature(acts: NeuronActs, layer, feature) -> tuple[int, int]:
    layer, feature = _int(layer, "layer"), _int(feature, "feature")
    if not 0 <= layer < acts.n_layers:
        raise ValueError(f"layer {layer} is out of range: SAEs on layers 0..{acts.n_layers - 1}")
    if not 0 <= feature < acts.d_mlp:
        raise ValueError(f"feature {feature} is out of range: each SAE has {acts.d_mlp} features "
                         f"(0..{acts.d_mlp - 1})")
    return layer, feature


def top_contexts(acts: NeuronActs, layer: int, feature: int, *, k: int = 20, context: int = 8) -> pd.DataFrame:
    """The k tokens where the feature is most active, with `context` tokens either side.

    Columns: rank, layer, feature, prompt, label, pos, token, activation, left, right, text.
    """
    layer, feature = _feature(acts, layer, feature)
    return top_activating(acts, layer, feature, k=k, context=context).rename(columns={"neuron": "feature"})


HISTOGRAM_COLUMNS = ("bin_low", "bin_high", "count")


def histogram(acts: NeuronActs, layer: int, feature: int, *, bins: int = 30) -> tuple[pd.DataFrame, float]:
    """(histogram of the feature's non-zero activations over every real token, share of tokens
    where it is active)."""
    layer, feature = _feature(acts, layer, feature)
    values = acts.acts[layer][acts.texts.mask][:, feature]
    active = values[values > 0].numpy()
    frac = float(len(active) / max(1, len(values)))
    if len(active) == 0:
        return pd.DataFrame(columns=list(HISTOGRAM_COLUMNS)), 0.0
    counts, edges = np.histogram(active, bins=bins)
    return pd.DataFrame({"bin_low": edges[:-1], "bin_high": edges[1:], "count": counts}), frac


LOGIT_COLUMNS = ("direction", "rank", "token_id", "token", "effect")


def logit_effects(model, sae: Sae, feature: int, *, k: int = 10) -> pd.DataFrame:
    """The k tokens W_U W_dec[feature] promotes most and the k it suppresses most."""
    feature = _int(feature, "feature")
    if not 0 <= feature < sae.d_sae:
        raise ValueError(f"feature {feature} is out of range: the SAE has {sae.d_sae} features")
    w_u = model.hf.get_output_embeddings().weight                  # [vocab, d_model]
    with torch.no_grad():
        effects = (w_u @ sae.W_dec[feature].to(w_u.dtype)).float().cpu()
    rows = []
    for direction, top in (("promoted", effects.topk(k)), ("suppressed", (-effects).topk(k))):
        for r, i in enumerate(top.indices.tolist(), 1):
            rows.append((direction, r, i, model.tokenizer.decode([i]), float(effects[i])))
    return pd.DataFrame(rows, columns=list(LOGIT_COLUMNS))


TASK_COLUMNS = ("task", "n_pairs", "clean", "corrupt", "patched", "effect", "normalized")


def task_effects(model, layer: int, feature: int, *, tasks=None, n: int = 16, saes: str | None = None,
                 direction: str = "denoise") -> pd.DataFrame:
    """The exact effect of patching this one feature (kind `feature`, one cell) on each task's
    pairs (`task_prompt_set`), in the task metric's units (logit difference) and normalised."""
    from patching.core.spec import PatchSpec
    from patching.inspect.neurons import task_prompt_set
    from patching.methods.sweep import sweep
    from patching.tasks.families import TASKS
    rows = []
    for task in tasks or tuple(TASKS):
        prompts = task_prompt_set(model, task, n)
        spec = PatchSpec(kind="feature", layers=(layer,), direction=direction, saes=saes, model=model.name)
        result = sweep(model, prompts, spec, cells=[(layer, feature)])
        base = result.corrupt_value if direction == "denoise" else result.clean_value
        patched = float(result.values[0, feature])
        rows.append((task, prompts.n_pairs, result.clean_value, result.corrupt_value, patched, patched - base,
                     float(result.normalized[0, feature])))
    return pd.DataFrame(rows, columns=list(TASK_COLUMNS))


@dataclass(frozen=True)
class FeaturePage:
    """Everything a feature page shows, as DataFrames (each also written as CSV)."""
    layer: int
    feature: int
    contexts: pd.DataFrame = field(repr=False)
    histogram: pd.DataFrame = field(repr=False)
    frac_active: float
    logit_effects: pd.DataFrame = field(repr=False)
    tasks: pd.DataFrame | None = field(default=None, repr=False)


def feature_page(model, layer: int, feature: int, texts: Texts, *, saes: str | None = None, k: int = 20,
                 with_tasks: bool = False, acts: NeuronActs | None = None) -> FeaturePage:
    """A feature's page over `texts` (pass `acts` to reuse collected activations)."""
    sae_set = model_saes(model, saes)
    acts = acts if acts is not None else collect_feature_activations(model, texts, sae_set)
    hist, frac = histogram(acts, layer, feature)
    return FeaturePage(layer, feature, top_contexts(acts, layer, feature, k=k), hist, frac,
                       logit_effects(model, sae_set[layer], feature),
                       task_effects(model, layer, feature, saes=saes) if with_tasks else None)
