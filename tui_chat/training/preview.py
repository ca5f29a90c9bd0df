"""`/train`'s preview in words, one fact a line, the same in the REPL and the TUI form."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from sessions import counted
from trainer.dpo_config import default_beta

from tui_chat.training.options import without_options
from tui_chat.training.summary import duration

if TYPE_CHECKING:
    from tui_chat.training.plan import DataPreview, TrainingPlan

FIRST_TIME_SHOWN_S = 5  # the base model's answers still to generate are named when they take at least this long


def preview_lines(plan: "TrainingPlan") -> list[str]:
    """The preview of ``plan``."""
    data = plan.data
    tokens = f"{data.tokens:,} tokens a pass"
    if data.assistant_tokens is not None:
        tokens += f" ({data.assistant_tokens:,} in replies: what the model learns)"
    conversations = (
        f"Train on: {counted(data.conversations, 'conversation')} ({data.train_conversations} to train on, "
        f"{data.val_conversations} held out to measure it), {counted(data.messages, 'message')}, {tokens}"
        + (f" {data.token_note}" if data.token_note else "")
    ) if data.conversations else "Train on: the preference pairs alone (no conversation has a reply left to learn from)"
    lines = [
        conversations,
        "Left out: " + _left_out_text(data),
        *([_pairs_text(plan)] if data.pairs else []),
        f"Base model: {plan.base_name}" + (f" ({plan.base_spec})" if plan.base_spec != plan.base_name else "")
        + (f", {_parameters_text(plan.base_parameters)} parameters" if plan.base_parameters else ""),
        "Settings: " + _settings_text(plan),
        "Replay: " + _replay_text(plan),
        "Time: " + _time_text(plan),
    ]
    if plan.base_parameters:
        lines.append("Disk: " + _disk_text(plan))
    lines.extend(plan.device.notes)
    lines.append(f"Run: {plan.name} (the model appears under this name in /model when it finishes)")
    if plan.example:
        lines.append("What the model learns, in its own template (the loss is on the «marked» text only):\n"
                     + plan.example.rstrip())
    return lines


def _disk_text(plan: "TrainingPlan") -> str:
    """What the run will keep on disk, and the most it holds while it trains (a checkpoint beside the model)."""
    from trainer.rundir import estimated_run_bytes

    saved = "float16" if plan.device.device == "mps" else "bfloat16"  # the dtype the chat loads it in there
    size = estimated_run_bytes(plan.base_parameters or 0, method=plan.method, saved_dtype=saved,
                               keep_adapter=plan.options.config.keep_adapter)
    return (f"about {_megabytes(size.final)} for the trained model, up to {_megabytes(size.peak)} while it trains "
            "(its checkpoint); `tui-chat models delete NAME` frees it later")


def _megabytes(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:,.0f} MB"


def _settings_text(plan: "TrainingPlan") -> str:
    config = plan.options.config
    method = "LoRA" if plan.method == "lora" else "full fine-tune"
    if plan.method == "lora":
        method += f" (rank {config.lora_r}, alpha {config.lora_alpha})"
    steps = f"{counted(plan.total_steps, 'step')} of {config.micro_batch} x {config.grad_accum} conversations"
    passes = f"{plan.epochs:.3g} epoch" + ("" if plan.epochs == 1 else "s")
    if plan.epochs_reason:
        passes += f" ({plan.epochs_reason})"
    text = f"{method}, {passes} = {steps}, learning rate {plan.lr:g}, max {config.max_length} tokens a conversation"
    extras = _other_options(plan.options.trainer_args)
    return text + (f"; also {' '.join(extras)}" if extras else "")


def _pairs_text(plan: "TrainingPlan") -> str:
    data = plan.data
    return (f"Preferences: {counted(data.pairs, 'pair')} ({data.train_pairs} to train on, {data.val_pairs} held out "
            "to measure it) from your ratings, corrections and compare picks: the model learns to prefer the chosen "
            f"reply over the rejected one (DPO, beta {_beta(plan):g}) in the same run")


def _beta(plan: "TrainingPlan") -> float:
    """The beta the run will use: the one asked for, else the trainer's default for this kind of run."""
    if plan.options.beta is not None:
        return plan.options.beta
    return default_beta(combined=bool(plan.data.conversations))


def _replay_text(plan: "TrainingPlan") -> str:
    if not plan.schedule.replay and plan.data.pairs and not plan.data.conversations:
        return ("off with preference pairs alone: the base model, DPO's reference, holds the model near what it was "
                "on the pairs' replies (--replay N mixes some in; measured in the README)")
    if not plan.schedule.replay:
        return "off: the model trains on your conversations alone and may forget some of what it knew"
    return (f"{counted(plan.schedule.replay, 'general conversation')} answered by {plan.base_name} itself are "
            "mixed in, so it keeps what it knew (--replay N for more or fewer, --no-replay for none)")


def _time_text(plan: "TrainingPlan") -> str:
    estimate, tokens = plan.estimate, plan.work.trained_tokens
    if estimate is None:
        return (f"no estimate yet for {plan.device.device} (no run measured on it); {tokens:,} tokens to process, "
                "and the first run measures the speed")
    text = (f"about {duration(estimate.seconds)} on {plan.device.device}: {tokens:,} tokens at "
            f"~{estimate.tokens_per_s:,.0f} tokens/s ({duration(estimate.train_s)}), plus "
            f"~{duration(estimate.seconds - estimate.train_s)} to start, load, evaluate and save")
    if estimate.first_time_s >= FIRST_TIME_SHOWN_S:
        text += (f", of which ~{duration(estimate.first_time_s)} for {plan.base_name}'s own answers, generated once "
                 "and cached for later runs")
    return f"{text} ({estimate.source})"


# Options the settings line already spells out.
DESCRIBED = frozenset({"--method", "--epochs", "--max-steps", "--lr", "--lora-r", "--lora-alpha", "--max-length",
                       "--micro-batch", "--grad-accum"})


def _other_options(args: Sequence[str]) -> list[str]:
    """The trainer options the settings line does not already describe, as given."""
    return without_options(args, DESCRIBED)


def _parameters_text(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.1f}B"
    return f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n:,}"


def _left_out_text(data: DataPreview) -> str:
    left = data.left_out
    parts = [
        (left.get("excluded", 0), "conversation", "excluded from training"),
        (left.get("thumbs_down", 0), "reply", "rated thumbs-down (cut there, with what followed)"),
        (left.get("unfinished", 0), "unfinished reply", "(stopped or failed; cut there)"),
        (left.get("below_min_rating", 0), "reply", "below the minimum rating"),
        (left.get("no_assistant_turn", 0), "conversation", "left with no reply to learn from"),
        (left.get("duplicates", 0), "duplicate conversation", ""),
        (data.over_long or 0, "conversation", "too long (not even its first reply fits in --max-length)"),
    ]
    text = ", ".join(f"{counted(n, noun)} {why}".strip() for n, noun, why in parts if n) or "nothing"
    if data.over_long is None:
        text += "; over-long conversations are found when training starts"
    notes = []
    if data.truncated:
        notes.append(f"{counted(data.truncated, 'long conversation')} cut at a turn to fit --max-length")
    if left.get("corrected"):
        notes.append(f"{counted(left['corrected'], 'reply')} replaced by your correction")
    return text + (f"; {'; '.join(notes)}" if notes else "")


