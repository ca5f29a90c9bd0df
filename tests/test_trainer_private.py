"""Everything a run writes is private to the user: folders 0700, files 0600, whoever wrote them (us, transformers,
torch, matplotlib), in the run dir and in the data home's base-answer cache."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest

from trainer import rundir
from trainer.base_answers import CACHE_DIR
from trainer.config import SFTConfig
from trainer.progress import ProgressReporter
from trainer.loop import TrainingStopped
from trainer.sft import run_sft

from .train_fixtures import SignalAtStep
from .tiny_models import save_tiny_model
from .tiny_datasets import chat_lines, write_jsonl


def shared(tree: Path) -> list[str]:
    """Every path under ``tree`` (itself included) that its group or others may read, write or enter."""
    paths = [tree, *tree.rglob("*")]
    return [f"{oct(stat.S_IMODE(p.lstat().st_mode))} {p}" for p in paths if p.lstat().st_mode & 0o077]


def test_a_run_writes_nothing_others_can_read(tmp_path: Path) -> None:
    tiny = save_tiny_model(tmp_path / "tiny")
    data = write_jsonl(tmp_path / "chats.jsonl", chat_lines(24))
    out = tmp_path / "out" / "run"
    out.mkdir(parents=True, mode=0o755)  # --out may name an empty folder the user made with their usual umask
    os.chmod(out, 0o755)
    home = tmp_path / "home"
    config = SFTConfig(
        data=str(data), model=str(tiny), out=str(out), home=str(home), threads=1, progress="none", eval_samples=2,
        max_new_tokens=8, micro_batch=4, grad_accum=2, epochs=2, method="lora",
    )
    before = os.umask(0o022)
    try:
        with pytest.raises(TrainingStopped):
            run_sft(config, SignalAtStep(2))
        assert rundir.latest_checkpoint(out) is not None
        assert shared(out) == []  # checkpoints (torch.save, save_pretrained) included
        assert os.umask(0o022) == 0o022  # the caller's umask is back after a stop

        run_sft(dataclasses.replace(config, resume=True), ProgressReporter("none"))
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(before)
    written = {p.name for p in out.iterdir()}
    assert {"COMPLETE", "model.safetensors", "tokenizer.json", "report.md", "progress.jsonl",
            "metrics.json", "loss.png", "train_config.json"} <= written, written
    assert shared(out) == []
    assert (home / CACHE_DIR).is_dir() and any((home / CACHE_DIR).iterdir())
    assert shared(home) == []
