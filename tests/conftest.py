"""Fixtures shared across the test files."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainer.home import DataHome
from trainer.models import BUNDLED_DIR, ensure_bundled

# A suite started in the background by a shell without job control (`make test &` in a script) inherits SIGINT
# ignored, and so would every process it starts, since an ignored signal stays ignored across exec: the tests that
# press Ctrl+C in a REPL or cancel a fake run by SIGINT would wait for nothing. A handled signal is reset to the
# default across exec, so Python's own handler here gives every child the SIGINT a terminal would.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def bundled_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir holding the bundled model, converted from its GGUF once per test session (~25 s).

    Shared by every test that needs the real model: treat it as read-only (use ``bundled_home`` to get a data
    home of your own that sees it).
    """
    models_dir = tmp_path_factory.mktemp("bundled-models")
    ensure_bundled(models_dir)
    return models_dir


@pytest.fixture
def bundled_home(tmp_path: Path, bundled_models_dir: Path) -> Iterator[DataHome]:
    """A fresh data home whose models dir links to the session's converted bundled model (no re-conversion)."""
    home = DataHome(tmp_path / "home").ensure()
    (home.models / BUNDLED_DIR).symlink_to(bundled_models_dir / BUNDLED_DIR, target_is_directory=True)
    yield home
    stop_home_server(home)


def stop_home_server(home: DataHome) -> None:
    """End the home's model server, if a test's window, REPL or `ask` started one (it would idle for 15 minutes)."""
    import os
    import signal

    from tui_chat.serve.local import LocalServer

    health = LocalServer(home, {}).health()
    if health is not None and isinstance(health.get("pid"), int):
        try:
            os.kill(health["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="session")
def bundled_engine(bundled_models_dir: Path):
    """The real bundled model loaded once per session in an ``HFEngine`` (default device and dtype)."""
    from tui_chat.inference.hf_engine import HFEngine

    engine = HFEngine("default", bundled_models_dir)
    engine.load()
    return engine
