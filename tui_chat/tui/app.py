"""The Textual chat application: `tui-chat` with no arguments opens it.

The App is thin: it holds what is passed in (the store, the engine or the spec to open, the data home) and the
theme; the chat screen does the rest.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable

from textual.app import App, SystemCommand
from textual.screen import Screen
from textual.theme import Theme

from sessions import Store
from trainer.home import DataHome

from tui_chat.inference.contract import Engine, EngineFactory
from tui_chat.tui.screens.chat import ChatScreen
from tui_chat.tui.state import TuiState

# Textual allocates many short-lived objects per frame. At CPython's default threshold (700 allocations) the cycle
# collector runs many times a second while a reply streams, takes a large share of the UI thread and pauses it for
# visible stretches; a higher threshold runs it a few times a second with short pauses (`python -m bench
# tui_stream` measures both). The old thresholds come back when the app ends: tests run many apps in one process.
GC_THRESHOLDS = (20_000, 50, 100)


class ChatApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "tui-chat"
    NOTIFICATION_TIMEOUT = 3  # seconds; errors set their own, longer

    def __init__(self, store: Store, engine: Engine | str, *, home: DataHome, engine_factory: EngineFactory) -> None:
        super().__init__()
        self.store = store
        self.engine = engine
        self.home = home
        self.engine_factory = engine_factory
        self.state = TuiState.load(home)
        self._gc_thresholds = gc.get_threshold()

    def get_default_screen(self) -> Screen:
        return ChatScreen(self.store, self.home, self.engine, self.engine_factory, self.state)

    def on_mount(self) -> None:
        gc.set_threshold(*GC_THRESHOLDS)
        if self.state.theme in self.available_themes:
            self.theme = self.state.theme
        self.theme_changed_signal.subscribe(self, self._remember_theme)

    def on_unmount(self) -> None:
        gc.set_threshold(*self._gc_thresholds)

    def _remember_theme(self, theme: Theme) -> None:
        self.state.theme = theme.name
        try:
            self.state.save(self.home)
        except OSError as exc:
            self.notify(f"could not remember the theme: {exc}", severity="warning")

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The command palette (Ctrl+P): every chat action, then Textual's own (Theme, Keys, Quit, ...)."""
        if isinstance(screen, ChatScreen):
            yield from screen.palette_commands()
        yield from super().get_system_commands(screen)


def make_app(store: Store, engine: Engine | str, *, home: DataHome, engine_factory: EngineFactory) -> ChatApp:
    """The chat app on ``store``. ``engine`` is an unloaded Engine, or a model spec that ``engine_factory`` opens in
    the loader thread (so the window is up before torch is even imported); either loads in a worker with progress.
    ``engine_factory`` opens the specs chosen in the model switcher."""
    return ChatApp(store, engine, home=home, engine_factory=engine_factory)
