"""The steps an SFT run and a DPO run share around their own data and loss (sft.py, dpo.py): checking a resume, the
learning-rate schedule and the checkpoint to continue from, retention once the model is saved, and the files a
finished run leaves behind."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

from accelerate import Accelerator
from transformers import get_scheduler

from . import rundir
from .config import SFTConfig
from .home import DataHome
from .progress import ProgressReporter
from .report import write_metrics
from .retention import RetentionBaseline, RetentionResult, evaluate_retention
from .save import generating
from .timings import PhaseClock, append_timing, process_age_s

BEFORE_FILE = "eval_before.json"  # in the run dir: the "before" numbers, kept so a resumed run still reports them
SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


class SettingsError(ValueError):
    """Settings or a run dir the user chose cannot work; one line naming the fix."""


# What runs started before a learning setting existed did, for the settings added since: such a run resumes with
# the setting given that value (it replayed whole answers: --replay-sentences 0).
BEFORE_THE_SETTING_EXISTED: dict[str, Any] = {"replay_sentences": 0}


def check_resume(run_dir: Path, config: SFTConfig, data_sha: str) -> None:
    """SettingsError unless ``run_dir`` was started on the same data with the same learning settings."""
    saved = json.loads((run_dir / rundir.TRAIN_CONFIG).read_text())
    if saved["dataset_sha256"] != data_sha:
        raise SettingsError(
            f"the dataset changed since {run_dir} started (sha256 differs); resume with the same files or start a "
            "new run"
        )
    # A setting added since the run started is read as what the trainer did then.
    before = {**BEFORE_THE_SETTING_EXISTED, **saved["config"]}
    changed = sorted(k for k, v in config.learning_fields().items() if before.get(k) != v and k != "resume")
    if changed:
        older = [f"--{k.replace('_', '-')} {before[k]}" for k in changed if k not in saved["config"]]
        then = f" (it started before that option existed: {', '.join(older)})" if older else ""
        raise SettingsError(
            f"settings changed since {run_dir} started ({', '.join('--' + k.replace('_', '-') for k in changed)}); "
            f"resume with the same settings{then} or start a new run"
        )


def schedule(accelerator: Accelerator, optimizer: Any, micro_batches: int, config: SFTConfig) -> tuple[int, int, Any]:
    """(optimizer steps per epoch, total steps, the learning-rate scheduler) for ``micro_batches`` a pass (this
    process's share of them)."""
    steps_per_epoch = math.ceil(micro_batches / config.grad_accum)
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    warmup = int(config.warmup) if config.warmup >= 1 else round(config.warmup * total_steps)
    scheduler = get_scheduler(SCHEDULES[config.schedule], optimizer, warmup, total_steps)
    # The scheduler is ours, not accelerate-prepared: a prepared one steps once per process per call.
    accelerator.register_for_checkpointing(scheduler)
    return steps_per_epoch, total_steps, scheduler


def resumed_step(accelerator: Accelerator, run_dir: Path, config: SFTConfig, progress: ProgressReporter) -> int:
    """With --resume, load the run's last checkpoint (weights, optimizer, scheduler, RNG) and return its step; else 0."""
    checkpoint = rundir.latest_checkpoint(run_dir) if config.resume else None
    if checkpoint is None:
        return 0
    accelerator.load_state(str(checkpoint))
    step = json.loads((checkpoint / rundir.CHECKPOINT_STATE).read_text())["step"]
    progress.info(f"resuming from step {step} ({checkpoint.name})")
    return step


def retention_after(
    trained_model: Any,
    tokenizer: Any,
    baseline: RetentionBaseline | None,
    *,
    attention: str,
    run_dir: Path,
    bf16: bool,
    clock: PhaseClock,
    progress: ProgressReporter,
    rethread: Callable[..., None] = lambda *_: None,
) -> tuple[RetentionResult | None, str | None]:
    """The saved model's answers to the held-out general prompts against ``baseline`` (none: nothing measured), with
    the warning when too much was lost; both are reported as they come."""
    if baseline is None:
        return None, None
    with generating(trained_model, attention), clock.phase("retention", prompts=len(baseline.prompts)):
        rethread()
        progress.info(f"the model is saved and loads now ({run_dir.name}); retention: it answers the held-out "
                      "general prompts")
        retention = evaluate_retention(trained_model, tokenizer, baseline, bf16=bf16, progress=rethread)
    warning = retention.warning()
    progress.emit("retention", stage="after", warning=warning, **retention.metrics())
    if warning:
        progress.info(f"warning: {warning}")
    return retention, warning


def finish(run_dir: Path, home: DataHome, metrics: dict[str, Any], progress: ProgressReporter, started: float) -> None:
    """What a finished run leaves (the main process, after its report): metrics.json with the whole run's time, its
    speed for the next estimate, no checkpoints, no saved "before" numbers; then the done event."""
    metrics["total_s"] = process_age_s()  # start to now: what the user waited (the rest below is instant)
    write_metrics(run_dir / "metrics.json", metrics)
    append_timing(home.runs, metrics)
    rundir.prune_checkpoints(run_dir, keep=None)
    (run_dir / BEFORE_FILE).unlink(missing_ok=True)
    progress.emit("done", run_dir=str(run_dir), elapsed_s=round(time.time() - started, 1), metrics=metrics)
