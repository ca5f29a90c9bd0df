"""One message of the active branch: a header line (who, which version, rating, status, speed) over its text.

Replies render as Markdown (``ChatMarkdown``: Textual's widget with lighter lists; code blocks highlighted). While a
reply streams, text is appended through Textual's Markdown stream, which batches fragments and re-parses only from
the last block, so a fast model never makes the widget re-parse the whole reply per token. When it ends, the stored
text gets one full render if the incremental one could differ from it (``needs_full_render``); otherwise what
streamed is already exactly that render, and re-mounting every block of a long reply would freeze the window for
nothing (bench/tui_stream.py measures it).
"""

from __future__ import annotations

import re

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

import sessions

from tui_chat.tui.widgets.chat_markdown import ChatMarkdown

# A link reference definition ("[1]: https://...") changes how text above it renders; a parse that restarts at the
# last block cannot know that, so such a reply gets a full render at the end.
_REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s", re.MULTILINE)

ROLE_LABELS = {"user": "You", "system": "System"}
STATUS_LABELS = {"streaming": "generating…", "stopped": "stopped", "failed": "failed", "interrupted": "interrupted"}


def header_text(
    message: sessions.Message | None, role: str, model: str | None, version: tuple[int, int], status: str
) -> Text:
    """``smollm2 · ‹ 2/3 › · ▲ rated up · stopped · 120 tokens, 14.2 tok/s, TTFT 0.31 s``"""
    label = ROLE_LABELS.get(role) or (message.model if message and message.model else model) or "assistant"
    parts: list[tuple[str, str]] = []
    place, total = version
    if total > 1:
        parts.append((f"‹ {place}/{total} ›", "bold"))
    if message is not None:
        if message.rating > 0:
            parts.append(("▲ rated up", "green"))
        elif message.rating < 0:
            parts.append(("▼ rated down", "red"))
        if message.correction:
            parts.append(("✎ corrected", "cyan"))
    if status in STATUS_LABELS:
        parts.append((STATUS_LABELS[status], "red" if status == "failed" else "yellow"))
    if message is not None and message.tokens_out:
        speed = f"{message.tokens_out} tokens"
        if message.duration_s and message.ttft_s is not None and message.duration_s > message.ttft_s:
            # Decode speed, as GenerationStats.tokens_per_s: the first token's latency is TTFT, not speed.
            speed += f", {(message.tokens_out - 1) / (message.duration_s - message.ttft_s):.1f} tok/s"
        if message.ttft_s is not None:
            speed += f", TTFT {message.ttft_s:.2f} s"
        parts.append((speed, "dim"))
    text = Text(label, style="bold")
    for part, style in parts:
        text.append("  ·  ", style="dim")
        text.append(part, style=style)
    return text


def needs_full_render(streamed: str, final: str) -> bool:
    """Whether the Markdown rendered incrementally from ``streamed`` may differ from a full render of ``final``."""
    return streamed != final or bool(_REFERENCE_DEFINITION.search(final))


def note_text(message: sessions.Message | None, error: str | None) -> Text | None:
    """The error or the correction (the user's ideal answer), shown under the text; None when there is neither."""
    error = message.error if message is not None and message.error else error
    if error:
        return Text.assemble(("✗ ", "bold red"), (error, "red"))
    if message is not None and message.correction:
        return Text.assemble(("✎ Ideal answer (your correction)\n", "bold cyan"), message.correction)
    return None


class MessageView(Vertical):
    """A message in the chat. ``message`` is None while a reply streams and has no stored row yet."""

    def __init__(
        self,
        message: sessions.Message | None,
        *,
        role: str | None = None,
        model: str | None = None,
        version: tuple[int, int] = (1, 1),
    ) -> None:
        self.message = message
        self.role = message.role if message is not None else (role or "assistant")
        self.model = model
        self.version = version
        self.error: str | None = None  # a failure before the reply had a stored row
        self._stream: MarkdownStream | None = None
        self._note: Text | None = None  # what the note under the text shows (None: hidden)
        super().__init__(classes=f"message -{self.role}")

    @property
    def status(self) -> str:
        if self.message is not None:
            if self.message.status == "streaming" and self._stream is None:
                return "interrupted"  # stored mid-stream by a run that ended before finishing it
            return self.message.status
        return "failed" if self.error else "streaming"

    def compose(self) -> ComposeResult:
        header = header_text(self.message, self.role, self.model, self.version, self.status)
        yield Static(header, classes="message-header")
        content = self.message.content if self.message is not None else ""
        if self.role == "assistant":
            yield ChatMarkdown(content, classes="message-body")
        else:
            yield Static(content, markup=False, classes="message-body")
        self._note = note_text(self.message, self.error)
        yield Static(self._note or "", classes="message-note", markup=False).set_class(self._note is None, "-empty")

    @property
    def message_id(self) -> int | None:
        return self.message.id if self.message is not None else None

    @property
    def text(self) -> str:
        """What is on screen: the stored text, or the streamed text so far."""
        if self.message is not None and self._stream is None:
            return self.message.content
        return self.query_one(".message-body", Markdown).source

    def _refresh_header(self) -> None:
        # The header is one line whatever it says: repaint it without a layout of the whole screen (a full layout
        # costs as much as a frame of a streaming reply, and this runs as a reply finishes).
        self.query_one(".message-header", Static).update(
            header_text(self.message, self.role, self.model, self.version, self.status), layout=False
        )
        note = note_text(self.message, self.error)
        if note != self._note:  # the note's height follows its text: only a changed note needs a layout
            self._note = note
            note_view = self.query_one(".message-note", Static)
            note_view.update(note or "")
            note_view.set_class(note is None, "-empty")

    def set_version(self, version: tuple[int, int]) -> None:
        if version != self.version:
            self.version = version
            self._refresh_header()

    def set_message(self, message: sessions.Message) -> None:
        """New metadata for the same text (a rating, a correction)."""
        self.message = message
        self._refresh_header()

    # ---- streaming -------------------------------------------------------------------------------------------

    def start_stream(self) -> None:
        self._stream = Markdown.get_stream(self.query_one(".message-body", Markdown))

    async def append(self, text: str) -> None:
        if self._stream is not None:
            await self._stream.write(text)

    async def _end_stream(self) -> None:
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None

    async def finish(self, message: sessions.Message, version: tuple[int, int]) -> None:
        """End the stream; render the stored reply in full when the streamed render may differ from it."""
        await self._end_stream()
        self.message = message
        self.version = version
        body = self.query_one(".message-body", Markdown)
        if needs_full_render(body.source, message.content):
            await body.update(message.content)
        self._refresh_header()

    async def fail(self, message: sessions.Message | None, error: str) -> None:
        """End the stream and show the error; the text that streamed stays (the stored row keeps it too)."""
        await self._end_stream()
        self.error = error
        if message is not None:
            self.message = message
            await self.query_one(".message-body", Markdown).update(message.content)
        self._refresh_header()
