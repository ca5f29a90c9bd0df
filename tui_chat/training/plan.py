"""`/train`'s preview: what a run would train on, with which settings, where, and for about how long.

``plan_training`` exports a snapshot of the sessions (the store's own ``messages`` export, so exactly its rules
decide what is left out) into a pending folder of the data home's ``datasets/``, then reads it the way the trainer
will: the same validation split, and the base model's own tokenizer and chat template to count tokens and find
conversations over ``--max-length``. What the preview shows is exactly what ``start_training`` trains on.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sessions import Store, counted
from sessions.export import ExportError, ExportFilters, ExportResult, export_messages
from trainer.home import DataHome

from tui_chat.training.estimate import DevicePlan, SpeedEstimate, count_parameters, estimate_speed, plan_device
from tui_chat.training.errors import TrainingError
from tui_chat.training.options import TrainOptions, parse_train_options
from tui_chat.training.summary import duration

SNAPSHOT_FILE = "messages.jsonl"  # in datasets/<run name>/, next to its manifest
PENDING_PREFIX = ".pending-"  # a snapshot previewed but not (yet) started
PENDING_MAX_AGE_S = 24 * 3600  # older pending snapshots were abandoned (the app closed at the question)
EXACT_COUNT_LIMIT = 2000  # conversations tokenized one by one; above this a sample is counted and scaled
# Tokens of one replay conversation with the bundled model's template (its default system prompt, a short general
# question, the base model's answer of up to 96 tokens): 113 on average over the first 21 replay answers of the
# bundled model (46-162). For the time estimate only.
REPLAY_TOKENS_EACH = 113
CHARS_PER_TOKEN = 4  # English text with a BPE vocabulary, for the estimate when no tokenizer is at hand


@dataclass(frozen=True)
class DataPreview:
    """The snapshot as the trainer will see it."""

    train_conversations: int
    val_conversations: int
    messages: int
    tokens: int  # training split, per epoch, after cutting over-long conversations
    assistant_tokens: int | None  # the tokens the loss learns from (None when not tokenized)
    token_note: str  # how the tokens were counted ("" when exact)
    truncated: int  # conversations cut at a turn boundary to fit --max-length
    over_long: int | None  # conversations dropped: not even their first reply fits (None: not checked)
    left_out: dict[str, int] = field(default_factory=dict)  # the export's reasons

    @property
    def conversations(self) -> int:
        return self.train_conversations + self.val_conversations


@dataclass(frozen=True)
class Schedule:
    """How long the run trains, as the trainer will decide it."""

    epochs: float  # passes over the data (the user's and the replay) that the steps amount to
    total_steps: int
    replay: int  # general conversations answered by the base model, mixed into training
    automatic: bool  # the epochs were chosen by dataset size (no --epochs)


@dataclass
class TrainingPlan:
    """A previewed run, ready to start (``start_training``) or to drop (``discard``)."""

    name: str  # the run's name: its folder under models/ and what `/model NAME` loads
    options: TrainOptions
    base_spec: str  # as the trainer gets it
    base_name: str  # as replies record it ("smollm2" for `default`)
    base_parameters: int | None
    method: str
    lr: float
    schedule: Schedule
    data: DataPreview
    export: ExportResult
    snapshot_dir: Path  # the pending folder holding the export
    device: DevicePlan
    speed: SpeedEstimate | None

    @property
    def epochs(self) -> float:
        return self.schedule.epochs

    @property
    def total_steps(self) -> int:
        return self.schedule.total_steps

    @property
    def trained_tokens(self) -> int:
        """Tokens the training steps will process (all epochs, replay included)."""
        return round((self.data.tokens + self.schedule.replay * REPLAY_TOKENS_EACH) * self.epochs)

    @property
    def estimated_s(self) -> float | None:
        return self.speed.seconds(self.trained_tokens) if self.speed else None

    def settings(self) -> dict[str, Any]:
        """What the store records as the run's params."""
        config = self.options.config
        return {
            "method": self.method,
            "epochs": round(self.epochs, 3),
            "max_steps": config.max_steps,
            "total_steps": self.total_steps,
            "lr": self.lr,
            "max_length": config.max_length,
            "trainer_args": list(self.options.trainer_args),
            "device": self.device.device,
            "base_parameters": self.base_parameters,
            "estimated_s": self.estimated_s,
            "conversations": self.data.conversations,
            "tokens": self.data.tokens,
            "replay": self.schedule.replay,
        }

    def preview_lines(self) -> list[str]:
        """The preview, one fact a line, for both front ends."""
        data = self.data
        tokens = f"{data.tokens:,} tokens a pass"
        if data.assistant_tokens is not None:
            tokens += f" ({data.assistant_tokens:,} in replies: what the model learns)"
        lines = [
            f"Train on: {counted(data.conversations, 'conversation')} ({data.train_conversations} to train on, "
            f"{data.val_conversations} held out to measure it), {counted(data.messages, 'message')}, {tokens}"
            + (f" {data.token_note}" if data.token_note else ""),
            "Left out: " + _left_out_text(data),
            f"Base model: {self.base_name}" + (f" ({self.base_spec})" if self.base_spec != self.base_name else "")
            + (f", {_parameters_text(self.base_parameters)} parameters" if self.base_parameters else ""),
            "Settings: " + self._settings_text(),
            "Replay: " + self._replay_text(),
        ]
        lines.append("Time: " + self._time_text())
        lines.extend(self.device.notes)
        lines.append(f"Run: {self.name} (the model appears under this name in /model when it finishes)")
        return lines

    def _settings_text(self) -> str:
        config = self.options.config
        method = "LoRA" if self.method == "lora" else "full fine-tune"
        if self.method == "lora":
            method += f" (rank {config.lora_r}, alpha {config.lora_alpha})"
        steps = f"{counted(self.total_steps, 'step')} of {config.micro_batch} x {config.grad_accum} conversations"
        passes = f"{self.epochs:.3g} epoch" + ("" if self.epochs == 1 else "s")
        if self.schedule.automatic and not config.max_steps:
            passes += f" (chosen for {counted(self.data.train_conversations, 'conversation')})"
        text = f"{method}, {passes} = {steps}, learning rate {self.lr:g}, max {config.max_length} tokens a conversation"
        extras = _other_options(self.options.trainer_args)
        return text + (f"; also {' '.join(extras)}" if extras else "")

    def _replay_text(self) -> str:
        if not self.schedule.replay:
            return "off: the model trains on your conversations alone and may forget some of what it knew"
        return (f"{counted(self.schedule.replay, 'general conversation')} answered by {self.base_name} itself are "
                "mixed in, so it keeps what it knew (--replay N for more or fewer, --no-replay for none)")

    def _time_text(self) -> str:
        if self.speed is None:
            return (f"no estimate yet for {self.device.device} (no run measured on it); {self.trained_tokens:,} "
                    "tokens to process, and the first run measures the speed")
        total = self.estimated_s or 0.0
        return (f"about {duration(total)} on {self.device.device}: {self.trained_tokens:,} tokens at "
                f"~{self.speed.tokens_per_s:,.0f} tokens/s, plus ~{duration(self.speed.overhead_s)} to load, "
                f"evaluate and save ({self.speed.source})")

    def discard(self) -> None:
        """Drop the pending snapshot (the user said no)."""
        shutil.rmtree(self.snapshot_dir, ignore_errors=True)


# Options the settings line already spells out.
DESCRIBED = frozenset({"--method", "--epochs", "--max-steps", "--lr", "--lora-r", "--lora-alpha", "--max-length",
                       "--micro-batch", "--grad-accum"})


def _other_options(args: Sequence[str]) -> list[str]:
    """The trainer options the settings line does not already describe, as given."""
    shown: list[str] = []
    skipping = False
    for arg in args:
        if arg.startswith("--"):
            skipping = arg in DESCRIBED
        if not skipping:
            shown.append(arg)
    return shown


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


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(text).name or text).strip("-.") or "model"


def run_name(store: Store, home: DataHome, base_name: str, now: float | None = None) -> str:
    """``<base>-sft-<YYYYmmdd-HHMMSS>``, unique among runs and model folders. A run trained from a run is named
    after the first base, so names do not grow with each generation."""
    stem = f"{_slug(base_name.split('-sft-')[0])}-sft-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"
    taken = {run.name for run in store.list_training_runs()}
    name, n = stem, 1
    while name in taken or (home.models / name).exists() or (home.datasets / name).exists():
        n += 1
        name = f"{stem}-{n}"
    return name


def _remove_abandoned_snapshots(home: DataHome) -> None:
    for path in home.datasets.glob(PENDING_PREFIX + "*"):
        try:
            if time.time() - path.stat().st_mtime > PENDING_MAX_AGE_S:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


def _tokenizer(location: str, kind: str) -> Any | None:
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


@dataclass(frozen=True)
class _TokenCount:
    tokens: int
    assistant_tokens: int | None
    truncated: int
    over_long: int | None
    train_kept: int  # training conversations left after over-long ones are dropped
    note: str


def _count(tokenizer: Any | None, train: Sequence[Any], val: Sequence[Any], max_length: int) -> _TokenCount:
    """Tokens of the training split and the over-long conversations of both, the way the trainer renders them."""
    from trainer.render import render_conversations

    if tokenizer is None:
        chars = sum(len(m["content"]) for c in train for m in c.messages)
        note = (f"(estimated at ~{CHARS_PER_TOKEN} characters a token: the base model's tokenizer is not on this "
                "machine yet)")
        return _TokenCount(chars // CHARS_PER_TOKEN, None, 0, None, len(train), note)
    everything = list(train) + list(val)
    step = max(1, math.ceil(len(everything) / EXACT_COUNT_LIMIT))
    sample_train, sample_val = list(train)[::step], list(val)[::step]
    rendered_train = render_conversations(tokenizer, sample_train, max_length)
    rendered_val = render_conversations(tokenizer, sample_val, max_length)
    scale = len(train) / len(sample_train) if sample_train else 1.0
    whole = len(everything) / max(1, len(sample_train) + len(sample_val))
    return _TokenCount(
        tokens=round(rendered_train.n_tokens * scale),
        assistant_tokens=round(rendered_train.n_assistant_tokens * scale),
        truncated=round((rendered_train.truncated + rendered_val.truncated) * whole),
        over_long=round((rendered_train.dropped_too_long + rendered_val.dropped_too_long) * whole),
        train_kept=round(len(rendered_train.examples) * scale),
        note="" if step == 1 else f"(estimated from a sample of {len(sample_train) + len(sample_val)} conversations)",
    )


def _schedule(config: Any, n_user: int, n_kept: int) -> Schedule:
    """Epochs, replay and steps as the trainer decides them (one process): ``n_user`` training conversations, of
    which ``n_kept`` fit in --max-length."""
    from trainer.replay import default_replay_count
    from trainer.schedule import auto_epochs

    epochs = config.epochs if config.epochs is not None else auto_epochs(n_user)
    replay = 0 if config.no_replay else config.replay if config.replay is not None else default_replay_count(n_user)
    micro_batches = math.ceil((n_kept + replay) / config.micro_batch)
    per_epoch = max(1, math.ceil(micro_batches / config.grad_accum))
    total = config.max_steps or max(1, math.ceil(epochs * per_epoch))
    return Schedule(total / per_epoch, total, replay, automatic=config.epochs is None)


def _available_device() -> tuple[str, tuple[int, int] | None]:
    import torch

    from trainer.devices import pick_device

    device = pick_device().type
    return device, (torch.cuda.mem_get_info() if device == "cuda" else None)


def plan_training(
    store: Store, home: DataHome, argv: Sequence[str], *, current_model: str = "default"
) -> TrainingPlan:
    """Parse `/train` arguments, export the snapshot and work out the preview. TrainingError (one line) when the
    options are wrong, the base model cannot be found, or there is nothing to train on.

    Slow parts (imports, tokenizing) take seconds: the TUI calls this from a worker thread.
    """
    from trainer.config import DEFAULT_LR
    from trainer.data import read_jsonl, split_conversations
    from trainer.models import ModelError, resolve_spec

    options = parse_train_options(argv)
    base_spec = options.base or current_model
    try:
        resolved = resolve_spec(base_spec, home.models)
    except ModelError as exc:
        raise TrainingError(f"--base: {exc}") from None
    home.ensure()
    _remove_abandoned_snapshots(home)
    name = run_name(store, home, resolved.name)
    snapshot_dir = Path(tempfile.mkdtemp(prefix=f"{PENDING_PREFIX}{name}-", dir=home.datasets))
    try:
        try:
            export = export_messages(store, snapshot_dir / SNAPSHOT_FILE, ExportFilters())
        except ExportError as exc:
            raise TrainingError(str(exc).replace("nothing to export", "nothing to train on", 1)) from None
        config = options.config
        conversations = read_jsonl(export.paths["all"]).conversations
        train, val = split_conversations(conversations, config.val_fraction)
        counts = _count(_tokenizer(resolved.location, resolved.kind), train, val, config.max_length)
        if counts.train_kept < 1:
            raise TrainingError(
                f"nothing to train on: no conversation fits in --max-length {config.max_length} tokens; "
                "raise --max-length"
            )
        schedule = _schedule(config, len(train), counts.train_kept)
        parameters = count_parameters(Path(resolved.location)) if resolved.kind != "hub" else None
        available, gpu_memory = _available_device()
        device = plan_device(
            available, config.method, parameters, cpu_count=os.cpu_count() or 1, threads=config.threads,
            gpu_memory=gpu_memory,
        )
        method = config.method or ("full" if device.device == "cuda" else "lora")
        speed = estimate_speed(
            store.list_training_runs(), base_name=resolved.name, method=method, device=device.device,
            parameters=parameters, evaluate=not config.no_eval,
        )
        data = DataPreview(
            train_conversations=len(train),
            val_conversations=len(val),
            messages=sum(len(c.messages) for c in conversations),
            tokens=counts.tokens,
            assistant_tokens=counts.assistant_tokens,
            token_note=counts.note,
            truncated=counts.truncated,
            over_long=counts.over_long,
            left_out=export.left_out,
        )
        return TrainingPlan(
            name=name, options=options, base_spec=base_spec, base_name=resolved.name, base_parameters=parameters,
            method=method, lr=config.lr if config.lr is not None else DEFAULT_LR[method], schedule=schedule,
            data=data, export=export, snapshot_dir=snapshot_dir, device=device, speed=speed,
        )
    except BaseException:
        shutil.rmtree(snapshot_dir, ignore_errors=True)
        raise
