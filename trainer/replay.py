"""Replay: general conversations answered by the base model itself, mixed into fine-tuning so it keeps what it knew.

Why: a few dozen conversations trained for several epochs pull every answer towards them. Measured on the bundled
135M model (issue 8): 20 conversations teaching 4 made-up facts, 8 epochs, and "What is the capital of France?"
came back as "Quenthal is the capital of the French region..." (full fine-tune and LoRA alike). With general prompts
answered greedily by the base model mixed in, the facts were still learned and France stayed Paris: the replayed
answers are already the model's own most likely text, so their loss is near zero unless training moves the model
away from them, and then their gradient pulls it back. With LoRA they are learned by self-distillation: the model
matches the base model's whole next-token distribution on them, not only its greedy text (``distill.py``; it kept
more of what the base model knew, measured there). Replay reduces forgetting, it does not abolish it (see
``default_replay_count`` and ``retention.py``). It costs training time (the replayed answers are longer than most
user turns) and, once per base model, the time to generate them: ~40-50 s for 36 answers on this 2-core machine,
batched 16 at a time (8x the tokens/s of one at a time), then cached in the data home (``base_answers.py``).

The prompts ship in ``trainer/data/replay_prompts.jsonl`` (a few hundred short general prompts: facts, science,
history, maths, code, advice, definitions, writing; about a fifth Chinese). They are replayed in a fixed shuffled
order, so any prefix mixes every kind. A reply the model did not finish within ``REPLAY_MAX_NEW_TOKENS`` is cut
after its last full sentence (training on a reply cut mid-word would teach the model to stop mid-word); a reply
that loops on itself is left out (it would teach the loop). Distilled replay keeps only each answer's first sentence
(``config.DISTILLED_REPLAY_SENTENCES``: why there).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

from .base_answers import Answer, AnswerCache, AnswerSettings, Prompt, load_prompt_set
from .data import Conversation, read_jsonl
from .progress import ProgressReporter
from .schedule import many_passes
from .timings import PhaseClock

REPLAY_FILE = "replay.jsonl"  # in the run dir: the replay conversations the run trained on
REPLAY_MAX_NEW_TOKENS = 96  # per replayed answer: most short answers finish; longer ones are cut at a sentence
REPLAY_ORDER_SEED = 8  # the fixed shuffle of the prompt set
SPARE = 1.25  # answers generated per replay conversation wanted: some are unusable (loops, no full sentence)
MAX_ROUNDS_FACTOR = 2  # never generate more than 2x the first ask: a model that rarely ends a sentence gets less
# The last prompts of the fixed order are never replayed. They were held apart for a check after training that is
# gone (issue 17's drift set); the defaults were measured with them apart, and replaying them changed the result:
# tests/test_teach_fact.py kept 23 of 26 general facts, once (25 in the run with them apart, README).
HELD_APART = 32
# Replay conversations per user conversation, and bounds (see default_replay_count): three where the run makes
# many passes (below ~50 conversations), two where it makes two.
MANY_PASS_REPLAY_RATIO = 3.0
REPLAY_RATIO = 2.0
MIN_REPLAY = 16
MAX_REPLAY = 128
# Words rarer than this across the replay prompts (inverse document frequency, natural log) say what a prompt is
# about: "capital" (10 of 329 prompts) is 3.5, "what" 0.8. Only those words make a prompt near the user's data.
TOPIC_MIN_IDF = 2.0
_WORD = re.compile(r"[a-z0-9]+|[\u3400-\u9fff]")  # English words, and Chinese characters one by one
# Words that say nothing of a topic however rare they are in the prompt set ("tell me", "what is it called").
_FUNCTION_WORDS = frozenset(
    """a about all also am an and any are as at be been but by can could did do does doing for from had has have
    he her here him his how i if in into is it its just me more most my no not of on one or our out she so some such
    tell than that the their them then there these they this those to too up us very was we were what when where
    which while who whom why will with would you your yes please give name called
    的 是 了 在 和 有 个 一 这 那 你 我 他 她 它 们 吗 呢 吧 么 什 怎 样 为 给 请 能 会 说 要 也 就 都 很 多 少 几 哪 谁""".split()
)
# A sentence ends at . ! ? before a space or the end, at CJK 。！？ anywhere, or at a blank line.
_SENTENCE_END = re.compile(r"[.!?](?=[\s\"'”’)]|$)|[。！？]|\n\n")


def replay_prompts() -> list[Prompt]:
    """The shipped replay prompts in their fixed shuffled order (the whole set: the cache's key)."""
    prompts = load_prompt_set("replay")
    random.Random(REPLAY_ORDER_SEED).shuffle(prompts)
    return prompts


def _replayable(prompts: Sequence[Prompt]) -> list[Prompt]:
    """The prompts a run may replay: all but the ``HELD_APART`` last."""
    return list(prompts[:-HELD_APART])


def topic_words(text: str) -> set[str]:
    """The words of ``text`` that can say what it is about (lowercase, function words left out)."""
    return set(_WORD.findall(text.lower())) - _FUNCTION_WORDS


def replay_order(prompts: Sequence[Prompt], near: Sequence[str]) -> list[Prompt]:
    """``prompts`` in the order a run takes them: the ones nearest the user's data and the rest alternately.

    Training on a few conversations moves most the answers nearest to them: teaching "the capital of Veloria is
    Quenthal" made the bundled model answer "What is the capital of Poland?" with "Poland" and "Ireland" with
    "Quenthal", while unrelated answers stayed. So half the replay is chosen for its topic: the prompts sharing
    the rarest topic words with ``near`` (the user's conversations' text), weighted by how often the user's texts use
    them, best first; the other half keeps the
    fixed shuffled order, so every kind of knowledge keeps an anchor. Measured in ``default_replay_count``.
    """
    vocabulary = [topic_words(p.prompt) for p in prompts]
    frequency = Counter(word for words in vocabulary for word in words)
    idf = {word: math.log(len(prompts) / n) for word, n in frequency.items()}
    # A word in many of the user's texts is more their topic than one said once.
    user = Counter(word for text in near for word in topic_words(text))
    scores = []
    for index, words in enumerate(vocabulary):
        shared = [idf[w] * math.log1p(user[w]) for w in words if user[w] and idf[w] >= TOPIC_MIN_IDF]
        if shared:
            scores.append((sum(shared) / math.sqrt(len(words)), index))
    nearest = [prompts[i] for _, i in sorted(scores, key=lambda s: (-s[0], s[1]))]
    chosen = {p.prompt for p in nearest}
    rest = [p for p in prompts if p.prompt not in chosen]
    order: list[Prompt] = []
    for pair in zip(nearest, rest):
        order.extend(pair)
    return order + nearest[len(rest) :] + rest[len(nearest) :]


def default_replay_count(n_conversations: int) -> int:
    """Replay conversations to mix into ``n_conversations`` user conversations.

    Two per user conversation, at least ``MIN_REPLAY`` so a tiny dataset still gets a varied anchor, and at most
    ``MAX_REPLAY``: beyond that the answers cost more to generate (once) and to train on than the retention they buy.
    Measured on the bundled model, 20 conversations teaching 4 made-up facts, LoRA lr 1e-3, 8 epochs; retention =
    the 26 general facts it answered right before: one replayed per conversation kept 19 of 26 (8 of 8 facts
    recalled), two kept 20-21 of 26 (11 of 12 recalled), four kept 21 (12 of 12); two with half of them on the
    user's topics (``replay_order``) kept 21 (12 of 12) at half the cost of four. At LoRA rank 4 (config.py) with
    distilled replay (distill.py) two kept 22-25 over five runs; three (54) kept 25 of 26 with one set of cached
    replay answers but 22 in tests/test_teach_fact.py (twice, the same: its home generates the answers afresh), "What
    is the capital of France?" answered "L'Alma, la France, est la maquenthal.": not adopted. On 60 real
    conversations (chatterbot-corpus, one epoch at lr 2e-3, issue 17) replay is most of what is trained on (the
    answers are longer than most chat turns), and more of it kept more: seed 1 kept 24 of 26 general facts with 64
    replayed (at a lower rate, learning less) and 25 with 128; seed 0 kept 23 with 108 and 24 with 192. Hence the
    cap of 128 (was 64; issue 17, README "Replay and retention").

    Three per conversation where the run makes many passes (``schedule.many_passes``), since distilled replay keeps
    only first sentences (``config.DISTILLED_REPLAY_SENTENCES``): on teach-a-fact, cut answers two a conversation
    (36) kept 23 and 24 of 26 and recalled 10 and 10 of 12 (training seeds 0, 3); three (54) kept 23-26 (24.9 on
    average over training seeds 0-6) and recalled 9-12 (11.3; schedule.py).
    """
    ratio = MANY_PASS_REPLAY_RATIO if many_passes(n_conversations) else REPLAY_RATIO
    return max(MIN_REPLAY, min(MAX_REPLAY, round(ratio * n_conversations)))


def _is_loop(text: str) -> bool:
    """Whether the text repeats itself: under half of its word (or character) trigrams are distinct."""
    tokens = re.findall(r"\w+", text) if " " in text else list(text)
    trigrams = [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]
    return len(trigrams) >= 12 and len(set(trigrams)) < len(trigrams) / 2


def usable_reply(answer: Answer) -> str | None:
    """The reply to train on: whole if finished, else cut after its last full sentence; None if unusable."""
    text = answer.reply.strip()
    if not answer.finished:
        ends = [m.end() for m in _SENTENCE_END.finditer(text)]
        text = text[: ends[-1]].strip() if ends else ""
    if not text or _is_loop(text):
        return None
    return text


def first_sentences(text: str, count: int) -> str:
    """``text`` up to the end of its ``count``-th sentence (all of it when it has fewer)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[count - 1]].strip() if len(ends) >= count else text


def replay_settings(bf16: bool) -> AnswerSettings:
    return AnswerSettings(max_new_tokens=REPLAY_MAX_NEW_TOKENS, bf16=bf16)


def _first_ask(count: int, available: int) -> int:
    """Answers asked for first, for ``count`` replay conversations (some answers are unusable)."""
    return min(available, int(count * SPARE) + 1)


def _texts(conversations: Sequence[Conversation]) -> list[str]:
    return [message["content"] for conversation in conversations for message in conversation.messages]


def replay_to_generate(
    cache: AnswerCache | None, count: int, near: Sequence[Conversation], *, bf16: bool
) -> int:
    """How many replay answers a run asking for ``count`` conversations near ``near`` (the user's training
    conversations) will generate: the rest are in ``cache`` (None: nothing is). More only when too few answers are
    usable, which is rare."""
    if count <= 0:
        return 0
    prompts = replay_prompts()
    asked = replay_order(_replayable(prompts), _texts(near))[: _first_ask(count, len(prompts) - HELD_APART)]
    cached = cache.cached("replay", prompts, replay_settings(bf16)) if cache is not None else {}
    return sum(1 for p in asked if p.prompt not in cached)


def replay_conversations(
    model: Any,
    tokenizer: Any,
    count: int,
    cache: AnswerCache,
    *,
    bf16: bool,
    near: Sequence[str] = (),
    sentences: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """``count`` replay conversations (``{"messages": [user, assistant]}``) answered by ``model``, the base model,
    half of them on the topics of ``near`` (the text of the user's conversations; see ``replay_order``); each answer
    cut after its first ``sentences`` sentences (0: whole; ``config.DISTILLED_REPLAY_SENTENCES``).

    No system message: the chat template adds its default one, as it does in chat and for the user's data.
    Fewer than ``count`` come back only when the model's answers are rarely usable (see ``MAX_ROUNDS_FACTOR``).
    """
    if count <= 0:
        return []
    prompts = replay_prompts()
    order = replay_order(_replayable(prompts), near)
    settings = replay_settings(bf16)
    asked = _first_ask(count, len(order))
    limit = min(len(order), asked * MAX_ROUNDS_FACTOR)
    while True:
        answers = cache.answers(model, tokenizer, "replay", prompts, settings, select=order[:asked], progress=progress)
        usable = [(a.prompt, reply) for a in answers if (reply := usable_reply(a)) is not None]
        if len(usable) >= count or asked >= limit:
            break
        asked = min(limit, asked * 2)  # doubling: a model with few usable answers costs a few rounds
    return [
        {"messages": [{"role": "user", "content": prompt},
                      {"role": "assistant", "content": first_sentences(reply, sentences) if sentences else reply}]}
        for prompt, reply in usable[:count]
    ]


def write_conversations(path: Path, conversations: Sequence[dict[str, Any]]) -> Path:
    """Write ``messages`` JSONL (the run dir keeps the replay data it trained on)."""
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with temp.open("w", encoding="utf-8") as handle:
        for conversation in conversations:
            handle.write(json.dumps(conversation, ensure_ascii=False) + "\n")
    os.replace(temp, path)
    return path


def replay_for_run(
    model: Any,
    tokenizer: Any,
    count: int,
    cache: AnswerCache,
    *,
    bf16: bool,
    near: Sequence[Conversation] = (),
    sentences: int = 0,
    resume_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Conversation]:
    """The replay conversations of a run, as training conversations: those ``resume_dir`` trained on when it holds
    them (a resumed run must see the same data), else ``count`` fresh ones from ``model`` (the base model), half of
    them on the topics of ``near`` (the user's training conversations), cut after ``sentences`` sentences (0: whole)."""
    if resume_dir is not None and (resume_dir / REPLAY_FILE).is_file():
        return read_jsonl(resume_dir / REPLAY_FILE).conversations
    records = replay_conversations(model, tokenizer, count, cache, bf16=bf16, near=_texts(near), sentences=sentences,
                                   progress=progress)
    return [
        Conversation(tuple(r["messages"]), f"replay:{i + 1}", "train") for i, r in enumerate(records)
    ]


def replay_phase(
    clock: PhaseClock,
    progress: ProgressReporter,
    model: Any,
    tokenizer: Any,
    count: int,
    cache: AnswerCache,
    *,
    bf16: bool,
    near: Sequence[Conversation],
    sentences: int,
    resume_dir: Path | None,
    rethread: Callable[..., None],
) -> list[Conversation]:
    """``replay_for_run`` as a run's timed "replay" phase (SFT's and DPO's alike), telling the user where the
    answers come from; each answer cut after ``sentences`` sentences (0: whole; ``--replay-sentences``);
    ``rethread`` follows the machine's load before and during the generation."""
    with clock.phase("replay", conversations=count) as record:
        rethread()
        new = replay_to_generate(cache, count, near, bf16=bf16)
        progress.info(f"replay: {count} general conversations; " + (
            "the ones this run started with" if resume_dir is not None else
            f"the base model answers {new} new prompts (cached for its later runs)" if new else
            "every answer comes from the cache"))
        replay = replay_for_run(model, tokenizer, count, cache, bf16=bf16, near=near,
                                sentences=sentences, resume_dir=resume_dir,
                                progress=rethread)
        record["generated"] = cache.generated.get("replay", 0)
    return replay

