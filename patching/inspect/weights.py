"""Weight-based circuit views: composition scores, SVD of OV / QK circuits, rank-k heads.

Read from the weights alone (no prompts), except the rank-k view, which reruns the model:

- `composition_scores`: Q-, K- and V-composition between every earlier head and every later
  head (Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"):
  ``||W_OV^A W^B||_F / (||W_OV^A||_F ||W^B||_F)`` with W^B = W_QK^B (Q), (W_QK^B)^T (K) or
  W_OV^B (V), in row-vector convention (x @ W_V @ W_O), as TransformerLens'
  `all_composition_scores`. Computed in factored form (d_head × d_head Gram matrices), so
  GPT-2-sized models need no d_model × d_model products.
- `singular_values`, `singular_tokens`, `head_svd`: SVD of a head's OV circuit W_V W_O and QK
  circuit W_Q W_K^T ([d_model, d_model], rank <= d_head), exact from the factors; the top
  singular directions projected to the vocabulary (writing side through W_U, reading sides
  through W_E by default) -> top tokens.
- `rank_k_head`, `rank_k_pattern`: a head's attention recomputed with its QK circuit truncated
  to rank k; the change in its pattern and in the metric.

Weights come from the model's own modules through `arch.qkv` / `arch.o_weight` (so every
family the runner supports works the same way); grouped-query key/value heads are expanded to
the query heads that use them. With ``fold_ln=True`` (default, as TransformerLens' processed
weights) the weight of the layer norm a head reads (ln1) is folded into W_Q, W_K and W_V and its
bias into their biases; writing weights are not centred. Biases do not enter composition
scores or SVDs. On rotary models the QK circuit is the rotary-free W_Q W_K^T (as
TransformerLens' `QK`); rank-k truncation is applied before the rotary embedding.

>>> df = composition_scores(model, "k")
>>> df.nlargest(1, "score")[["src_label", "dst_label"]].values.tolist()
[['L1H2', 'L2H0']]
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from patching.model.arch import apply_rotary
from patching.core.nodes import head_label
from patching.core.spec import check_index
from patching.core.prompts import PromptSet

COMPOSITIONS = ("q", "k", "v")
CIRCUITS = ("ov", "qk")
PROJECTIONS = ("auto", "unembed", "embed")
SUPPORTED = "gpt2, llama, mistral, qwen2, gpt_neox"


# -- validation ---------------------------------------------------------------------------------
def _check_model(model, what: str) -> None:
    if getattr(model, "arch", None) is None or getattr(model, "runner", None) is None:
        family = getattr(getattr(getattr(model, "hf", None), "config", None), "model_type", "unknown")
        raise ValueError(f"{what} reads per-head weights through the engine's own forward, which "
                         f"model {model.name!r} (family {family!r}) does not have; supported "
                         f"families: {SUPPORTED}")




def _check_choice(value, choices, what: str) -> str:
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _label(layer: int, head: int) -> str:
    return head_label(layer, head)


# -- the weights ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeadWeights:
    """Every head's weights, row-vector convention (x [.., d_model] @ W_Q[l, h] -> [.., d_head]).

    Key/value weights are expanded to query heads (grouped-query models repeat them).
    """
    W_Q: Tensor      # [n_layers, n_heads, d_model, d_head]
    W_K: Tensor      # [n_layers, n_heads, d_model, d_head]
    W_V: Tensor      # [n_layers, n_heads, d_model, d_head]
    W_O: Tensor      # [n_layers, n_heads, d_head, d_model]
    b_Q: Tensor      # [n_layers, n_heads, d_head] (zeros where the model has no bias)
    b_K: Tensor
    b_V: Tensor
    ln_weight: Tensor   # [n_layers, d_model]: ln1's weight (ones for a norm without one)
    ln_bias: Tensor     # [n_layers, d_model]
    fold_ln: bool

    @property
    def n_layers(self) -> int:
        return self.W_Q.shape[0]

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[1]


def _ln1_module(arch, layer: int):
    block = arch._block(layer)
    for name in ("ln_1", "input_layernorm"):
        if hasattr(block, name):
            return getattr(block, name)
    raise ValueError(f"cannot find layer {layer}'s attention norm (ln_1 / input_layernorm)")


@torch.no_grad()
def head_weights(model, fold_ln: bool = True) -> HeadWeights:
    """Every head's W_Q, W_K, W_V, W_O (float32), read by probing the model's own projections.

    `arch.qkv` is affine in its input, so qkv(I) - qkv(0) is the weight and qkv(0) the bias.

    >>> w = head_weights(model)
    >>> w.W_Q.shape                               # [layers, heads, d_model, d_head]
    torch.Size([4, 4, 128, 32])
    """
    _check_model(model, "head weights")
    a = model.arch
    dtype = next(a.model.parameters()).dtype
    device = a.home or next(a.model.parameters()).device
    eye = torch.eye(a.d_model, dtype=dtype, device=device)[None]            # [1, d_model, d_model]
    zero = torch.zeros(1, 1, a.d_model, dtype=dtype, device=device)
    kv_of = torch.arange(a.n_heads, device=device) // (a.n_heads // a.n_kv_heads)
    out = {k: [] for k in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "g", "b")}
    for layer in range(a.n_layers):
        ws = [t[0].float() for t in a.qkv(layer, eye)]          # [d_model, heads, d_head]
        bs = [t[0, 0].float() for t in a.qkv(layer, zero)]      # [heads, d_head]
        ws = [(w - b[None]).permute(1, 0, 2) for w, b in zip(ws, bs)]       # [heads, d_model, d_head]
        ws[1], ws[2], bs[1], bs[2] = ws[1][kv_of], ws[2][kv_of], bs[1][kv_of], bs[2][kv_of]
        ln = _ln1_module(a, layer)
        g, beta = a.param(ln, "weight"), a.param(ln, "bias")      # loaded when offloaded
        g = g.float() if g is not None else torch.ones(a.d_model, device=device)
        beta = beta.float() if beta is not None else torch.zeros(a.d_model, device=device)
        if fold_ln:
            bs = [b + torch.einsum("m,hmd->hd", beta, w) for b, w in zip(bs, ws)]
            ws = [w * g[None, :, None] for w in ws]
        for key, t in zip(("W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V"), (*ws, *bs)):
            out[key].append(t)
        out["W_O"].append(a.o_weight(layer).float().reshape(a.n_heads, a.d_head, a.d_model))
        out["g"].append(g)
        out["b"].append(beta)
    st = {k: torch.stack(v) for k, v in out.items()}
    return HeadWeights(st["W_Q"], st["W_K"], st["W_V"], st["W_O"], st["b_Q"], st["b_K"], st["b_V"],
                       st["g"], st["b"], fold_ln)


# -- composition ----------------------------------------------------------------------------------
COMPOSITION_COLUMNS = ("composition", "src_layer", "src_head", "src_label", "dst_layer", "dst_head",
                       "dst_label", "score")


def _sq_norm_factored(A: Tensor, B: Tensor) -> Tensor:
    """||X Y||_F^2 for X = [.., m, d], Y = [.., d, m'] given A = X^T X and B = Y Y^T: sum(A * B)."""
    return (A * B).sum((-1, -2))


@torch.no_grad()
def composition_scores(model, composition: str = "all", *, fold_ln: bool = True,
                       weights: HeadWeights | None = None) -> pd.DataFrame:
    """Q-, K- and V-composition scores from every head to every head of a later layer.

    score = ||W_OV^src M^dst||_F / (||W_OV^src||_F ||M^dst||_F), M = W_Q W_K^T (q), its
    transpose (k) or W_V W_O (v). 0 = the source writes nothing the destination reads; random
    matrices give about 1/sqrt(d_model).

    Columns: composition (q | k | v), src_layer, src_head, src_label ("L0H3"), dst_layer,
    dst_head, dst_label, score. One row per (composition, src, dst) with src_layer < dst_layer.

    >>> composition_scores(model, "q").pivot_table(index="src_label", columns="dst_label", values="score").shape
    (12, 12)
    """
    _check_model(model, "composition scores")
    kinds = COMPOSITIONS if composition == "all" else (_check_choice(composition, COMPOSITIONS + ("all",),
                                                                     "composition"),)
    w = weights if weights is not None else head_weights(model, fold_ln)
    L, H = w.n_layers, w.n_heads
    WQ, WK, WV, WO = (t.double() for t in (w.W_Q, w.W_K, w.W_V, w.W_O))
    G_Q = WQ.transpose(-1, -2) @ WQ                        # [L, H, dh, dh] = W_Q^T W_Q
    G_K = WK.transpose(-1, -2) @ WK
    G_V = WV.transpose(-1, -2) @ WV
    P_O = WO @ WO.transpose(-1, -2)                        # W_O W_O^T
    ov_norm = _sq_norm_factored(G_V, P_O).sqrt()           # [L, H]
    qk_norm = _sq_norm_factored(G_Q, G_K).sqrt()
    frames = []
    for kind in kinds:
        # right factor of the destination: M^dst = R1 R2 with A_dst = R2 R2^T (right Gram)
        first, right_gram, right_norm = {"q": (WQ, G_K, qk_norm), "k": (WK, G_Q, qk_norm),
                                         "v": (WV, P_O, ov_norm)}[kind]
        for src in range(L - 1):
            # M = W_O^src @ first^dst: [H_src, L', H_dst, dh, dh]
            m = torch.einsum("sde,lhef->slhdf", WO[src], first[src + 1:])
            left = torch.einsum("sde,slhef->slhdf", G_V[src], m)              # G_V^src M
            right = torch.einsum("slhde,lhef->slhdf", m, right_gram[src + 1:])  # M G^dst
            num = (left * right).sum((-1, -2)).clamp_min(0).sqrt()           # [H_src, L', H_dst]
            den = ov_norm[src][:, None, None] * right_norm[src + 1:][None]
            score = (num / den).cpu().numpy()
            s_h, d_l, d_h = np.meshgrid(np.arange(H), np.arange(src + 1, L), np.arange(H), indexing="ij")
            frames.append(pd.DataFrame({
                "composition": kind, "src_layer": src, "src_head": s_h.reshape(-1),
                "dst_layer": d_l.reshape(-1), "dst_head": d_h.reshape(-1), "score": score.reshape(-1)}))
    if not frames:
        return pd.DataFrame({c: [] for c in COMPOSITION_COLUMNS})
    df = pd.concat(frames, ignore_index=True)
    df["src_label"] = [_label(l, h) for l, h in zip(df.src_layer, df.src_head)]
    df["dst_label"] = [_label(l, h) for l, h in zip(df.dst_layer, df.dst_head)]
    return df[list(COMPOSITION_COLUMNS)]


# -- SVD ------------------------------------------------------------------------------------------
def _factors(w: HeadWeights, layer: int, head: int, circuit: str) -> tuple[Tensor, Tensor]:
    """The circuit as A @ B^T with A, B [d_model, d_head] (OV: W_V, W_O^T; QK: W_Q, W_K)."""
    if circuit == "ov":
        return w.W_V[layer, head].double(), w.W_O[layer, head].double().T
    return w.W_Q[layer, head].double(), w.W_K[layer, head].double()


def _svd_factored(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """SVD of A @ B^T (A, B [m, d]) without forming it: U [m, d], S [d], V [m, d], A B^T = U diag(S) V^T."""
    qa, ra = torch.linalg.qr(A)
    qb, rb = torch.linalg.qr(B)
    u, s, vh = torch.linalg.svd(ra @ rb.T)
    return qa @ u, s, qb @ vh.T


@torch.no_grad()
def head_svd(model, layer: int, head: int, circuit: str = "ov", *, fold_ln: bool = True,
             weights: HeadWeights | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """SVD of one head's OV (W_V W_O) or QK (W_Q W_K^T) circuit, float64.

    Returns U [d_model, d_head], S [d_head] (descending), V [d_model, d_head] with
    circuit = U diag(S) V^T. OV: U reads the residual stream, V is what the head writes;
    QK: U is the query side, V the key side.

    >>> U, S, V = head_svd(model, 1, 0, "ov")
    >>> U.shape, S.shape, V.shape
    (torch.Size([128, 32]), torch.Size([32]), torch.Size([128, 32]))
    """
    _check_model(model, "the SVD of a head")
    _check_choice(circuit, CIRCUITS, "circuit")
    layer = check_index(layer, model.arch.n_layers, "layer", f"the model has {model.arch.n_layers} layers")
    head = check_index(head, model.arch.n_heads, "head", f"each layer has {model.arch.n_heads} heads")
    w = weights if weights is not None else head_weights(model, fold_ln)
    return _svd_factored(*_factors(w, layer, head, circuit))


SINGULAR_COLUMNS = ("circuit", "layer", "head", "label", "index", "value", "energy", "cumulative")


@torch.no_grad()
def singular_values(model, circuit: str = "ov", *, fold_ln: bool = True) -> pd.DataFrame:
    """Every head's singular values of its OV or QK circuit.

    Columns: circuit, layer, head, label, index (0 = largest), value, energy (value² over the
    sum of squares: the share of the squared Frobenius norm), cumulative (energy summed up to
    and including this index: how much a rank-(index+1) approximation keeps).

    >>> singular_values(model, "qk").query("index == 0").nlargest(3, "value").label.tolist()
    ['L3H1', 'L3H2', 'L0H1']
    """
    _check_model(model, "singular values")
    _check_choice(circuit, CIRCUITS, "circuit")
    w = head_weights(model, fold_ln)
    rows = []
    for layer in range(w.n_layers):
        for head in range(w.n_heads):
            s = _svd_factored(*_factors(w, layer, head, circuit))[1]
            e = s ** 2 / (s ** 2).sum().clamp_min(1e-300)
            for i, (v, en, c) in enumerate(zip(s.tolist(), e.tolist(), e.cumsum(0).tolist())):
                rows.append((circuit, layer, head, _label(layer, head), i, v, en, c))
    return pd.DataFrame(rows, columns=list(SINGULAR_COLUMNS))


TOKEN_COLUMNS = ("circuit", "layer", "head", "label", "direction", "singular_value", "side", "matrix",
                 "rank", "token_id", "token", "score")


def _vocab_matrices(model, w: HeadWeights) -> dict[str, Tensor]:
    """'embed': W_E [vocab, d_model]; 'unembed': W_U [vocab, d_model] (final norm weight folded in
    when the head weights are folded)."""
    hf, param = model.hf, model.arch.param          # param: loads an offloaded weight for the read
    w_e = param(hf.get_input_embeddings(), "weight")
    w_u = param(hf.get_output_embeddings(), "weight").double()
    if w.fold_ln:
        norm = None
        for path in ("transformer.ln_f", "model.norm", "gpt_neox.final_layer_norm"):
            obj = hf
            for part in path.split("."):
                obj = getattr(obj, part, None)
            if obj is not None:
                norm = param(obj, "weight")
                break
        if norm is not None:
            w_u = w_u * norm.double()[None]
    return {"embed": w_e.double(), "unembed": w_u}


@torch.no_grad()
def singular_tokens(model, layer: int, head: int, circuit: str = "ov", *, n_dirs: int = 3, k: int = 10,
                    project: str = "auto", fold_ln: bool = True) -> pd.DataFrame:
    """The top singular directions of a head's circuit, projected to the vocabulary.

    Each direction i has a reading side (OV: "input", QK: "query") and a writing / other side
    (OV: "output", QK: "key"). project "auto": the OV output side through the unembedding W_U
    (which tokens the head promotes), every other side through the embedding W_E (which
    tokens' embeddings the direction reads); "unembed" / "embed": that matrix for every side.
    Singular vectors have no sign of their own: each pair (u_i, v_i) is flipped so that the
    largest-magnitude vocabulary score of its second side is positive; tokens are the k
    highest scores.

    Columns: circuit, layer, head, label, direction (0 = top), singular_value, side, matrix
    (embed | unembed), rank (1..k), token_id, token, score (the token's vector · direction).

    >>> singular_tokens(model, 1, 0, "ov", n_dirs=1, k=5).side.value_counts().to_dict()
    {'input': 5, 'output': 5}
    """
    _check_choice(project, PROJECTIONS, "project")
    w = head_weights(model, fold_ln)
    U, S, V = head_svd(model, layer, head, circuit, weights=w)
    layer, head = int(layer) % w.n_layers, int(head) % w.n_heads
    vocab = _vocab_matrices(model, w)
    n_vocab = vocab["embed"].shape[0]
    if not isinstance(n_dirs, (int, np.integer)) or not 1 <= n_dirs <= len(S):
        raise ValueError(f"n_dirs must be an integer from 1 to d_head {len(S)}, not {n_dirs!r}")
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= n_vocab:
        raise ValueError(f"k must be an integer from 1 to the vocabulary size {n_vocab}, not {k!r}")
    sides = ("input", "output") if circuit == "ov" else ("query", "key")
    mats = {"input": "embed", "query": "embed", "key": "embed", "output": "unembed"}
    if project != "auto":
        mats = {s: project for s in mats}
    tok = model.tokenizer
    rows = []
    for i in range(int(n_dirs)):
        u, v = U[:, i], V[:, i]
        second = vocab[mats[sides[1]]] @ v
        if second[second.abs().argmax()] < 0:
            u, v = -u, -v
        for side, vec in zip(sides, (u, v)):
            scores = vocab[mats[side]] @ vec                               # [vocab]
            top_s, top_i = scores.topk(int(k))
            for r, (sc, ti) in enumerate(zip(top_s.tolist(), top_i.tolist()), 1):
                rows.append((circuit, layer, head, _label(layer, head), i, float(S[i]), side, mats[side],
                             r, ti, token_string(tok, ti), sc))
    return pd.DataFrame(rows, columns=list(TOKEN_COLUMNS))


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet (bytes_to_unicode) read backwards: character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = list(bs), 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def token_string(tokenizer, token_id: int) -> str:
    """A token as text; a token that is only part of a character's bytes (it decodes to '�')
    as its bytes in hex, e.g. '<0xE2>', so different byte fragments stay apart.

    >>> [token_string(model.tokenizer, i) for i in model.tokenizer.encode("é")]
    ['<0xC3>', '<0xA9>']
    """
    text = tokenizer.decode([token_id])
    if "\ufffd" not in text:
        return text
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if piece.startswith("<0x") and piece.endswith(">"):           # SentencePiece byte fallback
        return piece
    decoder = _byte_decoder()
    if all(ch in decoder for ch in piece):                          # byte-level BPE (GPT-2 style)
        return "<" + " ".join(f"0x{decoder[ch]:02X}" for ch in piece) + ">"
    return f"<token {token_id}>"


# -- rank-k approximation ------------------------------------------------------------------------
RANK_COLUMNS = ("run", "layer", "head", "label", "rank", "d_head", "metric", "value", "base_value",
                "change", "pattern_tv", "pattern_max_abs", "energy_kept", "n_pairs")


def _rank_k_keys(model, w: HeadWeights, cache, layer: int, head: int, rank: int) -> Tensor:
    """The head's keys with the QK circuit truncated to `rank`, after rotary: [b, T, d_head].

    QK = A B^T = U S V^T (A = W_Q, B = W_K, in the folded basis when w.fold_ln); its rank-k
    truncation is A (V_k V_k^T B)^T, so the keys read only the top-k right singular directions:
    k' = n(x) V_k V_k^T W_K + b_K, n(x) = the norm's output before its affine part (folded) or
    after it (unfolded).
    """
    a = model.arch
    lc = cache.layers[layer]
    x = a.ln1(layer, lc.resid_pre).double()                                 # [b, T, d_model]
    if w.fold_ln:
        x = (x - w.ln_bias[layer].double()) / w.ln_weight[layer].double()
    _, _, V = _svd_factored(*_factors(w, layer, head, "qk"))
    Vk = V[:, :rank]
    keys = (x @ Vk) @ (Vk.T @ w.W_K[layer, head].double()) + w.b_K[layer, head].double()   # [b, T, dh]
    keys = keys.to(lc.k.dtype)[:, :, None]                                  # [b, T, 1, dh]
    if cache.rope is not None:
        keys = apply_rotary(keys, *cache.rope)
    return keys[:, :, 0]


def _head_pattern(model, cache, layer: int, head: int, keys: Tensor) -> tuple[Tensor, Tensor]:
    """(pattern [b, T, T], z [b, T, d_head]) of one query head with the given rotated keys."""
    a = model.arch
    lc = cache.layers[layer]
    q = lc.q_rot[:, :, head]                                                # [b, T, dh]
    scores = torch.einsum("bqd,bkd->bqk", q, keys) * a.scaling(layer)
    T = q.shape[1]
    future = torch.arange(T, device=q.device)[None, :] > torch.arange(T, device=q.device)[:, None]
    pattern = scores.masked_fill(future, float("-inf")).softmax(-1).to(lc.v.dtype)
    kv = head // (a.n_heads // a.n_kv_heads)
    return pattern, torch.einsum("bqk,bkd->bqd", pattern, lc.v[:, :, kv])


def _check_ranks(ranks, d_head: int) -> tuple[int, ...]:
    if ranks is None:
        ranks = sorted({r for r in (1, 2, 4, 8, 16, 32, 64, 128, 256) if r < d_head} | {d_head})
    if isinstance(ranks, (int, np.integer)):
        ranks = (ranks,)
    out = []
    for r in ranks:
        if not isinstance(r, (int, np.integer)) or isinstance(r, bool) or not 0 <= r <= d_head:
            raise ValueError(f"rank must be an integer from 0 to d_head {d_head}, not {r!r}")
        out.append(int(r))
    if not out:
        raise ValueError("ranks is empty; give at least one rank (0..d_head)")
    return tuple(out)


@torch.no_grad()
def rank_k_head(model, prompts: PromptSet, layer: int, head: int, ranks=None, *,
                metric="logit_diff", run: str = "clean", fold_ln: bool = True) -> pd.DataFrame:
    """A head's attention recomputed with its QK circuit truncated to each rank; the effect.

    For each rank k: the head's keys read only the top-k right singular directions of its QK
    circuit (see `_rank_k_keys`), its pattern and output are recomputed, the attention output
    changes by (z' - z) W_O[head], and the rest of the model runs on (exact, from the layer on).
    ranks: None = 1, 2, 4, ... up to d_head (d_head reproduces the model: change 0).

    Columns: run, layer, head, label, rank, d_head, metric, value (mean over pairs of the metric
    with the approximated head), base_value (the model's own), change (value - base_value),
    pattern_tv (mean over pairs and destination positions of the total variation distance
    0.5·Σ|Δpattern|), pattern_max_abs, energy_kept (share of the QK circuit's squared Frobenius
    norm kept), n_pairs.

    >>> rank_k_head(model, prompts, 1, 0, ranks=[1, 32])["rank"].tolist()
    [1, 32]
    """
    from metrics import get_metric
    from patching.methods.pair import CachedPair
    _check_model(model, "the rank-k approximation of a head")
    _check_choice(run, ("clean", "corrupt"), "run")
    a = model.arch
    layer = check_index(layer, a.n_layers, "layer", f"the model has {a.n_layers} layers")
    head = check_index(head, a.n_heads, "head", f"each layer has {a.n_heads} heads")
    ranks = _check_ranks(ranks, a.d_head)
    m = get_metric(metric)
    w = head_weights(model, fold_ln)
    runner = model.runner
    runs = CachedPair.run(runner, prompts, m)
    cache = runs.clean if run == "clean" else runs.corrupt
    base_value = runs.score(cache.logits).double()
    lc = cache.layers[layer]
    z_base = lc.z[:, :, head]
    w_o = a.o_weight(layer).reshape(a.n_heads, a.d_head, a.d_model)[head]
    s = _svd_factored(*_factors(w, layer, head, "qk"))[1]
    energy = (s ** 2).cumsum(0) / (s ** 2).sum().clamp_min(1e-300)
    rows_idx = torch.arange(prompts.n_pairs, device=prompts.clean_tokens.device)
    rows = []
    for r in ranks:
        keys = _rank_k_keys(model, w, cache, layer, head, r)
        pattern, z = _head_pattern(model, cache, layer, head, keys)
        delta = (z - z_base) @ w_o                                          # [b, T, d_model]
        if a.parallel:
            logits = runner.resume(cache, rows_idx, layer, "post", lc.resid_post + delta, 0)
        else:
            logits = runner.resume(cache, rows_idx, layer, "mid", lc.resid_mid + delta, 0)
        value = runs.score(logits).double()
        diff = (pattern.float() - lc.pattern[:, head].float()).abs()        # [b, T, T]
        rows.append((run, layer, head, _label(layer, head), r, a.d_head, m.name, float(value.mean()),
                     float(base_value.mean()), float((value - base_value).mean()),
                     float(0.5 * diff.sum(-1).mean()), float(diff.max()),
                     float(energy[r - 1]) if r > 0 else 0.0, prompts.n_pairs))
    return pd.DataFrame(rows, columns=list(RANK_COLUMNS))


PATTERN_COLUMNS = ("run", "pair", "layer", "head", "rank", "dest", "src", "dest_token", "src_token",
                   "original", "approx", "diff")


@torch.no_grad()
def rank_k_pattern(model, prompts: PromptSet, layer: int, head: int, rank: int, *, pair: int = 0,
                   run: str = "clean", fold_ln: bool = True) -> pd.DataFrame:
    """One prompt's attention pattern of a head, original vs with a rank-k QK circuit.

    Long format, causal entries only (src <= dest). Columns: run, pair, layer, head, rank, dest,
    src, dest_token, src_token, original, approx, diff (approx - original).

    >>> rank_k_pattern(model, prompts, 1, 0, rank=2).pivot(index="dest", columns="src", values="diff").shape
    (15, 15)
    """
    _check_model(model, "the rank-k approximation of a head")
    _check_choice(run, ("clean", "corrupt"), "run")
    a = model.arch
    layer = check_index(layer, a.n_layers, "layer", f"the model has {a.n_layers} layers")
    head = check_index(head, a.n_heads, "head", f"each layer has {a.n_heads} heads")
    (rank,) = _check_ranks(rank, a.d_head)
    pair = check_index(pair, prompts.n_pairs, "pair", f"the set has {prompts.n_pairs} pairs")
    tokens = (prompts.clean_tokens if run == "clean" else prompts.corrupt_tokens)[pair:pair + 1]
    w = head_weights(model, fold_ln)
    cache = model.runner.run(tokens)
    pattern, _ = _head_pattern(model, cache, layer, head, _rank_k_keys(model, w, cache, layer, head, rank))
    orig = cache.layers[layer].pattern[0, head].float().cpu().numpy()
    new = pattern[0].float().cpu().numpy()
    T = orig.shape[0]
    dest, src = np.tril_indices(T)
    toks = [model.tokenizer.decode([int(t)]) for t in tokens[0].tolist()]
    return pd.DataFrame({
        "run": run, "pair": pair, "layer": layer, "head": head, "rank": rank, "dest": dest, "src": src,
        "dest_token": [toks[i] for i in dest], "src_token": [toks[i] for i in src],
        "original": orig[dest, src], "approx": new[dest, src], "diff": new[dest, src] - orig[dest, src],
    })[list(PATTERN_COLUMNS)]


__all__ = ["HeadWeights", "head_weights", "composition_scores", "head_svd", "singular_values",
           "singular_tokens", "rank_k_head", "rank_k_pattern", "COMPOSITIONS", "CIRCUITS"]
