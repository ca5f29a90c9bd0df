"""Conversation -> input_ids + assistant mask: exactly the assistant replies and their end-of-turn token."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.batching import IGNORE_INDEX, Collator
from trainer.chat_template import ensure_chat_template
from trainer.data import Conversation
from trainer.render import render_conversation, render_conversations

from .tiny_models import tiny_tokenizer
from .tiny_datasets import SMOLLM2_TEMPLATE

MESSAGES = [
    {"role": "user", "content": "hello world"},
    {"role": "assistant", "content": "the quick brown fox"},
    {"role": "user", "content": "what is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
]


@pytest.fixture(params=["default", "smollm2"])
def tokenizer(request):
    """The tiny tokenizer with the shared default template (base models) or SmolLM2's (default system prompt)."""
    tok = ensure_chat_template(tiny_tokenizer())
    if request.param == "smollm2":
        tok.chat_template = SMOLLM2_TEMPLATE
    return tok


def _masked_runs(tokenizer, example) -> list[str]:
    runs, current = [], []
    for token, masked in zip(example.input_ids, example.assistant_mask):
        if masked:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_mask_is_exactly_each_reply_and_its_end_of_turn(tokenizer) -> None:
    example = render_conversation(tokenizer, MESSAGES)
    eot = tokenizer.eos_token
    assert _masked_runs(tokenizer, example) == [m["content"] + eot for m in MESSAGES if m["role"] == "assistant"]
    # The ids are those of the chat's own rendering: training sees what the chat shows the model.
    assert example.input_ids == tokenizer(tokenizer.apply_chat_template(MESSAGES, tokenize=False),
                                          add_special_tokens=False)["input_ids"]


def test_default_system_prompt_renders_as_in_chat(tokenizer) -> None:
    example = render_conversation(tokenizer, MESSAGES)
    text = tokenizer.decode(example.input_ids)
    prompt = tokenizer.apply_chat_template(MESSAGES[:1], tokenize=False, add_generation_prompt=True)
    assert text.startswith(prompt)
    assert ("You are a helpful AI assistant named SmolLM" in text) == ("SmolLM" in tokenizer.chat_template)


def test_end_of_turn_is_learned_although_pad_is_eos(tokenizer) -> None:
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    example = render_conversation(tokenizer, MESSAGES)
    short = render_conversation(tokenizer, MESSAGES[:2])
    batch = Collator(tokenizer.pad_token_id)([example, short])
    eos = tokenizer.eos_token_id
    row = batch["labels"][1]
    learned_eos = [i for i, t in enumerate(batch["input_ids"][1].tolist()) if t == eos and row[i] != IGNORE_INDEX]
    assert len(learned_eos) == 1  # the reply's end-of-turn; the padding (also eos) is ignored
    assert (row[len(short):] == IGNORE_INDEX).all()
    assert batch["attention_mask"][1].sum() == len(short)


def test_overlong_conversations_are_cut_at_a_turn_or_dropped(tokenizer) -> None:
    full = render_conversation(tokenizer, MESSAGES)
    first = render_conversation(tokenizer, MESSAGES[:2])
    # The rendering ends "<|im_end|>\n": one token less keeps both replies, two less loses the second.
    assert render_conversation(tokenizer, MESSAGES, max_length=len(full) - 1).n_assistant == full.n_assistant
    cut = render_conversation(tokenizer, MESSAGES, max_length=len(full) - 2)
    assert cut.truncated and cut.input_ids == full.input_ids[: len(cut)]
    assert _masked_runs(tokenizer, cut) == [MESSAGES[1]["content"] + tokenizer.eos_token]
    assert len(cut) <= len(first) + 1  # ends right after the first reply's end-of-turn token
    assert render_conversation(tokenizer, MESSAGES, max_length=len(first) - 3) is None

    conversations = [Conversation(tuple(MESSAGES), "x:1"), Conversation(tuple(MESSAGES[:2]), "x:2")]
    rendered = render_conversations(tokenizer, conversations, max_length=len(first) - 3)
    assert (rendered.truncated, rendered.dropped_too_long, len(rendered.examples)) == (0, 2, 0)
    rendered = render_conversations(tokenizer, conversations, max_length=len(full) - 2)
    assert (rendered.truncated, rendered.dropped_too_long, len(rendered.examples)) == (1, 0, 2)


def test_system_message_and_leading_assistant(tokenizer) -> None:
    messages = [{"role": "assistant", "content": "hello"}, {"role": "system", "content": "be brief"}] + MESSAGES
    example = render_conversation(tokenizer, messages)
    runs = _masked_runs(tokenizer, example)
    # Replies after a user turn are learned; the opening assistant line is learned only if it renders as the chat's
    # generation prompt would (the default template does, SmolLM2's adds a system prompt in front).
    assert runs[-2:] == [m["content"] + tokenizer.eos_token for m in MESSAGES if m["role"] == "assistant"]


@pytest.mark.slow
def test_bundled_tokenizer_mask(bundled_models_dir: Path) -> None:
    from transformers import AutoTokenizer

    from trainer.models import BUNDLED_DIR

    tok = ensure_chat_template(AutoTokenizer.from_pretrained(bundled_models_dir / BUNDLED_DIR))
    example = render_conversation(tok, MESSAGES)
    assert _masked_runs(tok, example) == [m["content"] + "<|im_end|>" for m in MESSAGES if m["role"] == "assistant"]
    assert example.input_ids == tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=True)["input_ids"]
