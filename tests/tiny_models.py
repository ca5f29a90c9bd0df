"""Tiny models built from a config, saved like real ones, standing in for the bundled model and Hub models.

A byte-level BPE tokenizer (so Chinese and emoji split across tokens, as with real models) and a randomly
initialised Llama, Mistral (sliding-window attention) or GPT-2 of a few thousand parameters: loads and generates in milliseconds on CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "hello world, the quick brown fox jumps over the lazy dog",
    "user assistant system you are a helpful assistant",
]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE with ~300 tokens and ChatML specials; no chat template (the default one applies)."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(_CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", bos_token="<|im_start|>", unk_token="<|endoftext|>"
    )


def save_tiny_model(path: Path, *, arch: str = "llama", context: int = 256, seed: int = 0, hidden: int = 32) -> Path:
    """Write a tiny random model and its tokenizer to ``path`` with ``save_pretrained``; returns ``path``. ``hidden``:
    the width (a few hundred makes the weights outweigh file headers, for tests of sizes on disk)."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    if arch in ("llama", "mistral"):
        shape = dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=context,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=eos,
            pad_token_id=eos,
            tie_word_embeddings=True,
        )
        if arch == "llama":
            model = LlamaForCausalLM(LlamaConfig(**shape))
        else:  # a model that keeps transformers' own KV caches (no KV buffer, so no decode package)
            model = MistralForCausalLM(MistralConfig(**shape, sliding_window=context // 2))
    elif arch == "gpt2":
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=hidden,
            n_layer=2,
            n_head=4,
            n_positions=context,
            eos_token_id=eos,
            bos_token_id=tokenizer.bos_token_id,
        )
        model = GPT2LMHeadModel(config)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
