"""The run directory: what is in it, and how a finished run is told apart from an unfinished one.

A run dir holds ``train_config.json`` and ``progress.jsonl`` from the start, ``checkpoints/step-NNNNNN/`` while it
trains, and at the end the model (or adapter), tokenizer, ``metrics.json``, ``loss.png`` and ``report.md``. The
``COMPLETE`` marker is written (atomically) as soon as the model and tokenizer are saved, so the model loads while the
run still checks retention and writes its report; a directory with ``train_config.json`` and no ``COMPLETE`` is an
unfinished run (training, stopped or crashed) and must not be offered as a model.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

COMPLETE = "COMPLETE"
TRAIN_CONFIG = "train_config.json"
PROGRESS_LOG = "progress.jsonl"
CHECKPOINTS = "checkpoints"
CHECKPOINT_STATE = "trainer_state.json"


class RunDirError(Exception):
    """The run directory cannot be used as asked; the message says why and what to do."""


def is_run_dir(path: Path) -> bool:
    """Written by the trainer (finished or not)."""
    return (Path(path) / TRAIN_CONFIG).is_file()


def is_complete(path: Path) -> bool:
    """A run that finished and saved its model: the only kind of run dir that may be loaded as a model."""
    return (Path(path) / COMPLETE).is_file()


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
