"""What a previewed run will process, worked out the way the trainer will: tokens (with the base model's own tokenizer
and chat template), the schedule (epochs, replay, steps), and what of the base model's side is not cached yet (asked
of the trainer's own cache, so the estimate knows a first run from a later one)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from trainer.home import DataHome

from tui_chat.training.estimate import RunWork

if TYPE_CHECKING:  # trainer.models imports torch; the window's process only names it
    from trainer.models import ResolvedSpec

EXACT_COUNT_LIMIT = 2000  # conversations tokenized one by one; above this a sample is counted and scaled
CHARS_PER_TOKEN = 4  # English text with a BPE vocabulary, for the estimate when no tokenizer is at hand


@dataclass(frozen=True)
class Schedule:
    """How long the run trains, as the trainer will decide it."""

    epochs: float  # passes over the data (the user's and the replay) that the steps amount to
    total_steps: int
    replay: int  # general conversations answered by the base model, mixed into training
    automatic: bool  # the epochs were chosen by dataset size (no --epochs)


@dataclass(frozen=True)
class PairTokens:
    """A preference run's pairs, split and rendered as the trainer will (both sides of each)."""

    train: int  # training pairs that fit in --max-length
    val: int
    train_tokens: int  # of the training pairs, chosen and rejected sides, a pass
    val_tokens: int
    dropped: int  # pairs with a side over --max-length (or hidden by the template)
    near: list[Any]  # the training pairs as conversations (prompt + chosen): what half the replay is chosen near


def count_pair_tokens(tokenizer: Any | None, path: Path, config: Any) -> PairTokens:
    """Read, split and render the pairs file as trainer/dpo.py will (without the tokenizer: ~4 characters a token,
    none dropped)."""
    from trainer.pairs import read_pairs, render_pairs, split_pairs

    train, val = split_pairs(read_pairs(path).pairs, config.val_fraction)
    near = [p.taught() for p in train]
    if tokenizer is None:
        def chars(pairs: Sequence[Any]) -> int:
            return sum(2 * sum(len(m["content"]) for m in p.prompt) + len(p.chosen) + len(p.rejected) for p in pairs)

        return PairTokens(len(train), len(val), chars(train) // CHARS_PER_TOKEN, chars(val) // CHARS_PER_TOKEN, 0,
                          near)
    rendered_train = render_pairs(tokenizer, train, config.max_length)
    rendered_val = render_pairs(tokenizer, val, config.max_length)
    return PairTokens(len(rendered_train.pairs), len(rendered_val.pairs), rendered_train.n_tokens,
                      rendered_val.n_tokens, rendered_train.dropped + rendered_val.dropped, near)


@dataclass(frozen=True)
class TokenCount:
    tokens: int
    assistant_tokens: int | None
    truncated: int
    over_long: int | None
    train_kept: int  # training conversations left after over-long ones are dropped
    note: str


def base_tokenizer(location: str, kind: str) -> Any | None:
    """The base model's tokenizer with its chat template when it is on this machine (loads in well under a second);
    None otherwise (a Hub model not downloaded yet, the bundled model before its first conversion)."""
    if kind != "hub" and not (Path(location) / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    from trainer.chat_template import ensure_chat_template

    try:
        return ensure_chat_template(AutoTokenizer.from_pretrained(location, local_files_only=True))
    except (OSError, ValueError, KeyError):
        return None


def count_tokens(tokenizer: Any | None, train: Sequence[Any], val: Sequence[Any], max_length: int) -> TokenCount:
    """Tokens of the training split and the over-long conversations of both, the way the trainer renders them."""
    from trainer.render import render_conversations

    if tokenizer is None:
        chars = sum(len(m["content"]) for c in train for m in c.messages)
        note = (f"(estimated at ~{CHARS_PER_TOKEN} characters a token: the base model's tokenizer is not on this "
                "machine yet)")
        return TokenCount(chars // CHARS_PER_TOKEN, None, 0, None, len(train), note)
    everything = list(train) + list(val)
    step = max(1, math.ceil(len(everything) / EXACT_COUNT_LIMIT))
    sample_train, sample_val = list(train)[::step], list(val)[::step]
    rendered_train = render_conversations(tokenizer, sample_train, max_length)
    rendered_val = render_conversations(tokenizer, sample_val, max_length)
    scale = len(train) / len(sample_train) if sample_train else 1.0
    whole = len(everything) / max(1, len(sample_train) + len(sample_val))
    return TokenCount(
        tokens=round(rendered_train.n_tokens * scale),
        assistant_tokens=round(rendered_train.n_assistant_tokens * scale),
        truncated=round((rendered_train.truncated + rendered_val.truncated) * whole),
        over_long=round((rendered_train.dropped_too_long + rendered_val.dropped_too_long) * whole),
        train_kept=round(len(rendered_train.examples) * scale),
        note="" if step == 1 else f"(estimated from a sample of {len(sample_train) + len(sample_val)} conversations)",
    )


def schedule(config: Any, n_user: int, n_kept: int, pairs: int = 0) -> Schedule:
    """Epochs, replay and steps as the trainer decides them (one process): ``n_user`` training conversations, of
    which ``n_kept`` fit in --max-length, and ``pairs`` training pairs that fit (a preference run: each is one
    example, batched apart from the conversations, see trainer/mixed_batches.py)."""
    from trainer.dpo_config import default_dpo_replay
    from trainer.replay import default_replay_count
    from trainer.schedule import auto_epochs, preference_epochs

    automatic_epochs = preference_epochs if pairs else auto_epochs  # a preference run's own (trainer/dpo_config.py)
    epochs = config.epochs if config.epochs is not None else automatic_epochs(n_user + pairs)
    default = default_dpo_replay if pairs else default_replay_count  # a preference run's own (trainer/dpo.py)
    replay = 0 if config.no_replay else config.replay if config.replay is not None else default(n_user)
    micro_batches = math.ceil((n_kept + replay) / config.micro_batch) + math.ceil(pairs / config.micro_batch)
    per_epoch = max(1, math.ceil(micro_batches / config.grad_accum))
    total = config.max_steps or max(1, math.ceil(epochs * per_epoch))
    return Schedule(total / per_epoch, total, replay, automatic=config.epochs is None)


def run_work(
    home: DataHome, resolved: ResolvedSpec, config: Any, method: str, device: str, train: Sequence[Any],
    val: Sequence[Any], tokens: int, plan: Schedule, replay_tokens_each: float, pairs: "PairTokens | None" = None,
) -> RunWork:
    """What the run will compute: ``tokens`` of the user's a pass plus the replay's and the training pairs' (both
    sides), for ``plan``'s epochs, the reference pass over every pair, and the base model's answers and evaluation
    where the trainer's cache (``trainer.base_answers``) does not hold them yet."""
    import torch

    from trainer.base_answers import CACHE_DIR, AnswerCache, model_identity
    from trainer.evaluate import eval_key, eval_prompts
    from trainer.knowledge_check import check_to_generate
    from trainer.replay import replay_to_generate
    from trainer.retention import baseline_cached

    config = dataclasses.replace(config, method=method)
    bf16 = config.bf16(torch.device(device))
    cache = AnswerCache.known(home.root / CACHE_DIR, model_identity(resolved.location, config.base_dtype(bf16)))
    evaluate = not config.no_eval
    if pairs is not None:  # trainer/dpo.py: sample replies to the held-out pairs' prompts, never cached
        samples = min(pairs.val, config.eval_samples) if evaluate else 0
    else:
        samples = len(eval_prompts(val, config.eval_samples)) if evaluate else 0
    replay_tokens = round(plan.replay * replay_tokens_each)
    # as trainer/sft.py decides (a preference run keeps the whole update)
    chooses_scale = pairs is None and method == "lora" and config.choose_adapter_scale
    pair_tokens = pairs.train_tokens if pairs is not None else 0
    return RunWork(
        trained_tokens=round((tokens + replay_tokens + pair_tokens) * plan.epochs),
        replay_tokens=replay_tokens,
        replay_answers=replay_to_generate(cache, plan.replay, [*train, *(pairs.near if pairs else [])], bf16=bf16),
        retention=evaluate,
        baseline_cached=evaluate and baseline_cached(cache, bf16=bf16),
        eval_samples=samples,
        eval_before_cached=bool(samples) and pairs is None and cache is not None
        and cache.value("eval_before", **eval_key(val, config, bf16)) is not None,
        chooses_scale=chooses_scale,
        check_answers=check_to_generate(cache, bf16=bf16) if chooses_scale else 0,
        reference_tokens=pairs.train_tokens + pairs.val_tokens if pairs is not None else 0,
    )
