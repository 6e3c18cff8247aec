"""The neuron explorer's prompt datasets: read a text file or CSV, refuse what the memory budget
cannot hold, search the prompts, and the views on one dataset that `neurons.py` lacked (every
layer's neurons at one token, a neuron's activation histogram, the cluster view coloured by a
neuron).

A dataset is a plain text file (one prompt a line, blank lines skipped) or a CSV with a `text`
column and an optional `label` column. Its activations (`neurons.collect_activations`) are every
layer's MLP post-activations of every token, right-padded to the longest prompt, float32:
n_layers × prompts × longest × d_mlp × 4 bytes; `neurons.check_fits` (called by `collect_activations`)
refuses a set larger than the memory budget (`model/memory_budget.py`, on the CPU where they are
kept), naming both.

>>> texts, labels = read_texts(b"text,label\\nParis is in,France\\nRome is in,Italy\\n", "cities.csv")
>>> texts, labels
(['Paris is in', 'Rome is in'], ['France', 'Italy'])
>>> search(["Paris is in", "Rome is in"], "rome")
[1]
"""
from __future__ import annotations

import csv
import io

import numpy as np
import pandas as pd

from patching.inspect.neurons import NeuronActs, Texts, _at, _int, _layer, _neuron, cluster_prompts
from patching.inspect.neurons import collect_activations, encode_texts, task_texts  # noqa: F401  (the examples')

MAX_QUERY = 200                 # characters of a search text or pattern
SEARCH_SECONDS = 2.0            # a regular expression's time over the whole set


def read_texts(data: bytes | str, name: str = "prompts.txt") -> tuple[list[str], list[str] | None]:
    """(prompts, labels or None) from a file's content: a CSV (name ends in .csv) with a `text`
    column and an optional `label` column, else one prompt a line; ValueError naming what is wrong.

    >>> read_texts("a b\\n\\n c d\\n")
    (['a b', ' c d'], None)
    >>> read_texts(b"prompt\\nx\\n", "p.csv")
    Traceback (most recent call last):
    ...
    ValueError: texts CSV 'p.csv' needs a 'text' column (and optionally 'label'); its columns are prompt
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{name!r} is not UTF-8 text (byte {exc.start} is {data[exc.start:exc.start + 1]!r}); "
                             "save it as UTF-8") from None
    if "\x00" in data:
        raise ValueError(f"{name!r} holds NUL bytes: it looks like a binary file, not text or CSV")
    if name.lower().endswith(".csv"):
        try:
            rows = list(csv.DictReader(io.StringIO(data)))
        except csv.Error as exc:
            raise ValueError(f"texts CSV {name!r} cannot be parsed: {exc}") from None
        header = next(csv.reader(io.StringIO(data)), [])
        if "text" not in header:
            raise ValueError(f"texts CSV {name!r} needs a 'text' column (and optionally 'label'); its columns are "
                             f"{', '.join(header)[:200] or '(none)'}")
        rows = [r for r in rows if (r.get("text") or "").strip()]
        texts, labels = [r["text"] for r in rows], [r.get("label") or "" for r in rows]
    else:
        texts, labels = [line for line in data.splitlines() if line.strip()], None
    if not texts:
        raise ValueError(f"{name!r} has no prompts: give one prompt a line, or a CSV with a 'text' column")
    return texts, labels


def search(texts, query: str | None, regex: bool = False, timeout: float = SEARCH_SECONDS) -> list[int]:
    """Indices of the prompts containing `query` (case-insensitive), or matching it as a regular
    expression (the `regex` module, `re`'s syntax, case-insensitive); every index for an empty
    query. A pattern may run `timeout` seconds over the whole set (a pattern that backtracks
    without end cannot hold a server).

    >>> search(["Paris is", "Rome is", "Oslo"], r"^(paris|oslo)", regex=True)
    [0, 2]
    >>> search(["a"], "(", regex=True)
    Traceback (most recent call last):
    ...
    ValueError: search pattern '(' is not a regular expression: missing ) at position 1
    """
    import time

    import regex as rx                       # a dependency of transformers; `re` has no timeout
    items = texts.texts if isinstance(texts, Texts) else list(texts)
    if not query:
        return list(range(len(items)))
    if len(query) > MAX_QUERY:
        raise ValueError(f"search text is {len(query)} characters; at most {MAX_QUERY}")
    if not regex:
        q = query.casefold()
        return [i for i, t in enumerate(items) if q in t.casefold()]
    try:
        pattern = rx.compile(query, rx.IGNORECASE)
    except rx.error as exc:
        raise ValueError(f"search pattern {query!r} is not a regular expression: {exc}") from None
    end, found = time.monotonic() + timeout, []
    try:
        for i, t in enumerate(items):
            if pattern.search(t, timeout=max(1e-3, end - time.monotonic())):
                found.append(i)
    except TimeoutError:
        raise ValueError(f"search pattern {query!r} took longer than {timeout:g} s over {len(items):,} prompts; "
                         "simplify it (e.g. no nested repeats like (a+)+)") from None
    return found


def _prompt(acts: NeuronActs, prompt) -> int:
    prompt = _int(prompt, "prompt")
    if not 0 <= prompt < acts.texts.n:
        raise ValueError(f"prompt {prompt} is out of range: the dataset has {acts.texts.n} prompts "
                         f"(0..{acts.texts.n - 1})")
    return prompt


def _token(acts: NeuronActs, prompt: int, pos) -> int:
    pos, length = _int(pos, "token"), acts.texts.lengths[prompt]
    if not -length <= pos < length:
        raise ValueError(f"token {pos} is out of range: prompt {prompt} has {length} tokens (0..{length - 1}, "
                         "or -1 for the last)")
    return pos % length


TOKEN_COLUMNS = ("prompt", "pos", "token", "layer", "neuron", "activation")


def token_activations(acts: NeuronActs, prompt: int, pos: int = -1) -> pd.DataFrame:
    """Every layer's neuron activations at one token of one prompt (pos -1: its last), long format.

    Columns: prompt, pos, token, layer, neuron, activation (n_layers × d_mlp rows).

    >>> acts = collect_activations(model, encode_texts(model, ["Paris is a city"]))
    >>> token_activations(acts, 0, -1).shape
    (2048, 6)
    """
    prompt = _prompt(acts, prompt)
    pos = _token(acts, prompt, pos)
    x = acts.acts[:, prompt, pos, :]                                     # [layer, d_mlp]
    L, d = x.shape
    return pd.DataFrame({
        "prompt": prompt, "pos": pos, "token": acts.texts.str_tokens[prompt][pos],
        "layer": np.repeat(np.arange(L), d), "neuron": np.tile(np.arange(d), L),
        "activation": x.reshape(-1).numpy()})[list(TOKEN_COLUMNS)]


HISTOGRAM_COLUMNS = ("layer", "neuron", "pos", "bin_low", "bin_high", "count")


def activation_histogram(acts: NeuronActs, layer: int, neuron: int, pos: int | None = None, *,
                         bins: int = 40) -> pd.DataFrame:
    """A neuron's activations over the dataset, binned: every real token (pos None) or one
    position of each prompt (negative: from each prompt's end). Bins are equal-width over the
    values' range (numpy's histogram); counts sum to the number of tokens.

    >>> acts = collect_activations(model, task_texts(model, "factual", 8))
    >>> int(activation_histogram(acts, 1, 7)["count"].sum()) == sum(acts.texts.lengths)
    True
    """
    layer, neuron = _layer(acts, layer), _neuron(acts, neuron)
    bins = _int(bins, "bins")
    if not 1 <= bins <= 1000:
        raise ValueError(f"bins must be from 1 to 1000, not {bins}")
    x, _ = _at(acts, layer, pos)
    counts, edges = np.histogram(x[:, neuron].numpy(), bins=bins)
    return pd.DataFrame({"layer": layer, "neuron": neuron, "pos": pd.array([pos] * bins, dtype="Int64"),
                         "bin_low": edges[:-1], "bin_high": edges[1:], "count": counts})[list(HISTOGRAM_COLUMNS)]


def cluster_by_neuron(acts: NeuronActs, layer: int, neuron: int, pos: int = -1, *, method: str = "pca",
                      perplexity: float | None = None, seed: int = 0) -> pd.DataFrame:
    """`cluster_prompts` (PCA, or t-SNE on the PCA-50 reduction) of `layer` at `pos`, with the
    neuron's activation there in each prompt: columns as cluster_prompts' + neuron, activation.

    >>> acts = collect_activations(model, task_texts(model, "factual", 8))
    >>> cluster_by_neuron(acts, 2, 17)[["x", "activation"]].shape
    (8, 2)
    """
    layer = _layer(acts, layer)
    return with_neuron(acts, cluster_prompts(acts, layer, pos, method=method, perplexity=perplexity, seed=seed),
                       neuron)


def with_neuron(acts: NeuronActs, clusters: pd.DataFrame, neuron: int) -> pd.DataFrame:
    """`cluster_prompts`' frame (its layer and pos) plus the neuron's activation at each row's
    prompt and position: columns neuron, activation (the points' colour; the layout is kept, so a
    t-SNE is computed once for every neuron of a layer)."""
    neuron = _neuron(acts, neuron)
    layer, pos = int(clusters.layer.iloc[0]), int(clusters["pos"].iloc[0])
    x, where = _at(acts, layer, pos)
    by_prompt = dict(zip(where[:, 0].tolist(), x[:, neuron].tolist()))
    out = clusters.copy()
    out["neuron"] = neuron
    out["activation"] = [by_prompt[int(p)] for p in out.prompt]
    return out


def dataset_summary(texts: Texts) -> str:
    """'3 prompts, 4–12 tokens (BOS included)'.

    >>> dataset_summary(encode_texts(model, ["Paris is", "a"]))
    '2 prompts, 2–3 tokens (BOS included)'
    """
    lo, hi = min(texts.lengths), max(texts.lengths)
    span = f"{lo}" if lo == hi else f"{lo}–{hi}"
    return f"{texts.n:,} prompt{'s' if texts.n != 1 else ''}, {span} tokens" + (" (BOS included)" if texts.prepend_bos else "")


__all__ = ["read_texts", "search", "token_activations", "activation_histogram",
           "cluster_by_neuron", "with_neuron", "dataset_summary", "TOKEN_COLUMNS", "HISTOGRAM_COLUMNS"]
