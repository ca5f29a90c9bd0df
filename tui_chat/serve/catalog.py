"""Which model names the server answers to, and the spec each one loads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainer.model_names import engine_name, list_local_models

from tui_chat.serve.protocol import RequestError


@dataclass(frozen=True)
class ServedModel:
    id: str  # what clients send as `model`: the name replies are recorded under (`smollm2`, a run's name, ...)
    created: int  # when its files were written, seconds since the epoch (0: not on disk yet)


class ModelCatalog:
    """The model the server was started with, then the bundled model and every finished run in the data home
    (``local_models``, asked again on each call: a run that finishes while the server runs is served at once).

    A `model` outside this list is refused (404), not loaded: a spec is also a path or a Hub id, and a client on
    the network must not make the server read any directory on the machine or download from the Hub.
    """

    def __init__(self, spec: str, local_models: Callable[[], list[ServedModel]], *, any_spec: bool = False) -> None:
        self.spec = spec
        self.local_models = local_models
        # A data home's private server (its Unix socket reaches only this user) loads any spec, as the chat does.
        self.any_spec = any_spec

    def models(self) -> list[ServedModel]:
        local = self.local_models()
        started = engine_name(self.spec)
        first = next((model for model in local if model.id == started), ServedModel(started, 0))
        return [first, *(model for model in local if model.id != started)]

    def resolve(self, name: str) -> str:
        """The spec that loads the model a client calls ``name`` (`default` is the bundled model's alias too)."""
        wanted = engine_name(name)
        if wanted == engine_name(self.spec):
            return self.spec
        if self.any_spec or any(model.id == wanted for model in self.local_models()):
            return name if self.any_spec else wanted
        raise RequestError(f"model {name!r} is not served here; GET /v1/models lists the ones that are",
                           param="model", status=404, code="model_not_found")


def local_models(models_dir: Path) -> list[ServedModel]:
    """The bundled model and every finished run or model folder in ``models_dir``."""
    return [
        ServedModel(model.name, int(model.path.stat().st_mtime) if model.path.exists() else 0)
        for model in list_local_models(models_dir)
    ]
