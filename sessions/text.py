"""Short texts made for people: conversation titles, counted nouns."""

from __future__ import annotations

TITLE_CHARS = 48  # fits the conversation list's title column


def title_from(text: str, limit: int = TITLE_CHARS) -> str:
    """A conversation title from its first user message: the first line, cut at a word boundary."""
    line = " ".join(text.strip().split())
    if len(line) <= limit:
        return line or "New chat"
    return line[:limit].rsplit(" ", 1)[0] + "…"


def counted(count: int, noun: str) -> str:
    """``1 conversation``, ``2 conversations`` (regular plurals only)."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
