"""The knowledge check: a quick, teacher-forced test of whether the model still gives the base model's right short
answers to general questions, cheap enough to run at every candidate adapter scale (interpolate.py).

The questions ship in ``trainer/data/check_prompts.jsonl`` (capitals, elements, planets, authors, arithmetic,
everyday science; short answers), disjoint from the replay prompts (which training sees) and from the retention
prompts (which stay the honest after-the-fact measure and are never used to choose). Before training the base model
answers them greedily once (cached with its replay and retention answers, ``base_answers.py``); the check keeps the
questions it answered right (``answer_match.contains_answer``), each as the question and the base model's reply up
to the end of the right answer ("The capital of Japan is Tokyo").

Questions on the user's own topics are left out (``off_topic``): there forgetting and learning are one update.
Taught "the capital of Veloria is Quenthal" (the teach-a-fact set), the whole update answered "What is the capital
of Peru?" with "Quenthal", and scaling it back until such answers came back left 3 of 12 taught facts recalled. Off
the user's topics, what scaling back restores costs little of what was taught.

An item passes when every one of those reply tokens is still the model's most likely next token given the ones
before it: greedy decoding would say the same words up to the answer. One batched forward pass scores every item,
seconds on a CPU, where generating the answers would take tens of seconds per model measured.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .answer_match import contains_answer
from .base_answers import AnswerCache, AnswerSettings, Prompt, load_prompt_set
from .batching import IGNORE_INDEX, Collator
from .loss import logits_at
from .render import RenderedExample
from .replay import TOPIC_MIN_IDF, replay_prompts, topic_words

CHECK_MAX_NEW_TOKENS = 32  # per base answer: the short answers end well within it
CHECK_BATCH = 16  # answers per generate() call and per forward pass
# Items whose right answer comes later than this many reply tokens are left out: a long lead-in ("To find 6 times
# 7, we can use the formula ...") changes with any style the user's data teaches, and such items were half of what
# the whole update "lost" on 60 real conversations while the answers themselves stood.
MAX_ANSWER_TOKENS = 16
# A word is the user's topic when at least this share of their conversations use it and it is rare among general
# prompts (replay's and the check's: inverse document frequency >= replay.TOPIC_MIN_IDF). The teach-a-fact set:
# "capital", "wrote", "river", "sea", ... (24 of the 60 questions left out); 60 or 200 chatterbot conversations:
# none of the questions (at 5%, "10" and "human" from chit-chat about numbers and people took 2-3 of them).
TOPIC_SHARE = 0.1


def check_settings(bf16: bool) -> AnswerSettings:
    return AnswerSettings(max_new_tokens=CHECK_MAX_NEW_TOKENS, bf16=bf16, batch_size=CHECK_BATCH)


def answer_prefix(tokenizer: Any, reply: str, expect: Sequence[str]) -> list[int] | None:
    """The tokens of ``reply`` up to and including the first right answer in it; None when it has none within
    ``MAX_ANSWER_TOKENS``."""
    ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
    for end in range(1, min(len(ids), MAX_ANSWER_TOKENS) + 1):
        if contains_answer(tokenizer.decode(ids[:end], skip_special_tokens=True), expect):
            return ids[:end]
    return None


@dataclass
class KnowledgeCheck:
    """The base model's right answers as teacher-forced examples; ``passed`` counts those a model still gives."""

    prompts: list[str]  # the questions kept, in file order
    examples: list[RenderedExample]
    pad_token_id: int
    bf16: bool

    def passed(self, model: Any) -> int:
        """How many items ``model`` answers with every reply token its argmax (one forward pass, no gradients)."""
        if not self.examples:
            return 0
        return int(self.per_item(model).sum())

    @torch.no_grad()
    def per_item(self, model: Any) -> torch.Tensor:
        """Whether each item passes, in order (bool tensor)."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            results = []
            for start in range(0, len(self.examples), CHECK_BATCH):
                batch = Collator(self.pad_token_id)(self.examples[start : start + CHECK_BATCH])
                ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                targets = batch["labels"][:, 1:].to(device)
                scored = targets != IGNORE_INDEX
                autocast = torch.autocast(device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
                with autocast:
                    (logits,) = logits_at(model, ids, mask, [scored])
                right = torch.zeros_like(targets, dtype=torch.bool)
                right[scored] = logits.argmax(dim=-1) == targets[scored]
                # An item passes when no scored position is wrong.
                results.append(~(scored & ~right).any(dim=1))
            return torch.cat(results).cpu()
        finally:
            model.train(was_training)


def off_topic(prompts: Sequence[Prompt], conversations: Sequence[str]) -> list[Prompt]:
    """``prompts`` but those sharing a topic word with ``conversations`` (each one conversation's text)."""
    general = [*replay_prompts(), *prompts]
    frequency = Counter(word for p in general for word in topic_words(p.prompt))
    rare = {word for word, n in frequency.items() if math.log(len(general) / n) >= TOPIC_MIN_IDF}
    used = Counter(word for text in conversations for word in topic_words(text))
    topic = {word for word in rare if used[word] and used[word] >= TOPIC_SHARE * len(conversations)}
    return [p for p in prompts if not topic_words(p.prompt) & topic]


def check_to_generate(cache: AnswerCache | None, *, bf16: bool) -> int:
    """How many of the check's base answers a run will generate: the rest are in ``cache`` (None: nothing is)."""
    prompts = load_prompt_set("check")
    cached = cache.cached("check", prompts, check_settings(bf16)) if cache is not None else {}
    return sum(1 for p in prompts if p.prompt not in cached)


def build_check(
    model: Any,
    tokenizer: Any,
    cache: AnswerCache,
    *,
    bf16: bool,
    near: Sequence[str] = (),
    progress: Callable[[int, int], None] | None = None,
) -> KnowledgeCheck:
    """The check for ``model`` (the base model): its answers to the check prompts (all of them, from ``cache``,
    generated there the first time), the right ones off the topics of ``near`` (the user's conversations' texts, one
    each) as examples, and of those only the ones it passes itself (a near-tie in the batched generation can differ
    from the forward pass's argmax: such an item says nothing about training)."""
    prompts = load_prompt_set("check")
    answers = dict(zip(prompts, cache.answers(model, tokenizer, "check", prompts, check_settings(bf16),
                                              progress=progress)))
    kept, examples = [], []
    for prompt in off_topic(prompts, near):
        answer = answers[prompt]
        reply = answer_prefix(tokenizer, answer.reply, prompt.expect)
        if reply is None:
            continue
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt.prompt}], tokenize=False, add_generation_prompt=True
        )
        question = tokenizer(text, add_special_tokens=False)["input_ids"]
        kept.append(prompt.prompt)
        examples.append(RenderedExample(question + reply, [False] * len(question) + [True] * len(reply)))
    check = KnowledgeCheck(kept, examples, tokenizer.pad_token_id, bf16)
    if examples:
        passes = check.per_item(model).tolist()
        check.prompts = [p for p, ok in zip(kept, passes) if ok]
        check.examples = [e for e, ok in zip(examples, passes) if ok]
    return check
