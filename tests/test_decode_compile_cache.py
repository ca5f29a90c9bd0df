"""The compiled decode step kept in the data home (tui_chat/inference/compile_cache.py): where it goes, what keys
it, and that a second engine compiles from it."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from tui_chat.inference.compile_cache import DIRECTORY, cache_file
from tui_chat.inference.hf_engine import HFEngine

from .tiny_models import save_tiny_model


def test_cache_file_is_keyed_by_model_settings_and_needs_a_data_home(tmp_path: Path) -> None:
    models = tmp_path / "home" / "models"
    models.mkdir(parents=True)
    small = AutoModelForCausalLM.from_pretrained(save_tiny_model(tmp_path / "small"))
    wide = AutoModelForCausalLM.from_pretrained(save_tiny_model(tmp_path / "wide", hidden=64))
    path = cache_file(models, small, "runs/my run", "none", 1)
    assert path is not None and path.parent == tmp_path / "home" / DIRECTORY and " " not in path.name
    assert path == cache_file(models, small, "runs/my run", "none", 1)
    others = [
        cache_file(models, wide, "runs/my run", "none", 1),
        cache_file(models, small, "runs/my run", "int4", 1),
        cache_file(models, small, "runs/my run", "none", 2),
    ]
    assert len({path, *others}) == 4
    assert cache_file(tmp_path / "missing", small, "x", "none", 1) is None  # a model from a path, no data home


@pytest.mark.slow  # two compiles of a tiny model: 30-90 s of CPU here
def test_a_second_engine_compiles_from_the_kept_artifacts(tmp_path: Path) -> None:
    models = tmp_path / "home" / "models"
    models.mkdir(parents=True)
    path = save_tiny_model(tmp_path / "model", context=64)
    first = HFEngine(str(path), models, device="cpu", dtype="float32", compile=True, threads=1)
    first.load()
    first.decoder.warm_up(wait=True)
    assert first.info().extra["compile"] == "ready" and not first.decoder.compile_cached
    kept = list((tmp_path / "home" / DIRECTORY).iterdir())
    assert len(kept) == 1 and kept[0].stat().st_size > 0
    assert kept[0].stat().st_mode & 0o077 == 0 and kept[0].parent.stat().st_mode & 0o077 == 0  # private
    second = HFEngine(str(path), models, device="cpu", dtype="float32", compile=True, threads=1)
    second.load()
    second.decoder.warm_up(wait=True)
    assert second.info().extra["compile"] == "ready" and second.decoder.compile_cached
