"""Train Patchboard's default model: a small GPT-2 with real IOI, factual-recall, greater-than and
induction circuits, plus its tokenizer, from scratch on one CPU thread.

    python scripts/train_default_model.py --recipe shipped     # the shipped model, all stages
    python scripts/train_default_model.py --recipe circuits    # patchboard-circuits (attention-only)
    python scripts/train_default_model.py                      # stage 1 only
    # (the stages and their flags: SHIPPED_STAGES below and assets/models/patchboard-tiny/MODEL_CARD.md)
    python scripts/train_default_model.py --steps 5 --d-model 32 --n-layer 1 --n-head 2 \\
        --items 2000 --out /tmp/tiny                           # a smoke run (seconds)
    python scripts/train_default_model.py --analyse-only       # IOI head patching of --out

Writes ``--out`` (default ``assets/models/patchboard-tiny/``): ``config.json``,
``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``,
``special_tokens_map.json``, ``generation_config.json`` and ``train_log.jsonl`` (loss per
logging step and eval results). Everything is seeded: the same flags give the same weights.

Tokenizer: byte-level BPE (GPT-2 style, ``add_prefix_space=False``) trained on the corpus, with
``<|endoftext|>`` as BOS/EOS. Digits are pre-split into pairs, as GPT-2 happens to split years
(``" 1732"`` -> ``" 17"``, ``"32"``), so greater-than answers are single two-digit tokens.

Training data: items from :func:`patching.tasks.families.training_examples`, one per row as
``<BOS> item`` -- exactly the shape the engine and the eval feed the model -- with rows of
similar length batched together. The loss is next-token cross-entropy on every token, weighted:
each task item's answer token counts ``--answer-weight`` times, and the first (random, hence
unpredictable) pass of an induction sequence counts zero. ``--random-repeat`` adds sequences of
random vocabulary tokens repeated twice (only the repeat is trained), ``--ioi-variants`` IOI
sentences that counting names cannot solve. ``--attn-only`` zeroes and freezes every MLP (GPT-2's
format, MLP output exactly 0); ``--prev-token-init`` starts layer 0 head 0 as a previous-token
head. The ``circuits`` recipe (patchboard-circuits, attention-only) and every run tried
for it, with its numbers: ``docs/training-log.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from patching.tasks import families as tasks  # noqa: E402

BOS = "<|endoftext|>"
DEFAULT_OUT = ROOT / "assets" / "models" / "patchboard-tiny"
CIRCUITS_OUT = ROOT / "assets" / "models" / "patchboard-circuits"
# Items of the shipped model's stage 1 (3000 steps x 64): their first 50,000 trained its tokenizer.
SHIPPED_TOKENIZER_ITEMS = 3000 * 64


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def required_single_tokens() -> list[str]:
    """Strings that must each be exactly one token: every task word with a leading space, the
    start-of-prompt city forms, two-digit years and the ``" XX"`` centuries.

    >>> " Mary" in required_single_tokens()
    True
    """
    words = [" " + w for w in tasks.vocabulary_words()]
    cities = list(tasks.CITIES)                 # "[CITY] is a city ..." starts a prompt
    years = [f"{i:02d}" for i in range(100)] + [f" {c}" for c in tasks.GT_CENTURIES]
    return words + cities + years


def build_tokenizer(corpus: list[str], vocab_size: int):
    """Train a byte-level BPE tokenizer on ``corpus`` and wrap it for transformers.

    Returns a ``PreTrainedTokenizerFast`` whose BOS/EOS is ``<|endoftext|>``; it does not add
    BOS by itself (as GPT-2): the training script and the engine prepend it.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        # " 1732" -> " 17", "32": years split into two-digit tokens like GPT-2's.
        pre_tokenizers.Split(Regex(r" ?\d\d"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[BOS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    # Every required string appears many times, so each one is merged into a single token.
    extra = required_single_tokens() * 20
    tok.train_from_iterator([*corpus, *extra], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=BOS,
                                   unk_token=BOS, model_max_length=10**6)
    missing = [s for s in required_single_tokens() if len(fast.encode(s)) != 1]
    if missing:
        raise ValueError(f"{len(missing)} strings are not single tokens with vocab_size="
                         f"{vocab_size} (raise --vocab-size): {missing[:20]}")
    return fast


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def token_weights(kind: str, ids: list[int], period_id: int, answer_weight: float) -> list[float]:
    """Loss weight of each token of one item (as a prediction target).

    Task items end with ``answer "."``: the answer token gets ``answer_weight``. In an induction
    item the first pass over the random words is unpredictable noise and gets weight 0; the
    repeat (the part induction can predict) keeps 1. Everything else: 1.

    >>> token_weights("ioi", [4, 5, 9, 1], period_id=1, answer_weight=3.0)
    [1.0, 1.0, 3.0, 1.0]
    >>> token_weights("induction", [4, 5, 6, 4, 5, 1], period_id=1, answer_weight=3.0)
    [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    """
    weights = [1.0] * len(ids)
    if kind == "induction":
        repeat = ids.index(ids[0], 1) if ids[0] in ids[1:] else len(ids)
        for i in range(1, repeat):
            weights[i] = 0.0
    elif kind != "filler" and len(ids) >= 2 and ids[-1] == period_id:
        weights[-2] = answer_weight
    return weights


def make_batches(items_ids: list[list[int]], item_weights: list[list[float]], bos_id: int,
                 batch_size: int, max_len: int, seed: int) -> list[tuple[torch.Tensor, ...]]:
    """One item per row, ``[BOS] + item`` (exactly what the engine feeds at eval time), rows of
    similar length batched together, right-padded; batch order shuffled with ``seed``.

    Returns ``(input_ids [B, T], targets [B, T-1], weights [B, T-1])`` triples; padding has
    weight 0.

    >>> (ids, tgt, w), = make_batches([[5, 6], [7]], [[1.0, 2.0], [1.0]], 0, 2, 8, 0)
    >>> ids.tolist(), tgt.tolist(), w.tolist()
    ([[0, 7, 0], [0, 5, 6]], [[7, 0], [5, 6]], [[1.0, 0.0], [1.0, 2.0]])
    """
    order = sorted(range(len(items_ids)), key=lambda i: (len(items_ids[i]), i))
    batches = []
    for lo in range(0, len(order), batch_size):
        chunk = order[lo: lo + batch_size]
        width = min(max_len, 1 + max(len(items_ids[i]) for i in chunk))
        ids = torch.full((len(chunk), width), bos_id, dtype=torch.long)
        w = torch.zeros((len(chunk), width - 1))
        for r, i in enumerate(chunk):
            seq = ([bos_id] + items_ids[i])[:width]
            ids[r, : len(seq)] = torch.tensor(seq)
            w[r, : len(seq) - 1] = torch.tensor(item_weights[i][: len(seq) - 1])
        batches.append((ids, ids[:, 1:].clone(), w))
    random.Random(seed).shuffle(batches)
    return batches


def random_repeat_items(n: int, vocab: int, bos_id: int, seed: int,
                        lengths: tuple[int, int] = (10, 30)) -> list[list[int]]:
    """``n`` sequences of token ids drawn uniformly from the vocabulary (no BOS, no repeats
    within a half), each repeated twice: the data that teaches induction heads fastest, because
    the second half is predictable only by copying the token that followed last time.

    >>> seqs = random_repeat_items(2, 50, 0, seed=1, lengths=(3, 5))
    >>> [s[: len(s) // 2] == s[len(s) // 2:] and 0 not in s for s in seqs]
    [True, True]
    """
    rng = random.Random(f"random-repeat/{seed}")
    pool = [i for i in range(vocab) if i != bos_id]
    out = []
    for _ in range(n):
        half = rng.sample(pool, rng.randint(*lengths))
        out.append(half + half)
    return out


def random_repeat_weights(ids: list[int]) -> list[float]:
    """Loss weights of a repeated random sequence: 0 over the first half and the first token of
    the second (unpredictable), 1 over the rest of the repeat.

    >>> random_repeat_weights([7, 8, 9, 7, 8, 9])
    [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    """
    half = len(ids) // 2
    return [0.0] * (half + 1) + [1.0] * (len(ids) - half - 1)


def ioi_variant_item(rng: random.Random) -> str:
    """An IOI training sentence that a "the name seen once" count cannot solve, or not alone:
    either the indirect object is mentioned once more before the story ("A was happy. When A
    and B ..., B gave a drink to A": both names occur twice, only "which name is the subject
    now" tells them apart), or a third name joins both the group and the subject ("When A, C and
    B went ..., B and C gave a drink to A": two duplicated names to inhibit).

    >>> ioi_variant_item(random.Random(0)).endswith(".")
    True
    """
    filled, io, s, _, _ = tasks._ioi_fill(rng, "train")
    if rng.random() < 0.5:
        c = rng.choice([n for n in tasks.NAMES if n not in (io, s)])
        for pair in ("[B] and [A]", "[A] and [B]"):
            if pair in filled:
                x, y = pair[:3], pair[-3:]
                filled = filled.replace(pair, f"{x}, [C] and {y}", 1)
                break
        first = filled.index("[B]")
        s2 = filled.index("[B]", first + 3)
        both = "[B] and [C]" if rng.random() < 0.5 else "[C] and [B]"
        filled = filled[:s2] + both + filled[s2 + 3:]
        filled = filled.replace("[C]", c)
    else:
        filled = f"[A] {rng.choice(('was happy', 'smiled', 'was there', 'came too'))}. " + filled
    return filled.replace("[A]", io).replace("[B]", s) + "."


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=None,
                   help=f"output directory (default: {DEFAULT_OUT.relative_to(ROOT)}, or "
                        f"{CIRCUITS_OUT.relative_to(ROOT)} with --recipe circuits)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64, help="items (rows) per step")
    p.add_argument("--answer-weight", type=float, default=3.0,
                   help="loss weight of each task item's answer token")
    p.add_argument("--n-ctx", type=int, default=128, help="model context (n_positions)")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--attn-only", action="store_true",
                   help="attention-only: every MLP has one hidden unit with all-zero, frozen "
                        "weights, so its output is exactly 0 (GPT-2's format has no switch for it)")
    p.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size cap")
    p.add_argument("--pos-init", choices=("sinusoidal", "random"), default="random",
                   help="initialisation of the learned position embeddings")
    p.add_argument("--pos-scale", type=float, default=0.1,
                   help="scale of the sinusoidal position initialisation")
    p.add_argument("--prev-token-init", type=float, default=0.0,
                   help="if > 0: sinusoidal positions, and layer 0 head 0's query/key weights "
                        "initialised (with this gain) to attend to the previous position; "
                        "trained freely from there (see previous_token_init)")
    p.add_argument("--prev-token-dims", choices=("all", "head"), default="all",
                   help="with --prev-token-init: the sinusoidal table fills every dimension of "
                        "wpe ('all'), or only the d_head dimensions the head reads ('head'; the "
                        "rest keep their random init, so positions do not swamp the tokens)")
    p.add_argument("--init-range", type=float, default=0.08,
                   help="std of the initial weights (GPT-2 uses 0.02; larger shortens the "
                        "plateau before copying/induction circuits form)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--items", type=int, default=None,
                   help="training items to generate (default: enough for --steps)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from this model directory (weights and tokenizer) instead of "
                        "from scratch: a second training stage")
    p.add_argument("--mix", type=str, default=None,
                   help="item shares, e.g. 'ioi=0.4,factual=0.2,greater_than=0.1,induction=0.2,"
                        "filler=0.1' (default: patching.tasks.families.TRAIN_MIX)")
    p.add_argument("--random-repeat", type=float, default=0.0,
                   help="extra share of items that are random vocabulary tokens repeated twice "
                        "(10-30 tokens per half; see random_repeat_items)")
    p.add_argument("--ioi-variants", type=float, default=0.0,
                   help="extra share of items that are IOI sentences counting cannot solve "
                        "(see ioi_variant_item)")
    p.add_argument("--tokenizer-corpus", choices=("mix", "default"), default="mix",
                   help="train the tokenizer on this run's items ('mix') or on the shipped model's "
                        "stage-1 items ('default': patchboard-tiny's vocabulary)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=0,
                   help="evaluate and save a checkpoint every N steps (0: only at the end)")
    p.add_argument("--eval-n", type=int, default=100, help="eval items per task")
    p.add_argument("--recipe", choices=tuple(RECIPES), default=None,
                   help="run every stage of a recipe in order: 'shipped' (patchboard-tiny, "
                        "SHIPPED_STAGES) or 'circuits' (patchboard-circuits, CIRCUITS_STAGES); "
                        "--out and --threads apply, other flags are ignored")
    p.add_argument("--analyse-only", action="store_true",
                   help="skip training; print IOI head-out patching of the model in --out")
    args = p.parse_args(argv)
    if args.init_from is not None and args.prev_token_init > 0:
        p.error(f"--prev-token-init {args.prev_token_init:g} would overwrite the positions and "
                f"layer 0 of --init-from {args.init_from}; use it only when training from scratch")
    return args


def sinusoidal_positions(n_ctx: int, d_model: int, scale: float) -> torch.Tensor:
    """Vaswani et al.'s sinusoidal position table ``[n_ctx, d_model]`` times ``scale``.

    Only an initialisation of GPT-2's learned ``wpe`` (the architecture is unchanged): a linear
    map takes position i's code to position i-1's, so previous-token heads -- the first half of
    every induction and IOI circuit -- are easy to learn, and the copying circuits form within
    the training budget instead of after a long plateau.

    >>> sinusoidal_positions(4, 8, 1.0).shape
    torch.Size([4, 8])
    """
    pos = torch.arange(n_ctx, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10_000.0) * torch.arange(0, d_model, 2) / d_model)
    table = torch.zeros(n_ctx, d_model)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return scale * table


def previous_token_init(model, gain: float, pos_scale: float, dims: str = "all") -> None:
    """Start layer 0 head 0 as a previous-token head, through the positions only: ``wpe`` becomes
    the sinusoidal table (``pos_scale``), the head's query reads the fastest ``d_head / 2``
    frequency pairs rotated back by one position, its key reads them unrotated, so the score
    ``q_i . k_j`` is ``gain * sum_k cos(w_k (i - 1 - j))`` (largest at ``j = i - 1``). Everything
    stays trainable; it only shortens the plateau before induction heads form. ``dims="head"``
    writes the table into those ``d_head`` dimensions only and leaves the other dimensions of
    ``wpe`` as initialised: with ``"all"`` at ``pos_scale`` 0.5 the positions' norm is ~4x the
    tokens' and the task circuits (IOI, factual) hardly learn (docs/training-log.md, run Z).

    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> m = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=5))
    >>> previous_token_init(m, 1.0, 0.5)
    >>> tuple(m.transformer.h[0].attn.c_attn.weight.shape)
    (16, 48)
    >>> before = m.transformer.wpe.weight[:, 8:].clone()
    >>> previous_token_init(m, 1.0, 0.25, dims="head")      # d_head 8: dims 8.. keep their values
    >>> bool((m.transformer.wpe.weight[:, 8:] == before).all())
    True
    """
    cfg = model.config
    d, d_head = cfg.n_embd, cfg.n_embd // cfg.n_head
    n_pairs = d_head // 2
    freq = torch.exp(-math.log(10_000.0) * torch.arange(0, d, 2) / d)[:n_pairs]
    w_q, w_k = torch.zeros(d, d_head), torch.zeros(d, d_head)
    for k in range(n_pairs):          # position dims 2k (sin), 2k+1 (cos) of wpe
        c, s = math.cos(freq[k]), math.sin(freq[k])
        # query: [sin, cos](w i) -> [sin, cos](w (i - 1)) = [s_i c - c_i s, c_i c + s_i s]
        w_q[2 * k, 2 * k], w_q[2 * k + 1, 2 * k] = c, -s
        w_q[2 * k, 2 * k + 1], w_q[2 * k + 1, 2 * k + 1] = s, c
        w_k[2 * k, 2 * k] = w_k[2 * k + 1, 2 * k + 1] = 1.0
    with torch.no_grad():
        table = sinusoidal_positions(cfg.n_positions, d, pos_scale)
        if dims == "head":
            model.transformer.wpe.weight[:, :d_head] = table[:, :d_head]
        else:
            model.transformer.wpe.weight.copy_(table)
        c_attn = model.transformer.h[0].attn.c_attn.weight          # [d, 3d]: q | k | v
        c_attn[:, :d_head] = gain * w_q
        c_attn[:, d: d + d_head] = w_k
        c_attn = model.transformer.h[0].attn.c_attn.bias
        c_attn[:d_head] = 0.0
        c_attn[d: d + d_head] = 0.0


def silence_mlps(model) -> None:
    """Zero and freeze every MLP weight of a GPT-2 model: each MLP then outputs exactly 0
    (``gelu_new(0) = 0``, zero bias), leaving an attention-only transformer in GPT-2's format.

    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> m = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, n_inner=1, vocab_size=5))
    >>> silence_mlps(m)
    >>> float(m.transformer.h[0].mlp(torch.randn(1, 3, 8)).abs().max())
    0.0
    """
    for block in model.transformer.h:
        for param in block.mlp.parameters():
            with torch.no_grad():
                param.zero_()
            param.requires_grad_(False)


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warmup, then cosine decay to 10% of ``--lr``."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def best_head_scores(model_dir: Path) -> dict:
    """The best head of each detector in ``scripts/head_scores.py`` (plain ``transformers``,
    32 repeated random sequences of 20 tokens), as ``{detector: [score, "LxHy"]}``."""
    from scripts.head_scores import main as head_scores_main
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        grids = head_scores_main([str(model_dir), "--n", "32", "--json"])
    return {name: max([v, f"L{layer}H{head}"] for layer, row in enumerate(grid)
                      for head, v in enumerate(row)) for name, grid in grids.items()}


def save(model, tokenizer, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    special = out / "special_tokens_map.json"
    if not special.exists():      # transformers >= 5 folds it into tokenizer_config.json
        special.write_text(json.dumps({"bos_token": BOS, "eos_token": BOS, "unk_token": BOS},
                                      indent=2) + "\n")


IOI_ANALYSIS_PROMPT = re.compile(r"^When \w+ and \w+ went to the \w+, \w+ gave a \w+ to$")


def analyse_ioi_heads(model_dir: Path, n: int = 64) -> dict:
    """Head-out activation patching on held-out IOI pairs with TransformerLens' own
    ``get_act_patch_attn_head_out_all_pos`` (denoise: corrupt run, one head's clean output
    patched in, all positions), normalized so 1 = clean logit diff and 0 = corrupt.

    Uses one template wording ("When A and B went to the PLACE, B gave a OBJECT to", ABBA and
    BABA) so every prompt has the same length. Returns the baselines and the [layer, head] grid.
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.patching import get_act_patch_attn_head_out_all_pos

    pairs = [p for p in tasks.make_pairs("ioi", 4000, split="eval", seed=1)
             if IOI_ANALYSIS_PROMPT.match(p.clean)][:n]
    bridge = TransformerBridge.boot_transformers(str(model_dir), device="cpu")
    clean = bridge.to_tokens([p.clean for p in pairs])
    corrupt = bridge.to_tokens([p.corrupt for p in pairs])
    answer = torch.tensor([bridge.to_single_token(p.answer) for p in pairs])
    wrong = torch.tensor([bridge.to_single_token(p.wrong) for p in pairs])

    def logit_diff(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1]
        return (last.gather(1, answer[:, None]) - last.gather(1, wrong[:, None])).mean()

    with torch.no_grad():
        clean_logits, clean_cache = bridge.run_with_cache(clean)
        clean_ld = logit_diff(clean_logits).item()
        corrupt_ld = logit_diff(bridge(corrupt)).item()

        def metric(logits: torch.Tensor) -> torch.Tensor:
            return (logit_diff(logits) - corrupt_ld) / (clean_ld - corrupt_ld)

        grid = get_act_patch_attn_head_out_all_pos(bridge, corrupt, clean_cache, metric)
    return {"n": len(pairs), "clean_logit_diff": round(clean_ld, 3),
            "corrupt_logit_diff": round(corrupt_ld, 3),
            "head_out_normalized": [[round(float(v), 3) for v in row] for row in grid]}


# The shipped weights: stage 1 learns every task; the later stages, each from the previous
# stage's weights and tokenizer, shift the mix towards induction (which forms last) and then back
# towards greater-than (which the induction-heavy stages erode). (flags, ...) per stage.
_INDUCTION_MIX = "ioi=0.15,factual=0.15,greater_than=0.07,induction=0.6,filler=0.03"
SHIPPED_STAGES: tuple[tuple[str, ...], ...] = (
    (),
    ("--steps", "2000", "--warmup", "50", "--lr", "3e-3", "--seed", "2", "--mix", _INDUCTION_MIX),
    ("--steps", "3000", "--warmup", "50", "--lr", "2e-3", "--seed", "3", "--mix", _INDUCTION_MIX),
    ("--steps", "3000", "--warmup", "50", "--lr", "1.5e-3", "--seed", "5", "--mix",
     "ioi=0.2,factual=0.15,greater_than=0.15,induction=0.47,filler=0.03"),
    ("--steps", "1500", "--warmup", "50", "--lr", "7e-4", "--seed", "6", "--mix",
     "ioi=0.2,factual=0.1,greater_than=0.3,induction=0.37,filler=0.03"),
)


# patchboard-circuits (issue #19): attention-only, 3 layers x 4 heads, two stages in one command.
# Stage 1 learns everything at once from a previous-token start (head dims only, so positions do
# not swamp the tokens) at lr 1e-3, with as many repeated random sequences as task items: the
# induction head forms by step ~2000, IOI follows by ~3500 (run D1 of docs/training-log.md).
# Stage 2 (run E2) finishes IOI and the induction task at half the rate. Measured (n = 500):
# IOI 0.980 / logit diff 5.49, factual 1.000, greater-than 0.867, induction 0.972; plain
# transformers: previous-token L0H0 0.831, induction L1H0 0.964.
CIRCUITS_STAGES: tuple[tuple[str, ...], ...] = (
    ("--attn-only", "--n-layer", "3", "--n-head", "4", "--d-model", "128", "--prev-token-init", "3",
     "--pos-scale", "0.5", "--prev-token-dims", "head", "--mix",
     "ioi=0.35,factual=0.15,greater_than=0.2,induction=0.2,filler=0.1", "--random-repeat", "1.0",
     "--steps", "4000", "--lr", "1e-3", "--tokenizer-corpus", "default", "--eval-every", "500",
     "--eval-n", "100"),
    ("--attn-only", "--mix", "ioi=0.35,factual=0.1,greater_than=0.2,induction=0.3,filler=0.05",
     "--random-repeat", "1.0", "--steps", "1500", "--warmup", "50", "--lr", "5e-4", "--seed", "1",
     "--eval-every", "500", "--eval-n", "100"),
)
RECIPES = {"shipped": SHIPPED_STAGES, "circuits": CIRCUITS_STAGES}


def run_recipe(out: Path, threads: int, stages=SHIPPED_STAGES) -> dict:
    """Train every stage in order; stage k starts from stage k-1's output (kept in a temporary
    directory), the last stage writes ``out``; ``out/train_log.jsonl`` holds every stage's log,
    each record tagged with its ``stage``. Returns the last stage's result plus the summed
    training time of all stages and the wall time of the whole recipe (data, tokenizer, evals).

    >>> run_recipe(Path("/tmp/shipped"), threads=1)["recipe_train_s"]     # doctest: +SKIP
    """
    import tempfile

    total, cpu, previous, result, logs = 0.0, 0.0, None, {}, []
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="patchboard-stages-") as tmp:
        for k, flags in enumerate(stages, start=1):
            stage_out = out if k == len(stages) else Path(tmp) / str(k)
            argv = [*flags, "--out", str(stage_out), "--threads", str(threads)]
            if previous is not None:
                argv += ["--init-from", str(previous)]
            result = main(argv)
            logs += [json.dumps({"stage": k, **json.loads(line)})
                     for line in (stage_out / "train_log.jsonl").read_text().splitlines()]
            total += result["train_s"]
            cpu += result["train_cpu_s"]
            previous = stage_out
    summary = {**result, "stages": len(stages), "recipe_train_s": round(total, 1),
               "recipe_train_cpu_s": round(cpu, 1), "recipe_wall_s": round(time.time() - t0, 1)}
    logs.append(json.dumps({"event": "recipe", **{k: v for k, v in summary.items()
                                                  if k.startswith("recipe") or k == "stages"}}))
    (out / "train_log.jsonl").write_text("\n".join(logs) + "\n")
    return summary


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.out is None:
        args.out = CIRCUITS_OUT if args.recipe == "circuits" else DEFAULT_OUT
    if args.recipe:
        return run_recipe(args.out, args.threads, RECIPES[args.recipe])
    if args.analyse_only:
        result = analyse_ioi_heads(args.out)
        print(json.dumps(result, indent=1))
        return result
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.use_deterministic_algorithms(True)
    from transformers import GPT2Config, GPT2LMHeadModel

    t0 = time.time()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train_log.jsonl"
    log_file = log_path.open("w")

    def log(record: dict) -> None:
        record = {"time_s": round(time.time() - t0, 1), **record}
        print(json.dumps(record), flush=True)
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()

    n_items = args.items or args.steps * args.batch_size
    mix = None
    if args.mix:
        mix = {k: float(v) for k, v in (kv.split("=") for kv in args.mix.split(","))}
    examples = tasks.training_examples(n_items, seed=args.seed, mix=mix)
    if args.init_from:            # a second stage: keep the tokenizer and weights of a first
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(args.init_from)
    else:
        corpus = (examples if args.tokenizer_corpus == "mix"
                  else tasks.training_examples(SHIPPED_TOKENIZER_ITEMS, seed=0))
        tokenizer = build_tokenizer([text for _, text in corpus[:50_000]], args.vocab_size)
    n_variants = round(args.ioi_variants * n_items)
    variant_rng = random.Random(f"ioi-variants/{args.seed}")
    examples += [("ioi", ioi_variant_item(variant_rng)) for _ in range(n_variants)]
    bos_id = tokenizer.bos_token_id
    period_id = tokenizer.convert_tokens_to_ids(".")
    items_ids = tokenizer([text for _, text in examples], add_special_tokens=False)["input_ids"]
    weights = [token_weights(kind, ids, period_id, args.answer_weight)
               for (kind, _), ids in zip(examples, items_ids)]
    repeats = random_repeat_items(round(args.random_repeat * n_items), len(tokenizer), bos_id,
                                  args.seed)
    items_ids += repeats
    weights += [random_repeat_weights(ids) for ids in repeats]
    batches = make_batches(items_ids, weights, bos_id, args.batch_size, args.n_ctx, args.seed)
    log({"event": "data", "items": len(items_ids), "random_repeat": len(repeats),
         "ioi_variants": n_variants, "batches": len(batches), "vocab": len(tokenizer),
         "tokens": sum(len(ids) + 1 for ids in items_ids)})

    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=args.n_ctx, n_embd=args.d_model,
        n_layer=args.n_layer, n_head=args.n_head, n_inner=1 if args.attn_only else 4 * args.d_model,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=bos_id, eos_token_id=bos_id, tie_word_embeddings=True,
        initializer_range=args.init_range)
    model = GPT2LMHeadModel(config)
    if args.init_from:
        model = GPT2LMHeadModel.from_pretrained(args.init_from, use_safetensors=True)
        config = model.config
    if args.pos_init == "sinusoidal":
        with torch.no_grad():
            model.transformer.wpe.weight.copy_(sinusoidal_positions(args.n_ctx, args.d_model,
                                                                    args.pos_scale))
    if args.prev_token_init > 0:
        previous_token_init(model, args.prev_token_init, args.pos_scale, args.prev_token_dims)
    if args.attn_only:
        silence_mlps(model)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log({"event": "model", "params": n_params, "config": {
        k: getattr(config, k) for k in ("n_layer", "n_head", "n_embd", "n_positions",
                                        "vocab_size")}})

    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trained if p.dim() >= 2]
    no_decay = [p for n, p in trained if p.dim() < 2]
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}],
                              lr=args.lr, betas=(0.9, 0.98))
    model.train()
    running, t_train, cpu_train = None, time.time(), time.process_time()
    for step in range(args.steps):
        input_ids, targets, w = batches[step % len(batches)]
        for group in optim.param_groups:
            group["lr"] = lr_at(step, args)
        logits = model(input_ids=input_ids).logits[:, :-1]           # [B, T-1, vocab]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
        loss = (nll * w.reshape(-1)).sum() / w.sum()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % args.log_every == 0 or step == args.steps - 1:
            log({"event": "step", "step": step, "loss": round(loss.item(), 4),
                 "loss_ema": round(running, 4), "lr": round(lr_at(step, args), 6)})
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            model.eval()
            save(model, tokenizer, out)
            from patching.tasks.evaluate import evaluate
            log({"event": "eval", "step": step + 1, **evaluate(out, n=args.eval_n),
                 "best_heads": best_head_scores(out)})
            model.train()

    model.eval()
    model.generation_config.pad_token_id = bos_id
    save(model, tokenizer, out)
    train_s = time.time() - t_train
    result = {"event": "done", "steps": args.steps, "final_loss_ema": round(running, 4),
              "train_s": round(train_s, 1),
              "train_cpu_s": round(time.process_time() - cpu_train, 1), "total_s": round(time.time() - t0, 1),
              "params": n_params, "args": {k: str(v) for k, v in vars(args).items()}}
    log(result)
    log_file.close()
    return result


if __name__ == "__main__":
    main()
