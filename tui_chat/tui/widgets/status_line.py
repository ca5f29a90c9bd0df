"""The line under the input: the model, where it runs, how full the context is, and the last reply's speed.

While a model loads it shows what is happening with a progress bar (the first run converts the bundled model).
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import ProgressBar, Static

from tui_chat.inference.contract import EngineInfo, GenerationStats


class StatusLine(Horizontal):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.info: EngineInfo | None = None
        self.loading_what: str | None = None  # what the loader is doing, while it loads
        self.failure: str | None = None
        self.context: tuple[int, int] | None = None  # (tokens used, limit)
        self.last: GenerationStats | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="status-text")
        yield ProgressBar(total=None, show_eta=False, id="load-progress")

    def on_mount(self) -> None:
        self.query_one(ProgressBar).display = False
        self._refresh()

    def show_loading(self, what: str, fraction: float | None) -> None:
        self.loading_what, self.failure = what, None
        bar = self.query_one(ProgressBar)
        bar.display = True
        bar.update(total=100 if fraction is not None else None, progress=100 * (fraction or 0.0))
        self._refresh()

    def show_ready(self, info: EngineInfo) -> None:
        self.info, self.loading_what, self.failure = info, None, None
        self.query_one(ProgressBar).display = False
        self._refresh()

    def show_failure(self, error: str) -> None:
        self.loading_what, self.failure = None, error
        self.query_one(ProgressBar).display = False
        self._refresh()

    def show_context(self, used: int | None, limit: int | None) -> None:
        self.context = (used, limit) if used is not None and limit else None
        self._refresh()

    def show_stats(self, stats: GenerationStats) -> None:
        self.last = stats
        self._refresh()

    def render_text(self) -> Text:
        if self.loading_what is not None:
            return Text.assemble(("◌ ", "yellow"), (self.loading_what, "yellow"))
        text = Text()
        if self.failure is not None:
            text.append("✗ ", style="bold red")
            text.append(self.failure, style="red")
            if self.info is None:
                return text
            text.append("  ·  still on ", style="dim")
        if self.info is None:
            return Text("no model", style="dim")
        text.append("● ", style="green")
        text.append(self.info.name, style="bold")
        text.append(f"  {self.info.device}/{self.info.dtype}", style="dim")
        if self.context is not None:
            used, limit = self.context
            text.append(f"  ·  context {used:,}/{limit:,}", style="red" if used > limit * 0.9 else "")
        if self.last is not None:
            text.append(f"  ·  last {self.last.tokens_per_s:.1f} tok/s, TTFT {self.last.ttft_s:.2f} s")
            if self.last.dropped_messages:
                text.append(f", {self.last.dropped_messages} old messages left out to fit", style="yellow")
        return text

    def _refresh(self) -> None:
        # One line of fixed size (app.tcss): a repaint, never a layout of the whole screen.
        self.query_one("#status-text", Static).update(self.render_text(), layout=False)
