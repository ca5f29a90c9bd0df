"""Printing a reply while it streams: rich Markdown a finished line at a time, or plain text.

Re-rendering the whole reply on every token gets slower as the reply grows; here each line is rendered once, when
its newline arrives, and only the unfinished line is redrawn (as plain text, in a transient ``Live`` region).
Code fences and tables need more than one line to render: code lines are highlighted one by one with the fence's
language, and table rows are held until the table ends, then rendered together.
"""

from __future__ import annotations

from typing import IO

from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown
from rich.padding import Padding
from rich.segment import Segment, Segments
from rich.syntax import Syntax
from rich.text import Text

CODE_THEME = "monokai"  # rich's own default for Markdown code blocks
FENCES = ("```", "~~~")


class MarkdownStream:
    """Feed it text deltas; it prints finished lines as Markdown and shows the current line live.

    Use as a context manager (or call ``close``) so the last line is printed and the live region is removed.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self._partial = ""  # text after the last newline: not yet a finished line
        self._fence: str | None = None  # the opening fence while inside a code block
        self._lexer = "text"
        self._table: list[str] = []  # rows held until the table ends
        self._last_blank = True  # collapse runs of blank lines (and skip leading ones)
        self._live: Live | None = None

    def __enter__(self) -> "MarkdownStream":
        if self.console.is_terminal:
            self._live = Live(console=self.console, auto_refresh=False, transient=True)
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def feed(self, text: str) -> None:
        *finished, self._partial = (self._partial + text).split("\n")
        for line in finished:
            self._finish_line(line)
        self._show_pending()

    def close(self) -> None:
        """Print what is left (the last line has no newline) and end the live region."""
        if self._partial:
            self._finish_line(self._partial)
            self._partial = ""
        self._flush_table()
        if self._live is not None:
            self._live.update(Text(""), refresh=True)
            self._live.stop()
            self._live = None

    # ---- one finished line -----------------------------------------------------------------------------------

    def _finish_line(self, line: str) -> None:
        stripped = line.strip()
        if self._fence is not None:
            if stripped.startswith(self._fence) and not stripped.strip(self._fence[0]):
                self._fence = None
            else:
                self._print_code(line)
            return
        if stripped.startswith(FENCES):
            self._flush_table()
            self._fence = stripped[:3]
            self._lexer = stripped[3:].strip().split(" ")[0] or "text"
            return
        if stripped.startswith("|"):
            self._table.append(line)
            return
        self._flush_table()
        if not stripped:
            if not self._last_blank:
                self.console.print()
            self._last_blank = True
            return
        self._print_markdown(line)

    def _flush_table(self) -> None:
        if self._table:
            rows, self._table = self._table, []
            self._print_markdown("\n".join(rows))

    def _print_code(self, line: str) -> None:
        self.console.print(Syntax(line or " ", self._lexer, theme=CODE_THEME, word_wrap=True))
        self._last_blank = False

    def _print_markdown(self, source: str) -> None:
        indent = len(source) - len(source.lstrip(" "))  # keeps nested list items nested
        renderable: Markdown | Padding = Markdown(source.strip(), code_theme=CODE_THEME)
        if indent:
            renderable = Padding(renderable, (0, 0, 0, indent))
        lines = self.console.render_lines(renderable, self.console.options, pad=False)
        # Markdown puts a blank line around each block; one line at a time that would double-space the reply.
        while lines and not _text_of(lines[0]).strip():
            lines.pop(0)
        while lines and not _text_of(lines[-1]).strip():
            lines.pop()
        segments = [segment for line in lines for segment in (*line, Segment.line())]
        self.console.print(Segments(segments), end="")
        self._last_blank = False

    def _show_pending(self) -> None:
        if self._live is not None:
            self._live.update(Text("\n".join([*self._table, self._partial])), refresh=True)


def _text_of(line: list[Segment]) -> str:
    return "".join(segment.text for segment in line)


class PlainStream:
    """The same interface for pipes and dumb terminals: the text exactly as it arrives."""

    def __init__(self, file: IO[str]) -> None:
        self.file = file
        self._ended_with_newline = True

    def __enter__(self) -> "PlainStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def feed(self, text: str) -> None:
        if text:
            self.file.write(text)
            self.file.flush()
            self._ended_with_newline = text.endswith("\n")

    def close(self) -> None:
        if not self._ended_with_newline:
            self.file.write("\n")
            self.file.flush()
            self._ended_with_newline = True
