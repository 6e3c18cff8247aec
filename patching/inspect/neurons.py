"""Neuron explorer: MLP neuron activations over a set of prompts, shortlists, clustering.

The typical use is the factual-recall task (cities -> countries): which neurons of which layer
fire on the city or the last token, which prompts make a neuron fire most, which neurons carry
the fact (attribution scores for every neuron, then exact patching of the top ones), and do the
prompts cluster by country in a layer's activation space.

Prompts here are plain texts of any lengths (`encode_texts`, `task_texts`, or the clean /
corrupt prompts of a `PromptSet` via `texts_from_prompts`), right-padded into one batch: under
causal attention padding never changes earlier positions, and padded positions are masked out
of every view. A position `pos` >= 0 is absolute (it must exist in every prompt); a negative one
counts from each prompt's own end (-1 = each prompt's last token).

One forward pass collects every layer's MLP post-activations (`collect_activations` ->
`NeuronActs`, the tensor the views read); the views are pure functions returning long-format
DataFrames:

>>> acts = collect_activations(model, task_texts(model, "factual", 8))
>>> len(top_neurons(acts, layer=2, pos=-1, k=10))
10
>>> top_activating(acts, layer=2, neuron=17, k=10).columns[:4].tolist()
['rank', 'layer', 'neuron', 'prompt']
>>> cluster_prompts(acts, layer=2, pos=-1, method="pca")[["x", "y"]].shape
(8, 2)

"Activation" is what multiplies the MLP's output weights: the post-nonlinearity hidden unit
(gated models: act(gate) * up), TransformerLens' ``blocks.L.mlp.hook_post``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from patching.model import hooks
from patching.model.memory_budget import memory_budget
from patching.core.prompts import PromptSet
from patching.core.spec import check_direction

BY = ("mean", "abs_mean", "max")
METHODS = ("pca", "tsne")


# -- prompts -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Texts:
    """Tokenised prompts of any lengths, right-padded into one batch."""
    texts: tuple[str, ...]
    labels: tuple[str, ...]                        # e.g. the answer (country); "" when none
    tokens: Tensor = field(repr=False)             # [n, T_max] (padding: the pad/BOS id)
    lengths: tuple[int, ...] = ()                  # tokens per prompt (BOS included)
    str_tokens: tuple[tuple[str, ...], ...] = field(default=(), repr=False)
    prepend_bos: bool = True

    @property
    def n(self) -> int:
        return len(self.texts)

    @property
    def mask(self) -> Tensor:
        """[n, T_max] bool: real (not padding) positions."""
        T = self.tokens.shape[1]
        return torch.arange(T)[None, :] < torch.tensor(self.lengths)[:, None]


def encode_texts(model, texts, labels=None, prepend_bos: bool = True) -> Texts:
    """Tokenise prompts (BOS prepended by default), right-padded; ValueError on empty input.

    >>> encode_texts(model, ["Paris is a city in", "Rome is"], ["France", "Italy"]).lengths
    (6, 3)
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("no prompts: give at least one text")
    if labels is None:
        labels = [""] * len(texts)
    labels = [str(l) for l in labels]
    if len(labels) != len(texts):
        raise ValueError(f"{len(labels)} labels for {len(texts)} prompts; give one label per prompt")
    ids = []
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t:
            raise ValueError(f"prompt {i} is empty; every prompt needs some text")
        tok = model.encode(t)
        if prepend_bos and model.bos_token_id is not None:
            tok = [model.bos_token_id] + tok
        if not tok:
            raise ValueError(f"prompt {i} ({t!r}) has no tokens")
        ids.append(tok)
    n_ctx = getattr(model, "n_ctx", None)
    longest = max(len(t) for t in ids)
    if n_ctx and longest > n_ctx:
        raise ValueError(f"a prompt has {longest} tokens; the model's context is {n_ctx}")
    pad = model.bos_token_id if model.bos_token_id is not None else 0
    tokens = torch.full((len(ids), longest), pad, dtype=torch.long)
    for i, t in enumerate(ids):
        tokens[i, :len(t)] = torch.tensor(t)
    tokens = tokens.to(model.device)
    dec = {}
    str_tokens = tuple(tuple(dec.setdefault(j, model.tokenizer.decode([j])) for j in t) for t in ids)
    return Texts(tuple(texts), tuple(labels), tokens, tuple(len(t) for t in ids), str_tokens, prepend_bos)


def texts_from_prompts(prompts: PromptSet, model, run: str = "clean") -> Texts:
    """The clean (labels: answers) or corrupt (labels: wrong tokens) prompts of a PromptSet."""
    if run not in ("clean", "corrupt"):
        raise ValueError(f"run must be 'clean' or 'corrupt', not {run!r}")
    texts = [p.clean if run == "clean" else p.corrupt for p in prompts.pairs]
    labels = [(p.answer if run == "clean" else p.wrong).strip() for p in prompts.pairs]
    return encode_texts(model, texts, labels, prepend_bos=prompts.prepend_bos)


def task_texts(model, task: str = "factual", n: int = 32, *, seed: int = 0, split: str = "eval",
               prepend_bos: bool = True) -> Texts:
    """The clean prompts of a task (patching/tasks/families.py), labelled by their answer (e.g. country).

    >>> task_texts(model, "factual", 4).labels
    ('Spain', 'Spain', 'Mexico', 'Italy')
    """
    from patching.tasks.families import make_pairs
    pairs = make_pairs(task, n, split=split, seed=seed)
    return encode_texts(model, [p.clean for p in pairs], [p.answer.strip() for p in pairs], prepend_bos)


def task_prompt_set(model, task: str = "factual", n: int = 32, *, seed: int = 0, split: str = "eval",
                    prepend_bos: bool = True) -> PromptSet:
    """Pairs of a task as a PromptSet for patching: the largest group of usable pairs of one length.

    Task pairs vary in length (cities tokenise differently), and a PromptSet needs one length:
    pairs whose clean and corrupt prompts differ in length or whose answers are not single
    tokens are dropped, then the most common length is kept (ties: the shorter).

    >>> task_prompt_set(model, "factual", 64).n_pairs
    28
    """
    from patching.tasks.families import make_pairs
    groups: dict[int, list] = {}
    for p in make_pairs(task, n, split=split, seed=seed):
        try:
            one = PromptSet.from_pairs(model, [p], prepend_bos=prepend_bos)
        except ValueError:
            continue
        groups.setdefault(one.n_pos, []).append(p)
    if not groups:
        raise ValueError(f"none of {n} {task!r} pairs tokenise to equal-length clean/corrupt prompts "
                         f"with single-token answers on model {getattr(model, 'name', '')!r}")
    length = max(groups, key=lambda L: (len(groups[L]), -L))
    return PromptSet.from_pairs(model, groups[length], prepend_bos=prepend_bos)


# -- activations ---------------------------------------------------------------------------------
FLOAT_BYTES = 4                 # activations are kept as float32


def activation_bytes(model, texts: Texts) -> int:
    """Bytes `collect_activations` keeps for `texts`: layers × prompts × longest × d_mlp × 4.

    >>> activation_bytes(model, encode_texts(model, ["Paris is", "a"]))   # 4 layers, 2 prompts, 3 tokens, 512
    49152
    """
    return model.n_layers * texts.n * int(texts.tokens.shape[1]) * _d_mlp(model) * FLOAT_BYTES


def _d_mlp(model) -> int:
    arch = getattr(model, "arch", None)
    return int(arch.d_mlp) if arch is not None else int(model.cfg.d_mlp)


def _size(n: float) -> str:
    """'24.0 KiB', '3.0 MiB', '1.50 GiB'.

    >>> _size(24 * 2**10), _size(3 * 2**20), _size(1.5 * 2**30)
    ('24.0 KiB', '3.0 MiB', '1.50 GiB')
    """
    if n < 2**20:
        return f"{n / 2**10:.1f} KiB"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_fits(model, texts: Texts, max_memory_mb: float | None = None) -> int:
    """The activations' bytes, or ValueError naming their size, its factors and the budget.

    >>> check_fits(model, encode_texts(model, ["Paris is"]), max_memory_mb=0.01)
    Traceback (most recent call last):
    ...
    ValueError: the prompts' activations need 24.0 KiB (1 prompts × 3 tokens (the longest, padded) × 4 layers × 512 neurons × 4 bytes = 24,576 bytes); the memory budget is 10.2 KiB (10,485 bytes): load fewer or shorter prompts
    """
    need = activation_bytes(model, texts)
    cap = memory_budget("cpu", max_memory_mb)
    if need > cap:
        raise ValueError(f"the prompts' activations need {_size(need)} ({texts.n:,} prompts × {texts.tokens.shape[1]:,} "
                         f"tokens (the longest, padded) × {model.n_layers} layers × {_d_mlp(model):,} neurons × "
                         f"{FLOAT_BYTES} bytes = {need:,} bytes); the memory budget is {_size(cap)} ({int(cap):,} "
                         "bytes): load fewer or shorter prompts")
    return need


@dataclass(frozen=True)
class NeuronActs:
    """Every layer's MLP post-activations for a batch of prompts (float32, CPU)."""
    texts: Texts
    acts: Tensor = field(repr=False)          # [n_layers, n, T_max, d_mlp]; padding is 0
    model_name: str = ""

    @property
    def n_layers(self) -> int:
        return self.acts.shape[0]

    @property
    def d_mlp(self) -> int:
        return self.acts.shape[-1]


@torch.inference_mode()
def collect_activations(model, texts: Texts, *, batch_size: int = 32, max_memory_mb: float | None = None) -> NeuronActs:
    """One forward pass (in batches of prompts) keeping every layer's MLP post-activations.

    Uses the engine's runner; models without one go through TransformerLens' hooks
    (``blocks.L.mlp.hook_post``). Refused before any forward when the activations would not fit
    the memory budget (`check_fits`; `max_memory_mb` overrides the device default).

    >>> collect_activations(model, encode_texts(model, ["Paris is"])).acts.shape   # [layer, prompt, pos, neuron]
    torch.Size([4, 1, 3, 512])
    """
    if not isinstance(texts, Texts):
        raise ValueError(f"texts must be a Texts (encode_texts / task_texts), not {type(texts).__name__}")
    check_fits(model, texts, max_memory_mb)
    parts = []
    for lo in range(0, texts.n, batch_size):
        tok = texts.tokens[lo:lo + batch_size]
        if getattr(model, "runner", None) is not None:
            cache = model.runner.run(tok)
            parts.append(torch.stack([lc.mlp_post.float().cpu() for lc in cache.layers]))
        else:
            names = [hooks.mlp_post(l) for l in range(model.n_layers)]
            _, cache = model.bridge.run_with_cache(tok, names_filter=lambda n: n in names)
            parts.append(torch.stack([cache[n].float().cpu() for n in names]))
    acts = torch.cat(parts, dim=1) * texts.mask[None, :, :, None]
    return NeuronActs(texts, acts, getattr(model, "name", ""))


# -- validation ----------------------------------------------------------------------------------
def _int(value, what: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise ValueError(f"{what} must be an integer, not {value!r}")
    return int(value)


def _layer(acts: NeuronActs, layer) -> int:
    layer = _int(layer, "layer")
    if not -acts.n_layers <= layer < acts.n_layers:
        raise ValueError(f"layer {layer} is out of range: the model has {acts.n_layers} layers "
                         f"(0..{acts.n_layers - 1}, or -1 for the last)")
    return layer % acts.n_layers


def _neuron(acts: NeuronActs, neuron) -> int:
    neuron = _int(neuron, "neuron")
    if not 0 <= neuron < acts.d_mlp:
        raise ValueError(f"neuron {neuron} is out of range: each layer has {acts.d_mlp} neurons "
                         f"(0..{acts.d_mlp - 1})")
    return neuron


def positions(texts: Texts, pos) -> Tensor:
    """The absolute position [n] of `pos` in each prompt (negative: from each prompt's end).

    >>> positions(encode_texts(model, ["a b c", "a"]), -1)
    tensor([3, 1])
    """
    pos = _int(pos, "pos")
    lengths = torch.tensor(texts.lengths)
    shortest = int(lengths.min())
    if pos >= 0:
        if pos >= shortest:
            raise ValueError(f"pos {pos} is out of range: the shortest prompt has {shortest} tokens "
                             f"(0..{shortest - 1}); use a negative pos to count from each prompt's end")
        return torch.full_like(lengths, pos)
    if -pos > shortest:
        raise ValueError(f"pos {pos} is out of range: the shortest prompt has {shortest} tokens "
                         f"(-1..-{shortest})")
    return lengths + pos


def _at(acts: NeuronActs, layer: int, pos) -> tuple[Tensor, Tensor]:
    """Activations of one layer at `pos` of every prompt [n, d_mlp] (pos None: every real token,
    [n_tokens, d_mlp]) and the (prompt, position) of each row [rows, 2]."""
    a = acts.acts[layer]
    if pos is None:
        where = acts.texts.mask.nonzero()
    else:
        p = positions(acts.texts, pos)
        where = torch.stack((torch.arange(acts.texts.n), p), 1)
    return a[where[:, 0], where[:, 1]], where


# -- views -----------------------------------------------------------------------------------------
TOP_COLUMNS = ("layer", "pos", "rank", "neuron", "mean", "abs_mean", "std", "min", "max", "frac_active",
               "n_rows")


def top_neurons(acts: NeuronActs, layer: int, pos: int | None = -1, *, k: int = 20,
                by: str = "mean") -> pd.DataFrame:
    """The k neurons of `layer` with the highest activation at `pos` over all prompts.

    pos None = every (non-padding) token of every prompt. by: mean | abs_mean | max (over rows).
    Columns: layer, pos (as given; empty for every token), rank (1 = top), neuron, mean,
    abs_mean, std, min, max, frac_active (share of rows > 0), n_rows.

    >>> acts = collect_activations(model, task_texts(model, "factual", 8))
    >>> top_neurons(acts, layer=1, pos=-1, k=5)[["rank", "neuron"]].shape
    (5, 2)
    """
    layer = _layer(acts, layer)
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)}, not {by!r}")
    k = _int(k, "k")
    if not 1 <= k <= acts.d_mlp:
        raise ValueError(f"k must be from 1 to the layer's {acts.d_mlp} neurons, not {k}")
    x, _ = _at(acts, layer, pos)                                          # [rows, d_mlp]
    stats = {"mean": x.mean(0), "abs_mean": x.abs().mean(0), "max": x.max(0).values}
    order = stats[by].topk(k).indices
    std = x.std(0) if x.shape[0] > 1 else torch.full((acts.d_mlp,), float("nan"))
    return pd.DataFrame({
        "layer": layer, "pos": pd.array([pos] * k, dtype="Int64"), "rank": np.arange(1, k + 1),
        "neuron": order.numpy(), "mean": stats["mean"][order].numpy(),
        "abs_mean": stats["abs_mean"][order].numpy(), "std": std[order].numpy(),
        "min": x.min(0).values[order].numpy(), "max": stats["max"][order].numpy(),
        "frac_active": (x > 0).float().mean(0)[order].numpy(), "n_rows": x.shape[0],
    })[list(TOP_COLUMNS)]


PROFILE_COLUMNS = ("layer", "neuron", "prompt", "label", "pos", "pos_from_end", "token", "activation")


def neuron_profile(acts: NeuronActs, layer: int, neuron: int) -> pd.DataFrame:
    """One neuron's activation at every token of every prompt (padding left out).

    Columns: layer, neuron, prompt (index), label, pos, pos_from_end (-1 = last), token,
    activation.

    >>> acts = collect_activations(model, task_texts(model, "factual", 8))
    >>> neuron_profile(acts, 1, 7).pivot(index="prompt", columns="pos", values="activation").shape[0]
    8
    """
    layer, neuron = _layer(acts, layer), _neuron(acts, neuron)
    t = acts.texts
    where = t.mask.nonzero()
    prompt, pos = where[:, 0].numpy(), where[:, 1].numpy()
    lengths = np.asarray(t.lengths)
    return pd.DataFrame({
        "layer": layer, "neuron": neuron, "prompt": prompt, "label": [t.labels[i] for i in prompt],
        "pos": pos, "pos_from_end": pos - lengths[prompt], "token": [t.str_tokens[i][p] for i, p in zip(prompt, pos)],
        "activation": acts.acts[layer, where[:, 0], where[:, 1], neuron].numpy(),
    })[list(PROFILE_COLUMNS)]


TOP_ACTIVATING_COLUMNS = ("rank", "layer", "neuron", "prompt", "label", "pos", "token", "activation",
                          "left", "right", "text")


def top_activating(acts: NeuronActs, layer: int, neuron: int, *, k: int = 20, pos: int | None = None,
                   context: int = 8) -> pd.DataFrame:
    """The k (prompt, token) places where a neuron fires most.

    pos None = every token; an int = only that position of each prompt. left / right: up to
    `context` tokens either side of the token (text, for a table that highlights the token);
    text: the whole prompt.

    Columns: rank, layer, neuron, prompt, label, pos, token, activation, left, right, text.

    >>> acts = collect_activations(model, task_texts(model, "factual", 8))
    >>> top_activating(acts, 1, 7, k=3)[["token", "activation", "left"]].shape
    (3, 3)
    """
    layer, neuron = _layer(acts, layer), _neuron(acts, neuron)
    k = _int(k, "k")
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    x, where = _at(acts, layer, pos)
    vals = x[:, neuron]
    k = min(k, len(vals))
    top = vals.topk(k)
    t = acts.texts
    rows = []
    for r, (v, i) in enumerate(zip(top.values.tolist(), top.indices.tolist()), 1):
        p, q = int(where[i, 0]), int(where[i, 1])
        toks = t.str_tokens[p]
        left = "".join(toks[max(0, q - context):q])
        right = "".join(toks[q + 1:q + 1 + context])
        rows.append((r, layer, neuron, p, t.labels[p], q, toks[q], v, left, right, t.texts[p]))
    return pd.DataFrame(rows, columns=list(TOP_ACTIVATING_COLUMNS))


ACTIVATION_COLUMNS = ("layer", "prompt", "label", "pos", "token", "neuron", "activation")


def activations_frame(acts: NeuronActs, layer: int, pos: int | None = -1) -> pd.DataFrame:
    """Every neuron's activation of `layer` at `pos` (None: every token), long format.

    Columns: layer, prompt, label, pos, token, neuron, activation. Rows: prompts × tokens ×
    d_mlp, so pick a layer and a position for large models.
    """
    layer = _layer(acts, layer)
    x, where = _at(acts, layer, pos)
    n_rows, d = x.shape
    t = acts.texts
    prompt = np.repeat(where[:, 0].numpy(), d)
    p = np.repeat(where[:, 1].numpy(), d)
    return pd.DataFrame({
        "layer": layer, "prompt": prompt, "label": [t.labels[i] for i in prompt], "pos": p,
        "token": [t.str_tokens[i][j] for i, j in zip(prompt, p)],
        "neuron": np.tile(np.arange(d), n_rows), "activation": x.reshape(-1).numpy(),
    })[list(ACTIVATION_COLUMNS)]


# -- clustering ----------------------------------------------------------------------------------
CLUSTER_COLUMNS = ("method", "layer", "pos", "prompt", "label", "token", "text", "x", "y",
                   "explained_x", "explained_y")


def pca(x: Tensor, n_components: int = 2) -> tuple[Tensor, Tensor]:
    """PCA by SVD of the centred data: x [n, d] -> (coordinates [n, c], explained variance ratio [c]).

    Signs are fixed so that each component's largest-magnitude loading is positive.

    >>> pca(torch.tensor([[0., 0.], [2., 0.], [4., 0.]]))[1]
    tensor([1., 0.], dtype=torch.float64)
    """
    x = x.double()
    xc = x - x.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    c = min(n_components, vh.shape[0])
    vh = vh[:c]
    sign = torch.sign(vh.gather(1, vh.abs().argmax(1, keepdim=True)))
    sign[sign == 0] = 1
    vh = vh * sign
    total = (s ** 2).sum()
    ratio = (s[:c] ** 2) / total if total > 0 else torch.zeros(c, dtype=torch.float64)
    coords = xc @ vh.T
    if c < n_components:                               # fewer prompts / dims than components
        coords = torch.cat((coords, torch.zeros(len(x), n_components - c, dtype=coords.dtype)), 1)
        ratio = torch.cat((ratio, torch.zeros(n_components - c, dtype=ratio.dtype)))
    return coords, ratio


def tsne_available() -> bool:
    try:
        import sklearn.manifold  # noqa: F401
        return True
    except ImportError:
        return False


def cluster_prompts(acts: NeuronActs, layer: int, pos: int = -1, *, method: str = "pca",
                    perplexity: float | None = None, seed: int = 0) -> pd.DataFrame:
    """Each prompt as a 2-D point from `layer`'s neuron activations at `pos`, with its label.

    method "pca" (torch SVD; explained_x / explained_y: explained variance ratios) or "tsne"
    (scikit-learn's TSNE on the PCA-50 reduced data, seeded; perplexity default
    min(30, (n - 1) / 3); explained columns empty).

    Columns: method, layer, pos, prompt, label, token (at pos), text, x, y, explained_x,
    explained_y.

    >>> acts = collect_activations(model, task_texts(model, "factual", 8))
    >>> cluster_prompts(acts, 2, -1).groupby("label")[["x", "y"]].mean().shape[1]
    2
    """
    layer = _layer(acts, layer)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    x, where = _at(acts, layer, pos)
    n = x.shape[0]
    if method == "pca":
        if n < 2:
            raise ValueError(f"PCA needs at least 2 prompts, got {n}")
        coords, ratio = pca(x, 2)
        ex, ey = float(ratio[0]), float(ratio[1])
    else:
        if not tsne_available():
            raise ValueError("t-SNE needs scikit-learn, which is not installed here "
                             "(pip install scikit-learn); PCA works without it")
        if n < 4:
            raise ValueError(f"t-SNE needs at least 4 prompts, got {n}")
        from sklearn.manifold import TSNE
        perp = perplexity if perplexity is not None else min(30.0, (n - 1) / 3)
        if not 0 < perp < n:
            raise ValueError(f"perplexity must be between 0 and the number of prompts {n}, not {perp}")
        reduced, _ = pca(x, min(50, n, x.shape[1]))
        coords = torch.from_numpy(TSNE(n_components=2, perplexity=perp, random_state=seed,
                                       init="pca").fit_transform(reduced.numpy()))
        ex = ey = float("nan")
    t = acts.texts
    prompt = where[:, 0].numpy()
    return pd.DataFrame({
        "method": method, "layer": layer, "pos": pos, "prompt": prompt,
        "label": [t.labels[i] for i in prompt],
        "token": [t.str_tokens[i][j] for i, j in zip(prompt, where[:, 1].tolist())],
        "text": [t.texts[i] for i in prompt],
        "x": coords[:, 0].numpy(), "y": coords[:, 1].numpy(), "explained_x": ex, "explained_y": ey,
    })[list(CLUSTER_COLUMNS)]


# -- shortlist: attribution for every neuron, exact patching of the top ones ----------------------
SHORTLIST_COLUMNS = ("layer", "neuron", "attribution", "attribution_rank", "exact", "exact_normalized",
                     "clean_baseline", "corrupt_baseline", "metric", "direction", "n_pairs")


@torch.inference_mode()
def exact_neuron_patch(model, prompts: PromptSet, neurons, *, positions=None, metric="logit_diff",
                       direction: str = "denoise") -> pd.DataFrame:
    """Exact patching of chosen neurons (each alone), through the engine's `neuron` kind.

    neurons: (layer, neuron) pairs. positions: where the patch applies (None = all).
    Columns: layer, neuron, value (mean patched metric), normalized, clean_baseline,
    corrupt_baseline. Matches `sweep(PatchSpec(kind="neuron", ...))` cell for cell.

    >>> exact_neuron_patch(model, prompts, [(1, 7), (2, 30)], positions=[5])[["layer", "neuron"]]
       layer  neuron
    0      1       7
    1      2      30
    """
    from metrics import get_metric
    from patching.kinds import KINDS, PatchContext
    from patching.methods.pair import CachedPair
    if getattr(model, "runner", None) is None:
        raise ValueError(f"exact neuron patching of chosen neurons needs the engine's runner, which model "
                         f"{model.name!r} does not have; use sweep(PatchSpec(kind='neuron', layers=...))")
    check_direction(direction)
    metric = get_metric(metric)
    a = model.arch
    neurons = [(int(l), int(n)) for l, n in neurons]
    for l, n in neurons:
        if not 0 <= l < a.n_layers or not 0 <= n < a.d_mlp:
            raise ValueError(f"neuron ({l}, {n}) is out of range: the model has {a.n_layers} layers of "
                             f"{a.d_mlp} neurons")
    runner = model.runner
    runs = CachedPair.run(runner, prompts, metric, direction)
    cb, xb = runs.clean_baseline.mean().item(), runs.corrupt_baseline.mean().item()
    mask = torch.zeros(prompts.n_pos, dtype=torch.bool, device=runs.pairs.device)
    if positions is not None:
        bad = [p for p in positions if not 0 <= int(p) < prompts.n_pos]
        if bad:
            raise ValueError(f"positions {bad} out of range; the prompts have {prompts.n_pos} tokens")
    mask[list(positions) if positions is not None else slice(None)] = True
    ctx = PatchContext(runner, runs.base, runs.donor, mask)
    kind = KINDS["neuron"]
    values = {}
    for layer in sorted({l for l, _ in neurons}):
        ns = [n for l, n in neurons if l == layer]
        for lo in range(0, len(ns), 16):
            idx = torch.tensor(ns[lo:lo + 16], dtype=torch.long, device=runs.pairs.device)[:, None]
            patched = kind.patch(ctx, layer, idx)
            _, pair = ctx.rows(len(idx))
            logits = runner.resume(runs.base, pair, layer, patched.stage, patched.resid, patched.p0)
            v = runs.measure(logits, pair).view(len(idx), prompts.n_pairs).mean(1)
            for n, val in zip(ns[lo:lo + 16], v.tolist()):
                values[(layer, n)] = val
    gap = cb - xb
    return pd.DataFrame({
        "layer": [l for l, _ in neurons], "neuron": [n for _, n in neurons],
        "value": [values[ln] for ln in neurons],
        "normalized": [(values[ln] - xb) / gap if abs(gap) > 1e-12 else float("nan") for ln in neurons],
        "clean_baseline": cb, "corrupt_baseline": xb,
    })


def neuron_shortlist(model, prompts: PromptSet, *, layers=None, positions=None, top: int = 20,
                     metric="logit_diff", direction: str = "denoise", exact: bool = True) -> pd.DataFrame:
    """Attribution-patching scores for every neuron, then exact patching of the `top` ones.

    The attribution estimate (one backward pass, `run_attribution(kinds=("neuron",))`) ranks all
    neurons of `layers` (None = all) by |estimated patched metric - base run's metric|; the top
    ones are then patched exactly (`exact_neuron_patch`). positions: where patches apply (None =
    every position; for facts, e.g. the city's last token).

    Columns: layer, neuron, attribution (estimated patched metric, mean over pairs),
    attribution_rank (1 = largest estimated effect), exact (patched metric; empty when exact is
    False), exact_normalized (1 = as clean, 0 = as corrupt), clean_baseline, corrupt_baseline,
    metric, direction, n_pairs. Rows: the top neurons, by attribution rank.

    >>> neuron_shortlist(model, prompts, layers=[3], positions=[4], top=2)[["attribution_rank", "layer"]]
       attribution_rank  layer
    0                 1      3
    1                 2      3
    """
    from patching.methods.attribution import run_attribution
    top = _int(top, "top")
    if top < 1:
        raise ValueError(f"top must be at least 1, not {top}")
    (res,) = run_attribution(model, prompts, kinds=("neuron",), metric=metric, direction=direction,
                             positions=tuple(int(p) for p in positions) if positions is not None else None)
    vals = res.values                                                    # [layer, neuron]
    layer_coords = list(res.coords["layer"])
    if layers is not None:
        layers = [int(l) % model.n_layers if -model.n_layers <= int(l) < model.n_layers else int(l)
                  for l in layers]
        bad = [l for l in layers if l not in layer_coords]
        if bad:
            raise ValueError(f"layers {bad} out of range; the model has {model.n_layers} layers "
                             f"(0..{model.n_layers - 1})")
        keep = [layer_coords.index(l) for l in layers]
    else:
        keep = list(range(len(layer_coords)))
    base_value = res.base_value
    sub = vals[keep]
    effect = (sub - base_value).abs().reshape(-1)
    top = min(top, effect.numel())
    order = effect.topk(top).indices
    n_neurons = sub.shape[1]
    chosen = [(layer_coords[keep[int(i) // n_neurons]], res.coords["neuron"][int(i) % n_neurons]) for i in order]
    df = pd.DataFrame({
        "layer": [l for l, _ in chosen], "neuron": [n for _, n in chosen],
        "attribution": [float(sub.reshape(-1)[i]) for i in order],
        "attribution_rank": np.arange(1, top + 1),
    })
    if exact:
        ex = exact_neuron_patch(model, prompts, chosen, positions=positions, metric=metric, direction=direction)
        df["exact"], df["exact_normalized"] = ex["value"].to_numpy(), ex["normalized"].to_numpy()
    else:
        df["exact"], df["exact_normalized"] = np.nan, np.nan
    df["clean_baseline"], df["corrupt_baseline"] = res.clean_value, res.corrupt_value
    df["metric"] = res.spec.metric
    df["direction"], df["n_pairs"] = direction, prompts.n_pairs
    return df[list(SHORTLIST_COLUMNS)]


__all__ = ["Texts", "NeuronActs", "activation_bytes", "check_fits", "encode_texts", "texts_from_prompts", "task_texts", "collect_activations",
           "task_prompt_set", "positions", "top_neurons", "neuron_profile", "top_activating", "activations_frame", "pca",
           "cluster_prompts", "tsne_available", "exact_neuron_patch", "neuron_shortlist"]
