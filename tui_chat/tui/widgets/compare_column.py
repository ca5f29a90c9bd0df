"""One answer of a comparison: a header (its label, and what it is doing) over its text, streamed as Markdown.

The label is the comparison's to decide ("A", or "A · smollm2" once the models are shown); this widget only shows it.
The header stays in place while a long answer scrolls beneath it.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

from tui_chat.tui.widgets.chat_markdown import ChatMarkdown


class CompareColumn(Vertical):
    """An answer's column; ``answer_state`` is what the header says after the label (waiting, writing…, 42 tokens)."""

    def __init__(self, label: str, *, id: str) -> None:
        super().__init__(id=id, classes="compare-column")
        self.answer_label = label
        self.answer_state = "waiting for its turn"
        self.streamed = ""  # what streamed so far
        self._stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        yield Static(self._header(), classes="compare-header")
        with VerticalScroll(classes="compare-scroll"):
            yield ChatMarkdown("", classes="compare-body")

    def _header(self) -> Text:
        return Text.assemble((self.answer_label, "bold"), ("  ·  " + self.answer_state, "dim"))

    def show(self, *, label: str | None = None, state: str | None = None) -> None:
        self.answer_label = label if label is not None else self.answer_label
        self.answer_state = state if state is not None else self.answer_state
        self.query_one(".compare-header", Static).update(self._header())

    def start(self) -> None:
        self.show(state="starting…")  # its model may have to load first

    async def append(self, text: str) -> None:
        self.streamed += text
        if self._stream is None:
            # Made with the first text, not at the start: a stream stopped before its task ever ran raises
            # CancelledError into the handler that stops it (an answer that failed before its first word).
            self.show(state="writing…")
            self._stream = Markdown.get_stream(self.query_one(".compare-body", Markdown))
        # Follow the text down unless the user scrolled up. Not ``anchor()``: an anchored widget keeps short text at
        # its bottom, and an answer's first lines belong at the top.
        scroll = self.query_one(".compare-scroll", VerticalScroll)
        following = scroll.scroll_y >= scroll.max_scroll_y - 1
        await self._stream.write(text)
        if following:
            scroll.call_after_refresh(scroll.scroll_end, animate=False)

    async def finish(self, text: str, state: str) -> None:
        """The stream ends; the stored text gets one full render if what streamed differs from it."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        if text != self.streamed:
            self.streamed = text
            await self.query_one(".compare-body", Markdown).update(text)
        self.show(state=state)
