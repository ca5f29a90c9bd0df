"""The messages the chat's worker threads post to the UI (they never touch widgets themselves)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from textual.message import Message

import sessions

from tui_chat.chat.compare import Comparison
from tui_chat.inference.contract import Engine, EngineInfo, GenerationStats


@dataclass
class ModelLoadProgress(Message):
    what: str  # e.g. "converting the bundled model"
    fraction: float | None  # 0..1, or None when the step has no measurable progress


@dataclass
class ModelLoaded(Message):
    spec: str  # what was asked for ("default"); the engine's name is what it resolved to ("smollm2")
    engine: Engine
    info: EngineInfo


@dataclass
class ModelLoadFailed(Message):
    spec: str
    error: str  # one line for the user


class PendingText:
    """Text a worker has produced and the UI has not yet shown, shared between the two threads.

    The worker adds each delta and posts a ``ReplyChunk`` only when the buffer was empty; the UI takes everything
    at once. So a fast engine never floods the message queue (one message per UI wake-up, not per token), and no
    text ever waits for the next token: whenever the buffer holds text, a message to fetch it is on its way.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: list[str] = []

    def add(self, text: str) -> bool:
        """Append ``text``; True when the buffer was empty (the caller then posts a message)."""
        with self._lock:
            was_empty = not self._parts
            self._parts.append(text)
            return was_empty

    def take(self) -> str:
        with self._lock:
            text = "".join(self._parts)
            self._parts.clear()
            return text


@dataclass
class ReplyChunk(Message):
    job: int  # which generation it belongs to (a late chunk of an abandoned one is ignored)
    pending: PendingText = field(repr=False)  # take the text from here


@dataclass
class ReplyFinished(Message):
    job: int
    reply: sessions.Message  # finalised: complete or stopped
    stats: GenerationStats | None


@dataclass
class ReplyFailed(Message):
    job: int
    error: str  # one line for the user
    reply: sessions.Message | None  # the failed reply row, when one was created


@dataclass
class ContextCounted(Message):
    conversation_id: int | None
    used: int  # tokens the conversation's active branch takes in the prompt
    limit: int


@dataclass
class ExportFinished(Message):
    summary: str | None
    error: str | None


@dataclass
class CompareAnswerStarted(Message):
    index: int  # 0: A, 1: B


@dataclass
class CompareChunk(Message):
    index: int
    pending: PendingText = field(repr=False)


@dataclass
class CompareAnswered(Message):
    index: int
    reply: sessions.Message  # complete, or stopped


@dataclass
class CompareFailed(Message):
    index: int
    error: str  # one line for the user


@dataclass
class ComparisonEnded(Message):
    """The compare worker is done (both answers written, or it stopped or failed)."""

    comparison: Comparison
