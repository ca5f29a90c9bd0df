"""The run directory: what is in it, and how a finished run is told apart from an unfinished one.

A run dir holds ``train_config.json`` and ``progress.jsonl`` from the start, ``checkpoints/step-NNNNNN/`` while it
trains, and at the end the model (or adapter), tokenizer, ``metrics.json``, ``loss.png`` and ``report.md``. The
``COMPLETE`` marker is written (atomically) as soon as the model and tokenizer are saved, so the model loads while the
run still checks retention and writes its report; a directory with ``train_config.json`` and no ``COMPLETE`` is an
unfinished run (training, stopped or crashed) and must not be offered as a model.

Everything in it is private to the user (dirs 0700, files 0600): it holds their chats (the replay, the report's
samples) and a model trained on them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMPLETE = "COMPLETE"
TRAIN_CONFIG = "train_config.json"
PROGRESS_LOG = "progress.jsonl"
CHECKPOINTS = "checkpoints"
CHECKPOINT_STATE = "trainer_state.json"
PROGRESS_TAIL_BYTES = 64 * 1024  # enough for the last few events of any run
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
SMALL_FILES_BYTES = 8 * 2**20  # tokenizer, report, plot, logs, replay: a few MB with the usual tokenizers
# LoRA's trainable share of the parameters when the caller does not know it: adapters on every linear layer at the
# ranks the trainer offers stay under it on small models (it only sizes the optimizer state and a kept adapter).
LORA_SHARE = 0.02


class RunDirError(Exception):
    """The run directory cannot be used as asked; the message says why and what to do."""


def is_run_dir(path: Path) -> bool:
    """Written by the trainer (finished or not)."""
    return (Path(path) / TRAIN_CONFIG).is_file()


def is_complete(path: Path) -> bool:
    """A run that finished and saved its model: the only kind of run dir that may be loaded as a model."""
    return (Path(path) / COMPLETE).is_file()


@contextmanager
def private_files() -> Iterator[None]:
    """Create every file and folder private to the user while the block runs (umask 077), then restore the umask.

    A umask rather than a chmod after each write: most files of a run are written by libraries (transformers'
    save_pretrained, safetensors, torch.save for checkpoints, matplotlib), so only the process's umask reaches them
    all, and new writers are covered without anyone remembering to. It is process-wide: threads writing files
    meanwhile get private files too, which is harmless.
    """
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def create(path: Path) -> None:
    """Make the run dir (and its missing parents) 0700, also when ``--out`` named an existing empty folder."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def last_event(path: Path) -> dict[str, Any] | None:
    """The last event in the run's progress log (read from its end: the log grows a line a step), or None."""
    log = Path(path) / PROGRESS_LOG
    try:
        with log.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - PROGRESS_TAIL_BYTES))
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            event = json.loads(line)
        except ValueError:
            continue  # the first line of the tail (cut), or one being written
        if isinstance(event, dict) and "event" in event:
            return event
    return None


def unfinished_state(path: Path) -> tuple[str, str]:
    """How an unfinished run stands, from its progress log: ("stopped", "at step N") after a signal (a checkpoint
    lets --resume continue it), ("failed", the error) after an error, else ("training", "") (still going, or killed
    before it could say so: the log cannot tell those apart)."""
    event = last_event(path) or {}
    if event.get("event") == "stopped":
        return "stopped", f"at step {event.get('step', '?')}"
    if event.get("event") == "error":
        return "failed", str(event.get("message", ""))
    return "training", ""


def unfinished_message(path: Path, name: str) -> str:
    """One line for a model spec that names an unfinished run: how it stands and what to do."""
    state, detail = unfinished_state(path)
    resume = f"`tui-chat train --resume --out {path}` with the same --data and --model"
    if state == "stopped":
        return f"run {name} was stopped {detail} before it finished, so it has no model yet; continue it with {resume}"
    if state == "failed":
        return (f"run {name} failed ({detail}), so it has no model; fix that and train again, or continue it with "
                f"{resume}")
    return (f"run {name} is still training (no model until it finishes); wait for it (`tui-chat models` shows its "
            f"state), or if its trainer was killed, continue it with {resume}")


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON to a temp file and rename it over ``path``: readers see the old file or the new one, never half."""
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with temp.open("w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def mark_complete(path: Path, summary: dict[str, Any]) -> None:
    """Written once the model is saved: from then on the directory is a model (its report may still follow)."""
    write_json_atomic(Path(path) / COMPLETE, {"completed_at": time.time(), **summary})


def check(path: Path, *, resume: bool) -> None:
    """Raise RunDirError unless ``path`` can hold a new run (or, with ``resume``, holds an unfinished one)."""
    path = Path(path)
    if is_complete(path):
        raise RunDirError(f"{path} holds a finished run; choose another --out")
    if resume:
        if not is_run_dir(path):
            raise RunDirError(f"{path} has no run to resume ({TRAIN_CONFIG} missing); drop --resume to start one")
        return
    if is_run_dir(path):
        raise RunDirError(f"{path} holds an unfinished run; pass --resume to continue it, or choose another --out")
    if path.exists() and any(path.iterdir()):
        raise RunDirError(f"{path} exists and is not empty; choose another --out")


@dataclass(frozen=True)
class RunBytes:
    """Disk a run takes, in bytes."""

    model: int  # the saved model (or adapter) files
    checkpoint: int  # one checkpoint: the weights as they train and the optimizer state (accelerate's save_state)

    @property
    def final(self) -> int:
        """What the finished run keeps (its checkpoints are deleted at the end)."""
        return self.model + SMALL_FILES_BYTES

    @property
    def peak(self) -> int:
        """The most it holds: the last checkpoint stays until the model is saved (and a stopped run keeps it)."""
        return self.final + self.checkpoint


def estimated_run_bytes(
    parameters: int,
    *,
    method: str,
    saved_dtype: str = "bfloat16",
    base_dtype: str = "bfloat16",
    trainable_parameters: int | None = None,
    keep_adapter: bool = False,
) -> RunBytes:
    """The disk a run of a model with ``parameters`` parameters (tied weights counted once) takes.

    ``saved_dtype``: the dtype the model is saved in (the chat's on the training device: bf16 on CPU and most GPUs,
    fp16 on MPS); ``base_dtype``: the dtype LoRA's frozen base trains in (bf16 where bf16 autocast is fast, else
    float32); a full fine-tune trains float32 weights. Checkpoints hold the whole model's weights, LoRA's frozen base
    included, and AdamW's two float32 moments per trainable parameter.
    """
    if method not in ("lora", "full"):
        raise ValueError(f"unknown method {method!r}; use lora or full")
    for dtype in (saved_dtype, base_dtype):
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_BYTES)}")
    if method == "full":
        trainable = parameters
        weights = parameters * DTYPE_BYTES["float32"]
    else:
        trainable = trainable_parameters if trainable_parameters is not None else int(parameters * LORA_SHARE)
        weights = parameters * DTYPE_BYTES[base_dtype] + trainable * DTYPE_BYTES["float32"]
    adamw = 2 * trainable * DTYPE_BYTES["float32"]
    if method == "lora" and keep_adapter:
        model = trainable * DTYPE_BYTES["float32"]
    else:
        model = parameters * DTYPE_BYTES[saved_dtype]
    return RunBytes(model=model, checkpoint=weights + adamw)


def latest_checkpoint(path: Path) -> Path | None:
    """The newest checkpoint with a readable state file (one cut short by a crash has none and is skipped)."""
    found = sorted((Path(path) / CHECKPOINTS).glob("step-*"))
    for checkpoint in reversed(found):
        if (checkpoint / CHECKPOINT_STATE).is_file():
            return checkpoint
    return None


def prune_checkpoints(path: Path, keep: Path | None) -> None:
    """Delete every checkpoint but ``keep`` (None: all of them, once the final model is saved)."""
    for checkpoint in (Path(path) / CHECKPOINTS).glob("step-*"):
        if keep is None or checkpoint.resolve() != keep.resolve():
            shutil.rmtree(checkpoint, ignore_errors=True)
    if keep is None:
        shutil.rmtree(Path(path) / CHECKPOINTS, ignore_errors=True)
