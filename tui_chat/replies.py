"""Generate one assistant reply into the store while it streams.

The one place that joins the engine and the store, shared by the TUI worker, the REPL and `ask`: the reply row is
created before the first token with status ``streaming``, its content is written as it grows (throttled), and it
is finalised with its stats and status ``complete`` / ``stopped`` / ``failed``. A crash mid-reply leaves the text
the user already saw in the database.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from sessions import Message, Store

from .generation import Engine, EngineError, GenerationParams, GenerationStats, TextDelta

SAVE_EVERY_S = 0.5  # how often a streaming reply is written to the DB


def conversation_messages(store: Store, conversation_id: int, upto: list[Message] | None = None) -> list[dict]:
    """The chat-template messages for the active branch (or ``upto``), with the system prompt first."""
    conversation = store.get_conversation(conversation_id)
    branch = upto if upto is not None else store.active_branch(conversation_id)
    messages = []
    if conversation.system_prompt:
        # The conversation's system prompt wins over any system message stored in the branch (e.g. imported).
        messages.append({"role": "system", "content": conversation.system_prompt})
        branch = [m for m in branch if m.role != "system"]
    messages.extend({"role": m.role, "content": m.content} for m in branch)
    return messages


def title_from(text: str, limit: int = 48) -> str:
    """A conversation title from its first user message: the first line, cut at a word boundary."""
    line = " ".join(text.strip().split())
    if len(line) <= limit:
        return line or "New chat"
    return line[:limit].rsplit(" ", 1)[0] + "…"


def add_user_message(store: Store, conversation_id: int, text: str, *, edit_of: Message | None = None) -> Message:
    """Append the user's turn; with ``edit_of`` it becomes a sibling of that message (a new branch). Titles a new
    chat from its first message."""
    conversation = store.get_conversation(conversation_id)
    if edit_of is not None:
        message = store.add_message(conversation_id, "user", text, parent_id=edit_of.parent_id)
    else:
        message = store.add_message(conversation_id, "user", text)
    if conversation.title == "New chat":
        store.rename_conversation(conversation_id, title_from(text))
    return message
