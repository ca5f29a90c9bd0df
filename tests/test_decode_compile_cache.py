"""The compiled decode step kept in the data home (compile_cache.py, decode_package.py): where it goes, what keys it,
and that a later engine uses it."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from tui_chat.inference.compile_cache import DIRECTORY, cache_file
from tui_chat.inference.hf_engine import HFEngine
from tui_chat.serve.handover import serving_overrides

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


@pytest.mark.slow  # one ahead-of-time build of a tiny model: 10-30 s of CPU here
def test_a_later_engine_decodes_compiled_from_its_load_without_compiling(tmp_path: Path) -> None:
    """A model on the KV buffer keeps an AOTInductor package (decode_package.py). The engine of a server (which never
    compiles in its own process on CPU: serve/handover.py) has it built in a process of its own and loads it; a
    later server's engine loads it before its first reply; --no-compile (False) never does."""
    models = tmp_path / "home" / "models"
    models.mkdir(parents=True)
    path = save_tiny_model(tmp_path / "model", context=64)
    first = HFEngine(str(path), models, device="cpu", dtype="float32", threads=1, **serving_overrides({}))
    assert first.load().extra["compile"] == "warming"  # the eager step replies meanwhile: no successor
    first.decoder.warm_up(wait=True)
    assert first.info().extra["compile"] == "ready" and not first.decoder.compile_cached
    kept = list((tmp_path / "home" / DIRECTORY).iterdir())
    assert [file.suffix for file in kept] == [".pt2"] and kept[0].stat().st_size > 0
    assert kept[0].stat().st_mode & 0o077 == 0 and kept[0].parent.stat().st_mode & 0o077 == 0  # private
    server = HFEngine(str(path), models, device="cpu", dtype="float32", threads=1)
    assert server.load().extra["compile"] == "ready" and server.decoder.compile_cached
    eager = HFEngine(str(path), models, device="cpu", dtype="float32", compile=False, threads=1)
    assert eager.load().extra["compile"] == "off"
