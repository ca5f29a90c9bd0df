"""Driving the chat app in tests: build it on a fake engine and an in-memory store, wait for it, send messages."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from textual.pilot import Pilot

from sessions import Store, memory_database
from trainer.home import DataHome
from tui_chat.tui.app import ChatApp, make_app
from tui_chat.inference.contract import Chunk, Engine, EngineInfo, GenerationParams, ProgressCallback
from tui_chat.tui.screens.chat import ChatScreen
from tui_chat.tui.widgets.message_view import MessageView

from .fakes import FakeEngine

SIZE = (120, 40)


@pytest.fixture
def home(tmp_path) -> DataHome:
    return DataHome(tmp_path / "home")


@pytest.fixture
def store() -> Store:
    return Store(memory_database())


def header(view: MessageView) -> str:
    return str(view.query_one(".message-header").render())


def build_app(
    engine: Engine | str | None = None,
    *,
    home: DataHome,
    store: Store | None = None,
    factory: Callable[[str], Engine] | None = None,
) -> ChatApp:
    return make_app(
        store if store is not None else Store(memory_database()),
        engine if engine is not None else FakeEngine(),
        home=home,
        engine_factory=factory or (lambda spec: FakeEngine(name=spec)),
    )


class GatedEngine(FakeEngine):
    """Streams the first ``before`` words of its reply, then waits for ``gate`` (or Stop) before the rest: a test
    can look at the screen mid-reply without racing the engine."""

    def __init__(self, reply: str, before: int) -> None:
        super().__init__([reply])
        self.before = before
        self.gate = threading.Event()

    def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, stop: threading.Event | None = None
    ) -> Iterator[Chunk]:
        for index, chunk in enumerate(super().stream(messages, params, stop)):
            stopped = lambda: stop is not None and stop.is_set()
            if index == self.before:
                while not self.gate.wait(0.01) and not stopped():
                    pass
                if stopped():
                    continue  # the held word is never sent; the fake then ends with its stats
            yield chunk


class SlowLoadingEngine(FakeEngine):
    """Loads only once ``loaded`` is set: a test can act while the model is still loading."""

    def __init__(self, replies: list[str]) -> None:
        super().__init__(replies)
        self.loaded = threading.Event()

    def load(self, progress: ProgressCallback | None = None) -> EngineInfo:
        self.loaded.wait(timeout=10)
        return super().load(progress)


def chat_screen(pilot: Pilot) -> ChatScreen:
    """The chat screen, even while a dialog is on top of it."""
    return next(screen for screen in pilot.app.screen_stack if isinstance(screen, ChatScreen))


async def wait_for(pilot: Pilot, condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await pilot.pause(0.02)


async def ready(pilot: Pilot, timeout: float = 10.0) -> ChatScreen:
    """Wait until a model is loaded and no other is loading; a first load that fails fails the test at once."""
    screen = chat_screen(pilot)

    def loaded() -> bool:
        if not screen.is_mounted:
            return False
        if screen.engine is None and screen.status.failure is not None:
            raise AssertionError(f"the model failed to load: {screen.status.failure}")
        return screen.engine is not None and screen.loading_model is None

    await wait_for(pilot, loaded, timeout=timeout, what="the model to load")
    await pilot.pause()
    return screen


async def idle(pilot: Pilot, timeout: float = 10.0) -> ChatScreen:
    screen = chat_screen(pilot)
    await wait_for(pilot, lambda: not screen.generating, timeout=timeout, what="the reply to finish")
    await pilot.pause()
    return screen


async def send(pilot: Pilot, text: str) -> ChatScreen:
    """Put ``text`` in the message box and press Enter (typing key by key is tested once, not everywhere)."""
    screen = chat_screen(pilot)
    screen.prompt.focus()
    screen.prompt.load_text(text)
    await pilot.press("enter")
    await pilot.pause()
    return screen


def notifications(pilot: Pilot) -> list[str]:
    return [notification.message for notification in pilot.app._notifications]
