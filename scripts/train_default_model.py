"""Train Patchboard's default model: a small GPT-2 with real IOI, factual-recall, greater-than and
induction circuits, plus its tokenizer, from scratch on one CPU thread.

    python scripts/train_default_model.py                      # the shipped model (~15 min)
    python scripts/train_default_model.py --steps 5 --d-model 32 --n-layer 1 --n-head 2 \\
        --items 2000 --out /tmp/tiny                           # a smoke run (seconds)

Writes ``--out`` (default ``assets/models/patchboard-tiny/``): ``config.json``,
``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``,
``special_tokens_map.json``, ``generation_config.json`` and ``train_log.jsonl`` (loss per
logging step and eval results). Everything is seeded: the same flags give the same weights.

Tokenizer: byte-level BPE (GPT-2 style, ``add_prefix_space=False``) trained on the corpus, with
``<|endoftext|>`` as BOS/EOS. Digits are pre-split into pairs, as GPT-2 happens to split years
(``" 1732"`` -> ``" 17"``, ``"32"``), so greater-than answers are single two-digit tokens.

Training data: items from :func:`patching.tasks.training_items`, each preceded by BOS, packed
greedily into rows of ``--seq-len`` tokens. Every row starts with BOS; an item never straddles
two rows; the tail of a row is padding that the loss ignores.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from patching import tasks  # noqa: E402

BOS = "<|endoftext|>"
DEFAULT_OUT = ROOT / "assets" / "models" / "patchboard-tiny"


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


def pack_rows(items_ids: list[list[int]], bos_id: int, seq_len: int) -> tuple[torch.Tensor,
                                                                               torch.Tensor]:
    """Greedily pack ``[BOS] + item`` sequences into rows of ``seq_len`` tokens.

    Returns ``input_ids`` and ``labels``, both ``[rows, seq_len]``; padding is BOS in the input
    and -100 (ignored) in the labels.

    >>> ids, labels = pack_rows([[5, 6], [7]], bos_id=0, seq_len=6)
    >>> ids.tolist(), labels.tolist()
    ([[0, 5, 6, 0, 7, 0]], [[0, 5, 6, 0, 7, -100]])
    """
    rows, row = [], []
    for ids in items_ids:
        piece = [bos_id] + ids[: seq_len - 1]
        if len(row) + len(piece) > seq_len:
            rows.append(row)
            row = []
        row.extend(piece)
    if row:
        rows.append(row)
    input_ids = torch.full((len(rows), seq_len), bos_id, dtype=torch.long)
    labels = torch.full((len(rows), seq_len), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r)
        labels[i, : len(r)] = torch.tensor(r)
    return input_ids, labels


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=32, help="rows per step")
    p.add_argument("--seq-len", type=int, default=96, help="tokens per training row")
    p.add_argument("--n-ctx", type=int, default=128, help="model context (n_positions)")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size cap")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--items", type=int, default=None,
                   help="training items to generate (default: enough for --steps)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=0,
                   help="evaluate and save a checkpoint every N steps (0: only at the end)")
    p.add_argument("--eval-n", type=int, default=100, help="eval items per task")
    return p.parse_args(argv)


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warmup, then cosine decay to 10% of ``--lr``."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def save(model, tokenizer, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    special = out / "special_tokens_map.json"
    if not special.exists():      # transformers >= 5 folds it into tokenizer_config.json
        special.write_text(json.dumps({"bos_token": BOS, "eos_token": BOS, "unk_token": BOS},
                                      indent=2) + "\n")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
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

    # ~5 items fit a 96-token row on average; generate a little more than needed.
    n_items = args.items or int(args.steps * args.batch_size * args.seq_len / 14)
    items = tasks.training_items(n_items, seed=args.seed)
    tokenizer = build_tokenizer(items[:50_000], args.vocab_size)
    bos_id = tokenizer.bos_token_id
    items_ids = tokenizer(items, add_special_tokens=False)["input_ids"]
    input_ids, labels = pack_rows(items_ids, bos_id, args.seq_len)
    perm = torch.randperm(len(input_ids), generator=torch.Generator().manual_seed(args.seed))
    input_ids, labels = input_ids[perm], labels[perm]
    log({"event": "data", "items": n_items, "rows": len(input_ids), "vocab": len(tokenizer),
         "tokens": int((labels != -100).sum())})

    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=args.n_ctx, n_embd=args.d_model,
        n_layer=args.n_layer, n_head=args.n_head, n_inner=4 * args.d_model,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=bos_id, eos_token_id=bos_id, tie_word_embeddings=True)
    model = GPT2LMHeadModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    log({"event": "model", "params": n_params, "config": {
        k: getattr(config, k) for k in ("n_layer", "n_head", "n_embd", "n_positions",
                                        "vocab_size")}})

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}],
                              lr=args.lr, betas=(0.9, 0.98))
    model.train()
    n_rows = len(input_ids)
    running, t_train = None, time.time()
    for step in range(args.steps):
        lo = (step * args.batch_size) % n_rows
        idx = torch.arange(lo, lo + args.batch_size) % n_rows
        for group in optim.param_groups:
            group["lr"] = lr_at(step, args)
        loss = model(input_ids=input_ids[idx], labels=labels[idx]).loss
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
            from patching.evaluate import evaluate
            log({"event": "eval", "step": step + 1, **evaluate(out, n=args.eval_n)})
            model.train()

    model.eval()
    model.generation_config.pad_token_id = bos_id
    save(model, tokenizer, out)
    train_s = time.time() - t_train
    result = {"event": "done", "steps": args.steps, "final_loss_ema": round(running, 4),
              "train_s": round(train_s, 1), "total_s": round(time.time() - t0, 1),
              "params": n_params, "args": {k: str(v) for k, v in vars(args).items()}}
    log(result)
    log_file.close()
    return result


if __name__ == "__main__":
    main()
