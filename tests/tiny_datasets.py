"""Shared pieces of the trainer tests: tiny chat datasets and the SmolLM2 chat template (default system prompt)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

# SmolLM2-135M-Instruct's template: ChatML that adds a default system prompt when the chat has none.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def chat_lines(n: int, seed: int = 0) -> list[dict]:
    """``n`` variable-length conversations (1-3 exchanges) made of the tiny tokenizer's vocabulary."""
    rng = random.Random(seed)
    words = "the quick brown fox jumps over the lazy dog hello world".split()
    records = []
    for i in range(n):
        messages = []
        for turn in range(rng.randint(1, 3)):
            messages.append({"role": "user", "content": f"hello {i} world {turn}"})
            messages.append({"role": "assistant", "content": " ".join(rng.choices(words, k=rng.randint(2, 12)))})
        records.append({"messages": messages})
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def can_replay_answers(monkeypatch: Any, reply: str = "hello world.") -> None:
    """Make the base model answer every replay prompt with ``reply`` (a random tiny model never finishes a sentence,
    so none of its own answers would be usable); retention answers stay the model's own."""
    from trainer.base_answers import Answer, AnswerCache

    real = AnswerCache.answers

    def canned(self, model, tokenizer, set_name, prompts, settings, *, select=None, progress=None):
        if set_name != "replay":
            return real(self, model, tokenizer, set_name, prompts, settings, select=select, progress=progress)
        return [Answer(p.prompt, reply, True) for p in (prompts if select is None else select)]

    monkeypatch.setattr(AnswerCache, "answers", canned)
