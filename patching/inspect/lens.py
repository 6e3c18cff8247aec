"""Inspection views: logit lens, direct logit attribution, top-k tokens, attention, residual norms.

What a researcher looks at before patching: what the model predicts at every layer and
position, which components push the answer over the wrong token, where each head attends.
Every view is a pure function of (model, prompts, options) returning a long-format pandas
DataFrame (one row per cell, documented columns) — the CLI writes it as CSV
(`python -m patching lens|topk|attention|norms`), the dashboard's Inspect tab draws it.

All views run the engine's own forward (`model.runner.run`, one cached run) and decode with the
model's own modules: `arch.unembed(arch.ln_final(resid))`. Models without a runner go through
TransformerLens' bridge instead (`run_with_cache`, its `ln_final` and `unembed`) for the
accumulated lens, top-k, attention and norms; the direct-contribution views (per-layer lens,
DLA) need the runner and refuse such models with a ValueError.

Two ways to decode a vector, used on purpose:
- the *logit lens* (accumulated residual stream) applies the final norm afresh to each partial
  residual, as nostalgebraist's lens does; at the last layer it is the model's own output;
- *direct contributions* (per-layer lens, DLA) divide each component by the final norm's scale
  cached from the full residual stream (centring it first for LayerNorm), as TransformerLens'
  `ActivationCache.apply_ln_to_stack` does, so the contributions plus the norm's bias add up
  exactly to the model's logits.

>>> df = logit_lens(model, prompts)
>>> df.pivot(index="label", columns="pos", values="top_token").shape    # [depth, pos]
(5, 15)
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from patching.model import hooks
from patching.core.nodes import head_label
from patching.core.spec import check_index
from patching.core.prompts import NO_TOKEN, PromptSet
from patching.model.runner import RunCache

RUNS = ("clean", "corrupt")
MODES = ("accumulated", "per_layer")
SUPPORTED = "gpt2, llama, mistral, qwen2, gpt_neox"
_FINAL_NORM_PATHS = ("transformer.ln_f", "model.norm", "gpt_neox.final_layer_norm")


# -- validation ---------------------------------------------------------------------------------
def _check_model(model, what: str = "direct contributions") -> None:
    """Views that need the engine's own forward (head outputs, the final norm's pieces)."""
    if getattr(model, "runner", None) is None or getattr(model, "arch", None) is None:
        family = getattr(getattr(getattr(model, "hf", None), "config", None), "model_type", "unknown")
        raise ValueError(f"{what} needs the engine's own forward pass, which model {model.name!r} "
                         f"(family {family!r}) does not have; supported families: {SUPPORTED}. "
                         f"The accumulated logit lens, top-k, attention and norms work on any model")


def _check_run(run: str) -> str:
    if run not in RUNS:
        raise ValueError(f"run must be 'clean' or 'corrupt', not {run!r}")
    return run


def _check_pair(prompts: PromptSet, pair: int | None, allow_all: bool = False) -> int | None:
    if pair is None and allow_all:
        return None
    if not isinstance(pair, (int, np.integer)) or isinstance(pair, bool):
        raise ValueError(f"pair must be an integer, not {pair!r}")
    if not 0 <= pair < prompts.n_pairs:
        raise ValueError(f"pair {pair} is out of range: the set has {prompts.n_pairs} pair"
                         f"{'s' if prompts.n_pairs != 1 else ''} (0..{prompts.n_pairs - 1})")
    return int(pair)


_check_index = check_index        # an index into an axis; negative counts from the end (-1 = last)


def _check_k(k, vocab: int) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= vocab:
        raise ValueError(f"k must be an integer from 1 to the vocabulary size {vocab}, not {k!r}")
    return int(k)


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


# -- shared pieces ------------------------------------------------------------------------------
def _tokens(prompts: PromptSet, run: str) -> Tensor:
    """[n_pairs, pos] token ids of the clean or corrupt prompts."""
    return prompts.clean_tokens if run == "clean" else prompts.corrupt_tokens


def _run(model, prompts: PromptSet, run: str, pair: int | None) -> RunCache:
    """One cached forward of one pair ([1, pos], the pair's own length in a set of mixed lengths)
    or of every pair ([n_pairs, pos]; a set of one length only).

    Without a runner: the bridge's `run_with_cache`, keeping the residual streams and patterns
    in a RunCache-shaped namespace (the fields the runner-free views read).
    """
    tokens = _tokens(prompts, run)
    if pair is None:
        prompts.require_one_length("this view of every pair")      # (residual_norm_bands aligns by role)
    else:
        tokens = tokens[pair:pair + 1, :prompts.lengths[pair]]     # a set of mixed lengths pads the shorter
    if getattr(model, "runner", None) is not None:
        return model.runner.run(tokens)
    parallel = model.parallel_attn_mlp
    names = {name for l in range(model.n_layers) for name in (
        hooks.resid_pre(l), hooks.resid_post(l), hooks.pattern(l), *(() if parallel else (hooks.resid_mid(l),)))}
    with torch.inference_mode():
        _, cache = model.bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
    layers = [SimpleNamespace(resid_pre=cache[hooks.resid_pre(l)], resid_post=cache[hooks.resid_post(l)],
                              resid_mid=None if parallel else cache[hooks.resid_mid(l)],
                              pattern=cache[hooks.pattern(l)]) for l in range(model.n_layers)]
    return SimpleNamespace(tokens=tokens, layers=layers)


def _decode(model, resid: Tensor) -> Tensor:
    """resid [..., d_model] -> logits [..., vocab] through the final norm and the unembedding."""
    if getattr(model, "arch", None) is not None:
        return model.arch.unembed(model.arch.ln_final(resid))
    return model.bridge.unembed(model.bridge.ln_final(resid))


class _Decoder:
    """Token id -> its text, memoised (decoding one id at a time, as to_str_tokens does)."""

    def __init__(self, model):
        self.tokenizer, self.memo = model.tokenizer, {}

    def __call__(self, ids) -> list[str]:
        out = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if i not in self.memo:
                self.memo[i] = self.tokenizer.decode([i])
            out.append(self.memo[i])
        return out


def _unwrap(module: nn.Module) -> nn.Module:
    """The Hugging Face module inside a TransformerLens bridge component (or the module itself)."""
    return getattr(module, "_original_component", module)


@dataclass(frozen=True)
class _FinalNorm:
    """The final norm as an affine map once its scale is frozen: (x [- mean]) / scale * w + b."""
    centre: bool            # LayerNorm centres; RMSNorm does not
    weight: Tensor          # [d_model]
    bias: Tensor | None     # [d_model]
    eps: float

    def scale(self, x: Tensor) -> Tensor:
        """x [..., d_model] -> the scale the norm divides by, [..., 1]."""
        x = x.float()
        if self.centre:
            x = x - x.mean(-1, keepdim=True)
        return (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def linear(self, x: Tensor, scale: Tensor) -> Tensor:
        """The norm's linear part at a frozen scale: x [..., d_model], scale broadcastable."""
        if self.centre:
            x = x - x.mean(-1, keepdim=True)
        return (x / scale).to(self.weight.dtype) * self.weight


def _final_norm(model, resid: Tensor) -> _FinalNorm:
    """The model's final norm, checked against the module on the run's final residual stream."""
    root = model.hf
    mod = None
    for path in _FINAL_NORM_PATHS:
        obj = root
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            mod = _unwrap(obj)
            break
    norm, param = None, model.arch.param          # param: loads an offloaded weight for the read
    if isinstance(mod, nn.LayerNorm):
        norm = _FinalNorm(True, param(mod, "weight"), param(mod, "bias"), mod.eps)
    elif mod is not None and hasattr(mod, "weight"):
        eps = getattr(mod, "variance_epsilon", getattr(mod, "eps", None))
        if eps is not None:
            norm = _FinalNorm(False, param(mod, "weight"), None, float(eps))
    if norm is not None:
        want = model.arch.ln_final(resid)
        got = norm.linear(resid, norm.scale(resid)) + (norm.bias if norm.bias is not None else 0)
        tol = 1e-4 if resid.dtype == torch.float32 else 5e-2        # half precision: its own rounding
        if torch.allclose(got.float(), want.float(), atol=tol, rtol=10 * tol):
            return norm
    raise ValueError(f"cannot read the final norm of model {model.name!r} as (x - mean) / scale * w "
                     f"+ b or x / scale * w; direct contributions need one of those")


def _unembed_linear(model) -> tuple[Tensor, Tensor | None]:
    """The unembedding as W [vocab, d_model] and bias [vocab] (or None)."""
    lin = _unwrap(model.hf.get_output_embeddings())
    return model.arch.param(lin, "weight"), model.arch.param(lin, "bias")


def _vocab_size(model) -> int:
    return _unwrap(model.hf.get_output_embeddings()).weight.shape[0]     # a shape: no weight read


def _labels(comp: str, layer: int | None, head: int | None) -> str:
    if comp == "embed":
        return "embed"
    if comp == "resid_post":
        return f"L{layer}"
    if comp == "head":
        return head_label(layer, head)
    return f"L{layer} {comp}"


def _components(model, cache: RunCache, mode: str):
    """Per layer, the list of (component, layer, head, vectors [b, pos, d_model]) to decode.

    accumulated: embed, then resid_post of every layer. per_layer: embed, then per layer the
    attention output (bias included), each head's z · W_O[h] (no bias) and the MLP output.
    Yields one list per layer so that at most one layer's logits are in memory at once.
    """
    a = model.arch
    yield [("embed", None, None, cache.layers[0].resid_pre)]
    for layer, lc in enumerate(cache.layers):
        if mode == "accumulated":
            yield [("resid_post", layer, None, lc.resid_post)]
            continue
        w_o = a.o_weight(layer).view(a.n_heads, a.d_head, a.d_model)
        heads = torch.einsum("bthd,hdm->hbtm", lc.z, w_o)          # [H, b, pos, d_model]
        yield ([("attn", layer, None, lc.attn_out)]
               + [("head", layer, h, heads[h]) for h in range(a.n_heads)]
               + [("mlp", layer, None, lc.mlp_out)])


def _stats(logits: Tensor, lse: Tensor, ids: Tensor):
    """logits [..., vocab], their logsumexp [...], ids [] -> (logit, prob, rank 1 = top), each [...]."""
    value = logits[..., ids]
    rank = (logits > value[..., None]).sum(-1) + 1
    return value, (value - lse).exp(), rank


MAX_LOGITS = 2 ** 25       # logits decoded at once (128 MiB in float32): long prompts, big vocabularies


def _decoded_stats(decode_rows, n_rows: int, vocab: int, k: int, answer: Tensor, wrong: Tensor):
    """Decode rows in chunks of at most MAX_LOGITS logits; per row: top-k logits [N, k], ids
    [N, k], probs [N, k], then logit, prob and rank [N] of `answer` and of `wrong`.

    decode_rows(slice) -> logits [rows, vocab].
    """
    parts = []
    step = max(1, MAX_LOGITS // vocab)
    for lo in range(0, n_rows, step):
        logits = decode_rows(slice(lo, lo + step)).float()               # [rows, vocab]
        lse = logits.logsumexp(-1)
        top_l, top_i = logits.topk(k, dim=-1)
        parts.append((top_l, top_i, (top_l - lse[:, None]).exp(),
                      *_stats(logits, lse, answer), *_stats(logits, lse, wrong)))
    return [torch.cat(ts) for ts in zip(*parts)]


# -- logit lens ---------------------------------------------------------------------------------
LENS_COLUMNS = ("run", "pair", "mode", "layer", "component", "head", "label", "pos", "token",
                "top_rank", "top_id", "top_token", "top_logit", "top_prob",
                "answer", "answer_logit", "answer_prob", "answer_rank",
                "wrong", "wrong_logit", "wrong_prob", "wrong_rank")


@torch.inference_mode()
def logit_lens(model, prompts: PromptSet, *, run: str = "clean", pair: int = 0,
               mode: str = "accumulated", k: int = 1) -> pd.DataFrame:
    """Decode the residual stream (or each component's direct contribution) at every position.

    mode "accumulated": the residual stream after the embedding and after each layer, through
    the final norm (applied afresh) and the unembedding — the classic logit lens; its last
    layer equals the model's logits. mode "per_layer": each block's and head's direct
    contribution (attn, every head, mlp; plus embed), divided by the cached final-norm scale
    (see the module docstring) and unembedded without bias.

    Columns (one row per component × position × top_rank):
    run, pair, mode; layer (empty for embed), component (embed | resid_post | attn | head |
    mlp), head (empty unless component is head), label ("embed", "L3", "L3 attn", "L3H1",
    "L3 mlp": the heatmap's row label); pos, token (the input token at pos); top_rank 1..k,
    top_id, top_token, top_logit, top_prob (softmax over the decoded logits); answer / wrong
    (the pair's tokens) with their _logit, _prob and _rank (1 = top) at that cell.

    >>> df = logit_lens(model, prompts, mode="accumulated", k=1)
    >>> df[df.pos == df.pos.max()][["label", "top_token", "answer_rank"]].tail(1)
       label top_token  answer_rank
    74    L3      Mary            1
    """
    _check_run(run)
    _check_mode(mode)
    if mode == "per_layer":
        _check_model(model, "the per-component logit lens (mode 'per_layer')")
    pair = _check_pair(prompts, pair)
    vocab = _vocab_size(model)
    k = _check_k(k, vocab)
    cache = _run(model, prompts, run, pair)
    decode = _Decoder(model)
    toks = decode(cache.tokens[0].cpu())
    n_pos = len(toks)
    given = {"answer": int(prompts.answer_ids[pair]) != NO_TOKEN, "wrong": int(prompts.wrong_ids[pair]) != NO_TOKEN}
    answer, wrong = (prompts.answer_ids[pair].clamp(min=0), prompts.wrong_ids[pair].clamp(min=0))
    a_str, w_str = decode([int(answer)])[0], decode([int(wrong)])[0]
    final = cache.layers[-1].resid_post[0]                        # [pos, d_model]
    if mode == "per_layer":
        norm = _final_norm(model, final)
        scale = norm.scale(final)                                 # [pos, 1]
        zero_logits = model.arch.unembed(torch.zeros_like(final[:1]))[0]     # unembedding bias
    frames = []
    for group in _components(model, cache, mode):
        n_c = len(group)
        vecs = torch.stack([v[0] for *_, v in group]).flatten(0, 1)          # [C * pos, d_model]
        if mode == "accumulated":
            decode_rows = lambda rows: _decode(model, vecs[rows])
        else:
            scales = scale.repeat(n_c, 1)                                    # [C * pos, 1]
            decode_rows = lambda rows: model.arch.unembed(norm.linear(vecs[rows], scales[rows])) - zero_logits
        stats = [t.view(n_c, n_pos, *t.shape[1:])
                 for t in _decoded_stats(decode_rows, len(vecs), vocab, k, answer, wrong)]
        top_l, top_i, top_p, a_l, a_p, a_r, w_l, w_p, w_r = stats
        rows = n_c * n_pos * k
        comp_idx = np.repeat(np.arange(n_c), n_pos * k)
        pos_idx = np.tile(np.repeat(np.arange(n_pos), k), n_c)
        cell = lambda t: np.repeat(t.reshape(-1).cpu().numpy(), k)   # [C, pos] -> rows
        frames.append(pd.DataFrame({
            "run": run, "pair": pair, "mode": mode,
            "layer": pd.array([group[c][1] for c in comp_idx], dtype="Int64"),
            "component": [group[c][0] for c in comp_idx],
            "head": pd.array([group[c][2] for c in comp_idx], dtype="Int64"),
            "label": [_labels(*group[c][:3]) for c in comp_idx],
            "pos": pos_idx, "token": [toks[p] for p in pos_idx],
            "top_rank": np.tile(np.arange(1, k + 1), n_c * n_pos),
            "top_id": top_i.reshape(-1).cpu().numpy(),
            "top_token": decode(top_i.reshape(-1).cpu()),
            "top_logit": top_l.reshape(-1).cpu().numpy(), "top_prob": top_p.reshape(-1).cpu().numpy(),
            "answer": a_str, "answer_logit": cell(a_l), "answer_prob": cell(a_p), "answer_rank": cell(a_r),
            "wrong": w_str, "wrong_logit": cell(w_l), "wrong_prob": cell(w_p), "wrong_rank": cell(w_r),
        }, index=range(rows)))
    df = pd.concat(frames, ignore_index=True)[list(LENS_COLUMNS)]
    for name, ok in given.items():                      # a one-prompt set without this token
        if not ok:
            df[name] = None
            df[[f"{name}_logit", f"{name}_prob", f"{name}_rank"]] = np.nan
    return df


# -- direct logit attribution ---------------------------------------------------------------------
DLA_COLUMNS = ("run", "pair", "pos", "kind", "layer", "head", "label", "value", "n_pairs")


@torch.inference_mode()
def direct_logit_attribution(model, prompts: PromptSet, *, run: str = "clean", pair: int | None = None,
                             pos: int = -1) -> pd.DataFrame:
    """Each component's direct effect on logit(answer) − logit(wrong) at `pos` (default: last).

    A component's vector is centred (LayerNorm), divided by the final norm's scale cached from
    the full residual stream (TransformerLens' `apply_ln_to_stack`), multiplied by the norm's
    weight and dotted with W_U[answer] − W_U[wrong]. Per pair, then averaged over pairs
    (pair=None, the default) or for one pair.

    Columns: run, pair (empty when averaged), pos, kind, layer, head, label, value, n_pairs.
    kind is embed | attn | mlp | head | final_bias | total. Rows of kind embed + attn + mlp +
    final_bias (the norm's bias and the unembedding's bias) sum to `total`, the model's own
    logit difference; a layer's head rows plus its attention output bias sum to its attn row.

    >>> df = direct_logit_attribution(model, prompts)
    >>> df[df.kind == "head"].nlargest(3, "value").label.tolist()
    ['L0H2', 'L3H1', 'L3H0']
    """
    _check_model(model, "direct logit attribution")
    _check_run(run)
    pair = _check_pair(prompts, pair, allow_all=True)
    pos = _check_index(pos, prompts.n_pos, "pos", f"the prompt has {prompts.n_pos} tokens")
    cache = _run(model, prompts, run, pair)
    sel = slice(None) if pair is None else slice(pair, pair + 1)
    answer, wrong = prompts.answer_ids[sel], prompts.wrong_ids[sel]      # [b]
    if bool((answer == NO_TOKEN).any() | (wrong == NO_TOKEN).any()):
        raise ValueError("direct logit attribution reads logit(answer) - logit(wrong): give both tokens")
    final = cache.layers[-1].resid_post[:, pos]                           # [b, d_model]
    norm = _final_norm(model, final)
    scale = norm.scale(final)                                             # [b, 1]
    w_u, b_u = _unembed_linear(model)
    direction = (w_u[answer] - w_u[wrong]).float()                         # [b, d_model]

    def dla(vec: Tensor) -> float:                                        # vec [b, d_model]
        return float((norm.linear(vec, scale).float() * direction).sum(-1).mean())

    rows = [("embed", None, None, dla(cache.layers[0].resid_pre[:, pos]))]
    a = model.arch
    for layer, lc in enumerate(cache.layers):
        w_o = a.o_weight(layer).view(a.n_heads, a.d_head, a.d_model)
        heads = torch.einsum("bhd,hdm->hbm", lc.z[:, pos], w_o)           # [H, b, d_model]
        rows.append(("attn", layer, None, dla(lc.attn_out[:, pos])))
        rows += [("head", layer, h, dla(heads[h])) for h in range(a.n_heads)]
        rows.append(("mlp", layer, None, dla(lc.mlp_out[:, pos])))
    bias = (direction * norm.bias.float()).sum(-1) if norm.bias is not None else torch.zeros(len(answer), device=final.device)
    if b_u is not None:
        bias = bias + (b_u[answer] - b_u[wrong]).float()
    rows.append(("final_bias", None, None, float(bias.mean())))
    logits = a.unembed(a.ln_final(final)).float()                         # [b, vocab]
    total = logits.gather(1, answer[:, None])[:, 0] - logits.gather(1, wrong[:, None])[:, 0]
    rows.append(("total", None, None, float(total.mean())))
    label = {"final_bias": "final bias", "total": "total"}
    return pd.DataFrame({
        "run": run, "pair": pd.array([pair] * len(rows), dtype="Int64"), "pos": pos,
        "kind": [r[0] for r in rows],
        "layer": pd.array([r[1] for r in rows], dtype="Int64"),
        "head": pd.array([r[2] for r in rows], dtype="Int64"),
        "label": [label.get(r[0]) or _labels(*r[:3]) for r in rows],
        "value": [r[3] for r in rows],
        "n_pairs": len(answer),
    })[list(DLA_COLUMNS)]


# -- top-k -----------------------------------------------------------------------------------------
TOPK_COLUMNS = ("run", "pair", "pos", "token", "rank", "pred_id", "pred_token", "logit", "logprob", "prob")


@torch.inference_mode()
def top_k(model, prompts: PromptSet, *, run: str = "clean", pos: int = -1, k: int = 10,
          pair: int = 0) -> pd.DataFrame:
    """The model's k most likely next tokens at `pos` (default: last) of one prompt.

    Columns: run, pair, pos, token (the input token at pos), rank (1 = most likely), pred_id,
    pred_token, logit, logprob, prob.

    >>> top_k(model, prompts, run="clean", pos=-1, k=1)[["pred_token", "prob"]].round(2)
      pred_token  prob
    0       Mary   1.0
    """
    _check_run(run)
    pair = _check_pair(prompts, pair)
    pos = _check_index(pos, prompts.n_pos, "pos", f"the prompt has {prompts.n_pos} tokens")
    k = _check_k(k, _vocab_size(model))
    cache = _run(model, prompts, run, pair)
    logits = _decode(model, cache.layers[-1].resid_post[0, pos]).float()          # [vocab]
    logp = logits.log_softmax(-1)
    top_lp, top_i = logp.topk(k)
    decode = _Decoder(model)
    return pd.DataFrame({
        "run": run, "pair": pair, "pos": pos, "token": decode([int(cache.tokens[0, pos])])[0],
        "rank": np.arange(1, k + 1), "pred_id": top_i.cpu().numpy(), "pred_token": decode(top_i.cpu()),
        "logit": logits[top_i].cpu().numpy(), "logprob": top_lp.cpu().numpy(),
        "prob": top_lp.exp().cpu().numpy(),
    })[list(TOPK_COLUMNS)]


# -- attention --------------------------------------------------------------------------------------
ATTENTION_COLUMNS = ("run", "pair", "layer", "head", "dest", "src", "dest_token", "src_token", "value")


def _check_heads(heads, n_heads: int, layer: int) -> list[int]:
    """None -> every head; else the list, each an integer in 0..n_heads-1."""
    if heads is None:
        return list(range(n_heads))
    heads = list(heads)
    bad = [h for h in heads if not isinstance(h, (int, np.integer)) or isinstance(h, bool)
           or not 0 <= h < n_heads]
    if bad or not heads:
        raise ValueError(f"head {bad[0] if bad else 'list'} {'is out of range' if bad else 'is empty'}: "
                         f"layer {layer} has {n_heads} heads (0..{n_heads - 1})")
    return [int(h) for h in heads]


def _pattern_frame(model, cache, run: str, pair: int, layer_heads: list[tuple[int, list[int]]]) -> pd.DataFrame:
    """The ATTENTION_COLUMNS rows of a one-prompt cache, for each (layer, heads) in order."""
    toks = _Decoder(model)(cache.tokens[0].cpu())
    n_pos = len(toks)
    dest, src = np.tril_indices(n_pos)
    frames = []
    for layer, heads in layer_heads:
        values = cache.layers[layer].pattern[0, heads].float().cpu()[:, dest, src].numpy()   # [heads, entries]
        n = len(heads)
        frames.append(pd.DataFrame({
            "run": run, "pair": pair, "layer": layer,
            "head": np.repeat(np.array(heads), len(dest)),
            "dest": np.tile(dest, n), "src": np.tile(src, n),
            "dest_token": [toks[i] for i in np.tile(dest, n)],
            "src_token": [toks[i] for i in np.tile(src, n)],
            "value": values.reshape(-1),
        }))
    return pd.concat(frames, ignore_index=True)[list(ATTENTION_COLUMNS)]


@torch.inference_mode()
def attention_patterns(model, prompts: PromptSet, *, layer: int, run: str = "clean", pair: int = 0,
                       heads: list[int] | tuple[int, ...] | None = None) -> pd.DataFrame:
    """Every head's (or the chosen `heads`') attention pattern of `layer` for one prompt, dest × src.

    Long format, one row per head and causal entry (src <= dest; the rest is 0 by the causal
    mask and left out). Columns: run, pair, layer, head, dest, src, dest_token, src_token,
    value (the attention weight; each head's row for one dest sums to 1). On grouped-query
    models there is one pattern per query head.

    >>> df = attention_patterns(model, prompts, layer=1, heads=[0, 3])
    >>> df[df["head"] == 0].pivot(index="dest", columns="src", values="value").shape
    (15, 15)
    """
    _check_run(run)
    pair = _check_pair(prompts, pair)
    layer = _check_index(layer, model.n_layers, "layer", f"the model has {model.n_layers} layers")
    heads = _check_heads(heads, model.n_heads, layer)
    cache = _run(model, prompts, run, pair)
    return _pattern_frame(model, cache, run, pair, [(layer, heads)])


@torch.inference_mode()
def attention_overview(model, prompts: PromptSet, *, run: str = "clean", pair: int = 0,
                       layers: list[int] | tuple[int, ...] | None = None) -> pd.DataFrame:
    """Every head of every layer (or of `layers`) for one prompt, from one forward: the data of a
    CircuitsVis-like overview (a grid of small dest × src patterns, one per layer × head).

    The columns and rows of `attention_patterns` (ATTENTION_COLUMNS), layer by layer in the order
    given (negative layers count from the end); each head's row for one dest sums to 1. A set of
    mixed lengths gives the pair's own tokens (no padding).

    >>> df = attention_overview(model, prompts, layers=[0, -1])
    >>> df.groupby(["layer", "head"]).ngroups, sorted(set(df.layer.tolist()))
    (8, [0, 3])
    """
    _check_run(run)
    pair = _check_pair(prompts, pair)
    n_layers = model.n_layers
    if layers is None:
        layers = list(range(n_layers))
    elif not list(layers):
        raise ValueError(f"layers is empty: give layer numbers from 0 to {n_layers - 1} (or none for every layer)")
    layers = [_check_index(l, n_layers, "layer", f"the model has {n_layers} layers") for l in layers]
    cache = _run(model, prompts, run, pair)
    return _pattern_frame(model, cache, run, pair, [(l, list(range(model.n_heads))) for l in layers])


# -- residual norms ---------------------------------------------------------------------------------
NORM_COLUMNS = ("run", "pair", "depth", "layer", "stage", "label", "pos", "token", "norm")


@torch.inference_mode()
def residual_norms(model, prompts: PromptSet, *, pair: int | None = 0) -> pd.DataFrame:
    """L2 norm of the residual stream by depth and position, in the clean and the corrupt run.

    Depths, in order: the embedding (stage embed), then per layer resid_mid (between attention
    and MLP; not on parallel-attention models) and resid_post. pair=None gives every pair.

    Columns: run, pair, depth (0, 1, ...: the x axis), layer (empty for embed), stage, label
    ("embed", "L0 mid", "L0 post"), pos, token (that run's input token), norm.

    >>> df = residual_norms(model, prompts)
    >>> df[df.pos == df.pos.max()].pivot(index="depth", columns="run", values="norm").shape
    (9, 2)
    """
    pair = _check_pair(prompts, pair, allow_all=True)
    decode = _Decoder(model)
    frames = []
    for run in RUNS:
        cache = _run(model, prompts, run, pair)
        stages = [("embed", None, "embed", cache.layers[0].resid_pre)]
        for layer, lc in enumerate(cache.layers):
            if lc.resid_mid is not None:
                stages.append(("resid_mid", layer, f"L{layer} mid", lc.resid_mid))
            stages.append(("resid_post", layer, f"L{layer} post", lc.resid_post))
        norms = torch.stack([s[3].float().norm(dim=-1) for s in stages])   # [depth, b, pos]
        n_depth, n_b, n_pos = norms.shape
        pairs = list(range(prompts.n_pairs)) if pair is None else [pair]
        d_idx = np.repeat(np.arange(n_depth), n_b * n_pos)
        b_idx = np.tile(np.repeat(np.arange(n_b), n_pos), n_depth)
        p_idx = np.tile(np.arange(n_pos), n_depth * n_b)
        toks = np.array(decode(cache.tokens.cpu()), dtype=object).reshape(n_b, n_pos)
        frames.append(pd.DataFrame({
            "run": run, "pair": np.array(pairs)[b_idx], "depth": d_idx,
            "layer": pd.array([stages[d][1] for d in d_idx], dtype="Int64"),
            "stage": [stages[d][0] for d in d_idx], "label": [stages[d][2] for d in d_idx],
            "pos": p_idx, "token": toks[b_idx, p_idx], "norm": norms.reshape(-1).cpu().numpy(),
        }))
    return pd.concat(frames, ignore_index=True)[list(NORM_COLUMNS)]


BAND_COLUMNS = ("run", "depth", "layer", "stage", "label", "pos", "token", "mean", "std", "n_pairs")
VARIES = "(varies)"        # a band's token where the pairs' tokens at that position differ


def _by_role(model, prompts: PromptSet) -> pd.DataFrame:
    """residual_norms of a set of mixed lengths, one length group at a time, each pair's rows at
    its role indices: pos = the role's number (role_names order), token = the role's name."""
    parts = []
    for idx, group in prompts.by_length():
        df = residual_norms(model, group, pair=None)
        df["pair"] = np.asarray(idx)[df["pair"].to_numpy()]
        parts.append(df)
    names = prompts.role_names
    at = pd.DataFrame([(p, pos, r) for p, where in enumerate(prompts.role_positions()) for r, pos in enumerate(where)],
                      columns=["pair", "pos", "role"])
    df = pd.concat(parts, ignore_index=True).merge(at, on=["pair", "pos"])      # a position may hold two roles
    df["pos"], df["token"] = df["role"], [names[r] for r in df["role"]]
    return df.drop(columns="role")


@torch.inference_mode()
def residual_norm_bands(model, prompts: PromptSet) -> pd.DataFrame:
    """Mean ± standard deviation over the set's pairs of the residual stream's L2 norm, by depth
    and position, clean and corrupt: `residual_norms(..., pair=None)` summarised per cell.

    Columns: run, depth, layer, stage, label (as residual_norms), pos, token (that run's token at
    pos, or "(varies)" where the pairs' tokens differ), mean, std (the sample standard deviation,
    ddof=1: empty with one pair), n_pairs. A set of mixed lengths is aligned by role: pos is the
    role's number in `prompts.role_names` order and token its name.

    >>> df = residual_norm_bands(model, prompts)
    >>> df.groupby("run").size().tolist(), int(df.n_pairs.max())
    ([135, 135], 1)
    """
    df = _by_role(model, prompts) if prompts.is_mixed else residual_norms(model, prompts, pair=None)
    keys = ["run", "depth", "pos"]
    grouped = df.groupby(keys, sort=True)
    out = grouped.agg(layer=("layer", "first"), stage=("stage", "first"), label=("label", "first"),
                      mean=("norm", "mean"), std=("norm", "std"), n_pairs=("norm", "size")).reset_index()
    tokens = grouped["token"].agg(lambda t: t.iloc[0] if t.nunique() == 1 else VARIES).reset_index(drop=True)
    out["token"] = tokens.to_numpy()
    out["layer"] = out["layer"].astype("Int64")
    return out[list(BAND_COLUMNS)]


__all__ = ["logit_lens", "direct_logit_attribution", "top_k", "attention_patterns", "attention_overview",
           "residual_norms", "residual_norm_bands", "RUNS", "MODES"]
