"""Short texts made for people: conversation titles, counted nouns."""

from __future__ import annotations

from datetime import datetime

TITLE_CHARS = 48  # fits the conversation list's title column


def title_from(text: str, limit: int = TITLE_CHARS) -> str:
    """A conversation title from its first user message: the first line, cut at a word boundary."""
    line = " ".join(text.strip().split())
    if len(line) <= limit:
        return line or "New chat"
    return line[:limit].rsplit(" ", 1)[0] + "…"


def one_line(text: str, width: int) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``width`` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def minute_text(timestamp: float | None) -> str:
    """``2026-11-22 14:05`` in local time, or "" for no time."""
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M") if timestamp else ""


def counted(count: int, noun: str) -> str:
    """``1 conversation``, ``2 conversations`` (regular plurals only)."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
