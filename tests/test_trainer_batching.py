"""Length-grouped dynamic padding: every conversation once per epoch, little padding, no cross-talk between rows."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from trainer.batching import Collator, LengthGroupedBatches, padding_efficiency
from trainer.chat_template import ensure_chat_template
from trainer.data import Conversation
from trainer.render import render_conversations

from .tiny_models import save_tiny_model, tiny_tokenizer
from .tiny_datasets import chat_lines


def test_every_example_once_per_epoch_and_reproducible() -> None:
    lengths = [random.Random(i).randint(5, 500) for i in range(203)]
    sampler = LengthGroupedBatches(lengths, micro_batch=4, seed=7)
    epoch0 = sampler.batches()
    assert sorted(i for b in epoch0 for i in b) == list(range(203))
    assert len(epoch0) == len(sampler) == 51
    assert LengthGroupedBatches(lengths, 4, seed=7).batches() == epoch0  # same seed, same order: resumable
    sampler.set_epoch(1)
    assert sampler.batches() != epoch0


def test_grouping_wastes_less_than_random_batches() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(20, 1000) for _ in range(512)]
    grouped = padding_efficiency(lengths, LengthGroupedBatches(lengths, 8, seed=0).batches())
    order = list(range(512))
    rng.shuffle(order)
    shuffled = padding_efficiency(lengths, [order[i : i + 8] for i in range(0, 512, 8)])
    assert grouped > 0.9 > shuffled


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_rows_do_not_see_each_other(tiny_model_dir: Path) -> None:
    """Each row is one conversation starting at position 0 with padding masked: its logits equal the logits of
    the conversation run alone, so nothing leaks between conversations batched together."""
    tokenizer = ensure_chat_template(tiny_tokenizer())
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    conversations = [Conversation(tuple(r["messages"]), f"x:{i}") for i, r in enumerate(chat_lines(4))]
    examples = render_conversations(tokenizer, conversations, max_length=None).examples
    assert len({len(e) for e in examples}) > 1  # different lengths: padding is exercised
    batch = Collator(tokenizer.pad_token_id)(examples)
    with torch.no_grad():
        together = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for row, example in enumerate(examples):
            alone = model(input_ids=torch.tensor([example.input_ids])).logits[0]
            torch.testing.assert_close(together[row, : len(example)], alone, atol=1e-5, rtol=1e-4)
