"""Tiny random-weight Hugging Face models, built offline, saved like any local model.

Three families: GPT-2, Llama with grouped-query attention (4 query heads, 2 key/value heads)
and GPT-NeoX (partial rotary, parallel attention + MLP). All share a small byte-level BPE
tokenizer trained here, in which names such as " Mary" are single tokens.
"""
from __future__ import annotations

from pathlib import Path

import torch

CORPUS = (
    "When Mary and John went to the store, John gave a drink to Mary. "
    "When John and Mary went to the park, Mary gave a book to John. "
    "Then, Alice and Bob had a long argument, and afterwards Bob said to Alice. "
    "The war lasted from the year 1732 to the year 1745. Paris is a city in the country of France. "
    "Tom, Anna, Sarah, David, James, Emma went to the school, the office, the garden. "
) * 20

FAMILIES = ("gpt2", "llama", "neox")


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([CORPUS], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>")


def build_model(family: str, vocab_size: int, n_layers: int = 2, d_model: int = 32, n_heads: int = 4):
    from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM,
                              LlamaConfig, LlamaForCausalLM)
    torch.manual_seed({"gpt2": 0, "llama": 1, "neox": 2}[family])
    if family == "gpt2":
        cfg = GPT2Config(vocab_size=vocab_size, n_positions=128, n_embd=d_model, n_layer=n_layers,
                         n_head=n_heads, bos_token_id=0, eos_token_id=0)
        return GPT2LMHeadModel(cfg)
    if family == "llama":
        cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=d_model, intermediate_size=2 * d_model,
                          num_hidden_layers=n_layers, num_attention_heads=n_heads,
                          num_key_value_heads=n_heads // 2, max_position_embeddings=128,
                          bos_token_id=0, eos_token_id=0)
        return LlamaForCausalLM(cfg)
    if family == "neox":
        cfg = GPTNeoXConfig(vocab_size=vocab_size, hidden_size=d_model, intermediate_size=2 * d_model,
                            num_hidden_layers=n_layers, num_attention_heads=n_heads,
                            max_position_embeddings=128, rotary_pct=0.5, use_parallel_residual=True,
                            bos_token_id=0, eos_token_id=0)
        return GPTNeoXForCausalLM(cfg)
    raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")


def save_tiny_model(family: str, directory: Path, **sizes) -> Path:
    tokenizer = build_tokenizer()
    model = build_model(family, len(tokenizer), **sizes)
    # Bigger random weights than the init, so patching effects are visible above float noise.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(4.0)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory
