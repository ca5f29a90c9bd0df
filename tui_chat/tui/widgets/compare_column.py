"""One answer of a comparison: a header (its label, and what it is doing) over its text, streamed as Markdown.

The label is the comparison's to decide ("A", or "A · smollm2" once the models are shown); this widget only shows it.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

from tui_chat.tui.widgets.chat_markdown import ChatMarkdown


class CompareColumn(VerticalScroll):
    """An answer's column; ``answer_state`` is what the header says after the label (waiting, writing…, 42 tokens)."""

    def __init__(self, label: str, *, id: str) -> None:
        super().__init__(id=id, classes="compare-column")
        self.answer_label = label
        self.answer_state = "waiting for its turn"
        self.streamed = ""  # what streamed so far
        self._stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        yield Static(self._header(), classes="compare-header")
        yield ChatMarkdown("", classes="compare-body")

    def on_mount(self) -> None:
        self.anchor()  # follow the text to the bottom as it streams

    def _header(self) -> Text:
        return Text.assemble((self.answer_label, "bold"), ("  ·  " + self.answer_state, "dim"))

    def show(self, *, label: str | None = None, state: str | None = None) -> None:
        self.answer_label = label if label is not None else self.answer_label
        self.answer_state = state if state is not None else self.answer_state
        self.query_one(".compare-header", Static).update(self._header())

    def start(self) -> None:
        self.show(state="writing…")
        self._stream = Markdown.get_stream(self.query_one(".compare-body", Markdown))

    async def append(self, text: str) -> None:
        self.streamed += text
        if self._stream is not None:
            await self._stream.write(text)

    async def finish(self, text: str, state: str) -> None:
        """The stream ends; the stored text gets one full render if what streamed differs from it."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        if text != self.streamed:
            self.streamed = text
            await self.query_one(".compare-body", Markdown).update(text)
        self.show(state=state)
