"""Driving the REPL in tests: a harness on a memory store and fake engines, typing through prompt-toolkit's pipe."""


from __future__ import annotations

import io
from pathlib import Path

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from sessions import Store, memory_database
from tests.fakes import FakeEngine
from trainer.home import DataHome
from tui_chat.chat.session import ChatSession
from tui_chat.repl.app import Repl

ESC_ENTER = "\x1b\r"  # Alt+Enter as a terminal sends it


class Harness:
    """A REPL on a memory store; ``run(keys)`` types the keys and returns what was printed."""

    def __init__(self, home: DataHome, replies: list[str] | None = None, **engine_options) -> None:
        self.store = Store(memory_database())
        self.home = home
        self.engines: dict[str, FakeEngine] = {}
        self.replies = replies or []
        self.engine_options = engine_options
        self.session = ChatSession(self.store, self.open_engine)
        self.console = Console(file=io.StringIO(), width=100)

    def open_engine(self, spec: str) -> FakeEngine:
        if spec == "broken":
            return FakeEngine(name=spec, load_error="no model directory at broken; check the path")
        engine = FakeEngine(self.replies, name=spec, **self.engine_options)
        self.engines[spec] = engine
        return engine

    @property
    def engine(self) -> FakeEngine:
        return self.session.engine  # type: ignore[return-value]

    def repl(self, **options) -> Repl:
        return Repl(
            self.session, self.home, self.console, model_names=lambda: ["default", "smollm2", "my-run"], **options
        )

    def run(self, keys: str) -> str:
        start = len(self.console.file.getvalue())
        with create_pipe_input() as pipe:
            pipe.send_text(keys + "\x04")  # Ctrl+D at the end leaves
            self.repl(prompt_input=pipe, prompt_output=DummyOutput()).run()
        return self.console.file.getvalue()[start:]

    def branch(self) -> list:
        return self.store.active_branch(self.session.conversation_id)


@pytest.fixture
def home(tmp_path: Path) -> DataHome:
    return DataHome(tmp_path / "home")


@pytest.fixture
def chat(home: DataHome) -> Harness:
    return Harness(home)


