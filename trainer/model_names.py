"""The bundled model's names, importable without torch: the chat window's process names its model before (and
without) importing torch, which only the model process loads."""

from __future__ import annotations

BUNDLED_ALIASES = ("default", "smollm2")
BUNDLED_NAME = "smollm2"  # the name recorded on replies made with the bundled model
BUNDLED_DIR = "smollm2-135m-instruct"  # its converted copy in the models dir


def engine_name(spec: str) -> str:
    """The name an engine for ``spec`` records on its replies: the bundled model's aliases become BUNDLED_NAME."""
    return BUNDLED_NAME if spec.strip().lower() in BUNDLED_ALIASES else spec
