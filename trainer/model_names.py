"""Model names and specs, importable without torch: what a spec names (``resolve_spec``) and which models this
machine has (``list_local_models``). The chat window's process names, lists and checks models without importing
torch, which only the process that runs the model loads (models.py loads them)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from . import rundir

BUNDLED_ALIASES = ("default", "smollm2")
BUNDLED_NAME = "smollm2"  # the name recorded on replies made with the bundled model
BUNDLED_DIR = "smollm2-135m-instruct"  # its converted copy in the models dir
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def engine_name(spec: str) -> str:
    """The name an engine for ``spec`` records on its replies: the bundled model's aliases become BUNDLED_NAME."""
    return BUNDLED_NAME if spec.strip().lower() in BUNDLED_ALIASES else spec


class ModelError(Exception):
    """A model spec that cannot be loaded; the message is one line naming the problem and the fix."""


@dataclass(frozen=True)
class ResolvedSpec:
    """Where a spec points, before anything is loaded."""

    kind: str  # "bundled" | "run" | "path" | "hub"
    name: str  # recorded on replies: "smollm2", the run name, the path as given, or the Hub id
    location: str  # a directory, or the Hub id
    adapter: bool = False  # a PEFT adapter directory (the base comes from its adapter_config.json)


@dataclass(frozen=True)
class LocalModel:
    """A model the switcher can offer without the network."""

    name: str  # the spec that loads it
    path: Path
    kind: str  # "bundled" | "model" | "adapter"
    ready: bool  # False only for the bundled model before its first conversion


def model_kind(path: Path) -> str | None:
    """"model" or "adapter" for a finished model directory, else None (a run still training counts as none)."""
    if rundir.is_run_dir(path) and not rundir.is_complete(path):
        return None  # a training run still going, or one that crashed: its files are not a finished model
    if (path / "adapter_config.json").is_file():
        return "adapter"
    if (path / "config.json").is_file():
        return "model"
    return None


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "~", "/")) or os.sep in spec and not _HUB_ID.match(spec)


def _directory_spec(kind: str, name: str, path: Path) -> ResolvedSpec:
    kind_found = model_kind(path)
    if kind_found is None and rundir.is_run_dir(path):
        raise ModelError(rundir.unfinished_message(path, name))
    if kind_found is None:
        raise ModelError(
            f"{path} is not a model directory (no config.json or adapter_config.json); "
            "pass a directory written by save_pretrained, a run name, or a Hub id"
        )
    return ResolvedSpec(kind, name, str(path), adapter=kind_found == "adapter")


def resolve_spec(spec: str, models_dir: Path) -> ResolvedSpec:
    """Say what ``spec`` names, without loading it. Raises ModelError for a spec that names nothing usable."""
    spec = spec.strip()
    if not spec:
        raise ModelError("empty model spec; use `default`, a run name, a directory, or a Hub id")
    if spec.lower() in BUNDLED_ALIASES:
        return ResolvedSpec("bundled", BUNDLED_NAME, str(models_dir / BUNDLED_DIR))
    if not _looks_like_path(spec) and "/" not in spec and (models_dir / spec).is_dir():
        return _directory_spec("run", spec, models_dir / spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _directory_spec("path", spec, path.resolve())
    if _looks_like_path(spec) or path.exists():
        raise ModelError(f"no model directory at {spec}; check the path, or run `tui-chat models` for the list")
    if _HUB_ID.match(spec):
        return ResolvedSpec("hub", spec, spec)
    raise ModelError(f"{spec!r} is not a model: use `default`, a run name, a directory, or a Hub id like `gpt2`")


def list_local_models(models_dir: Path) -> list[LocalModel]:
    """The bundled model first (converted or not), then every model or adapter directory in ``models_dir``."""
    bundled_path = models_dir / BUNDLED_DIR
    found = [LocalModel(BUNDLED_NAME, bundled_path, "bundled", model_kind(bundled_path) == "model")]
    if models_dir.is_dir():
        for path in sorted(models_dir.iterdir()):
            if path.name == BUNDLED_DIR or path.name.startswith(".") or not path.is_dir():
                continue
            kind = model_kind(path)
            if kind is not None:
                found.append(LocalModel(path.name, path, kind, True))
    return found
