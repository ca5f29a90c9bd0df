"""`/train`'s preview: what a run would train on, with which settings, where, and for about how long.

``plan_training`` exports a snapshot of the sessions (the store's own ``messages`` export, so exactly its rules
decide what is left out) into a pending folder of the data home's ``datasets/``, then reads it the way the trainer
will: the same validation split, and the base model's own tokenizer and chat template to count tokens and find
conversations over ``--max-length``. What the preview shows is exactly what ``start_training`` trains on.

When the store holds preference pairs (sibling replies rated differently, corrections, compare picks), the snapshot
holds them too (the store's preference export, next to the conversations) and the run trains on both at once: the
conversations by cross-entropy and the pairs by DPO, one combined objective in one run (launch.py). A store whose
pairs are all it has to teach (every other reply rated down, say) trains on the pairs alone. Why one run and
not SFT then DPO: one process, one base model load, one reference, one retention check and one model saved, so a
handful of pairs costs a handful of steps, not a second run. Measured (bench/teach_preference.py objectives, seed 0,
20 pairs and their chosen replies as conversations): combined taught the trait in 9 of 10 replies, kept 25 of 26
general facts and trained 107 s; SFT then DPO taught 10 of 10 (the opener repeated), kept 21 of 26 and trained
152 s (README, preference section).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sessions import Store, counted
from sessions.export import ExportError, ExportFilters, ExportResult, export_messages, export_preference_pairs
from trainer.home import DataHome
from trainer.model_names import engine_name
from trainer.timings import TIMINGS_FILE

from tui_chat.training.errors import TrainingError
from tui_chat.training.estimate import (
    DevicePlan,
    RunWork,
    TimeEstimate,
    estimate_time,
    read_timings,
)
from tui_chat.training.options import TrainOptions, parse_train_options
from tui_chat.training.preview import preview_lines
from tui_chat.training.model_side import measure
from tui_chat.training.workload import Schedule

SNAPSHOT_FILE = "messages.jsonl"  # in datasets/<run name>/, next to its manifest
PAIRS_FILE = "pairs.jsonl"  # the preference pairs, beside it (only when the store has any)
PENDING_PREFIX = ".pending-"  # a snapshot previewed but not (yet) started
PENDING_MAX_AGE_S = 24 * 3600  # older pending snapshots were abandoned (the app closed at the question)


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
    train_pairs: int = 0  # preference pairs, split as the trainer splits them
    val_pairs: int = 0

    @property
    def pairs(self) -> int:
        return self.train_pairs + self.val_pairs

    @property
    def conversations(self) -> int:
        return self.train_conversations + self.val_conversations


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
    export: ExportResult  # of the conversations; without any, of the pairs
    snapshot_dir: Path  # the pending folder holding the export
    device: DevicePlan
    work: RunWork
    estimate: TimeEstimate | None
    example: str | None = None  # one training conversation in the base model's template, learned text «marked»

    @property
    def epochs(self) -> float:
        return self.schedule.epochs

    @property
    def total_steps(self) -> int:
        return self.schedule.total_steps

    @property
    def estimated_s(self) -> float | None:
        return self.estimate.seconds if self.estimate else None

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
            "pairs": self.data.pairs,
        }

    @property
    def pairs_path(self) -> Path | None:
        """The snapshot's preference pairs, when the store had any (the run then trains on them too)."""
        return self.snapshot_dir / PAIRS_FILE if self.data.pairs else None

    @property
    def conversations_path(self) -> Path | None:
        """The snapshot's conversations, when the store had any to learn from (else the run learns the pairs)."""
        return self.snapshot_dir / SNAPSHOT_FILE if self.data.conversations else None

    @property
    def epochs_reason(self) -> str:
        """Why the run trains ``epochs`` when the user did not say ("" when they did): the preview's and the form's
        words for the same number."""
        if self.options.config.max_steps:
            return "from the max steps"
        if self.schedule.automatic:
            return f"chosen for {counted(self.data.train_conversations, 'conversation')}"
        return ""

    def preview_lines(self) -> list[str]:
        """The preview, one fact a line, for both front ends."""
        return preview_lines(self)

    def discard(self) -> None:
        """Drop the pending snapshot (the user said no)."""
        shutil.rmtree(self.snapshot_dir, ignore_errors=True)


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


def _export_pairs(store: Store, path: Path) -> ExportResult | None:
    """Export the store's preference pairs to ``path``; None when there are none (nothing is left at ``path``)."""
    try:
        return export_preference_pairs(store, path, ExportFilters())
    except ExportError:
        return None  # no pairs: an SFT run as before


def _default_lr(method: str, conversations: int, pairs: bool) -> float:
    """The learning rate the run will use when none is asked for: SFT's, chosen by the number of conversations; with
    preference pairs the DPO run's own (trainer/dpo_config.py: one for pairs alone, one with conversations)."""
    from trainer.dpo_config import COMBINED_LEARNING_RATES, DPO_LEARNING_RATES
    from trainer.schedule import auto_lr

    if not pairs:
        return auto_lr(method, conversations)
    return (COMBINED_LEARNING_RATES if conversations else DPO_LEARNING_RATES)[method]


def plan_training(
    store: Store, home: DataHome, argv: Sequence[str], *, current_model: str = "default"
) -> TrainingPlan:
    """Parse `/train` arguments, export the snapshot and work out the preview. TrainingError (one line) when the
    options are wrong, the base model cannot be found, or there is nothing to train on.

    Slow parts (imports, tokenizing) take seconds: the TUI calls this from a worker thread.
    """
    options = parse_train_options(argv)
    base_spec = options.base or current_model
    home.ensure()
    _remove_abandoned_snapshots(home)
    name = run_name(store, home, engine_name(base_spec))
    snapshot_dir = Path(tempfile.mkdtemp(prefix=f"{PENDING_PREFIX}{name}-", dir=home.datasets))
    try:
        pairs = _export_pairs(store, snapshot_dir / PAIRS_FILE)
        try:
            conversations: ExportResult | None = export_messages(store, snapshot_dir / SNAPSHOT_FILE, ExportFilters())
        except ExportError as exc:
            if pairs is None:
                raise TrainingError(str(exc).replace("nothing to export", "nothing to train on", 1)) from None
            conversations = None  # every reply rated down, say: the pairs are what there is to learn
        export = conversations or pairs
        config = options.config
        # Tokenizing with the base model's template, picking the device and reading the trainer's cache import torch:
        # done in a child process (model_side), so the chat's own process never loads it.
        side = measure(home, conversations.paths["all"] if conversations else None,
                       "+".join(e.sha256["all"] for e in (conversations, pairs) if e), base_spec, argv,
                       pairs.paths["all"] if pairs else None)
        timings = read_timings(home.runs / TIMINGS_FILE)
        estimate = estimate_time(timings, side.work, base_name=side.base_name, method=side.method,
                                 device=side.device.device, parameters=side.parameters)
        counts = side.counts
        data = DataPreview(
            train_conversations=side.train,
            val_conversations=side.val,
            messages=side.messages,
            tokens=counts.tokens,
            assistant_tokens=counts.assistant_tokens,
            token_note=counts.note,
            truncated=counts.truncated,
            over_long=counts.over_long,
            left_out=export.left_out,
            train_pairs=side.train_pairs,
            val_pairs=side.val_pairs,
        )
        return TrainingPlan(
            name=name, options=options, base_spec=base_spec, base_name=side.base_name,
            base_parameters=side.parameters, method=side.method,
            lr=config.lr if config.lr is not None else _default_lr(side.method, side.train, pairs is not None),
            schedule=side.steps, data=data,
            export=export, snapshot_dir=snapshot_dir, device=side.device, work=side.work, estimate=estimate,
            example=side.example,
        )
    except BaseException:
        shutil.rmtree(snapshot_dir, ignore_errors=True)
        raise
