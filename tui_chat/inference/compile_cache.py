"""Compiled decode steps kept in the data home, so a later process compiles from them instead of from nothing.

``torch.compile`` traces the step (dynamo) and then generates and C++-compiles its kernels (Inductor). Inductor
caches what it generated, but under /tmp (gone after a reboot, shared by everything the user compiles).
``torch.compiler.save_cache_artifacts`` hands back, as one blob, the artifacts this process made or used;
``load_cache_artifacts`` puts them back before a compile, which then skips code generation (tracing remains: see the
README's decode section for what that leaves). One file per model name, architecture, dtype, quantization, thread
count, torch version and CPU: the compiled kernels hold none of the weights (they are inputs), so a model trained
again under the same name keeps a valid file.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path
from typing import Any

import torch

DIRECTORY = "compile-cache"  # in the data home, next to models/


def cpu_description() -> str:
    """The CPU's model name and feature flags (kernels are generated for the instructions it has)."""
    try:
        with open("/proc/cpuinfo") as info:
            lines = [line for line in info if line.startswith(("model name", "flags"))][:2]
        return "".join(lines)
    except OSError:
        return platform.processor() or platform.machine()


def cache_file(models_dir: Path, model: Any, name: str, quantization: str, threads: int | None) -> Path | None:
    """Where the compiled step of ``model`` (loaded as ``name``) is kept: in the data home that holds ``models_dir``;
    None when there is no data home (``models_dir`` does not exist, as in tests of a model from a path)."""
    if not models_dir.is_dir():
        return None
    key = "\n".join(
        [
            model.config.to_json_string(), str(model.dtype), quantization, str(threads), torch.__version__,
            cpu_description(),
        ]
    )
    return models_dir.parent / DIRECTORY / f"{name_slug(name)}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.bin"


def name_slug(name: str) -> str:
    """A model name as the start of a file name."""
    return "".join(char if char.isalnum() or char in "-_." else "-" for char in name)[:60]


def load(path: Path | None) -> bool:
    """Put the artifacts kept in ``path`` back into torch's caches; returns whether there were any."""
    if path is None or not path.is_file():
        return False
    try:
        torch.compiler.load_cache_artifacts(path.read_bytes())
    except Exception:  # a file cut short or from another torch: compile from scratch, and save() replaces it
        return False
    return True


def save(path: Path | None) -> None:
    """Keep the artifacts this process's compiles made or used in ``path`` (written whole or not at all)."""
    artifacts = torch.compiler.save_cache_artifacts() if path is not None else None
    if artifacts is None:
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # private, like everything in the data home
    partial = path.with_suffix(f".{os.getpid()}.partial")
    with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as file:
        file.write(artifacts[0])
    os.replace(partial, path)
