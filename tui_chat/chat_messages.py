"""The messages the chat's worker threads post to the UI (they never touch widgets themselves)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

import sessions

from .generation import Engine, EngineInfo, GenerationStats


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


@dataclass
class ReplyChunk(Message):
    job: int  # which generation it belongs to (a late chunk of an abandoned one is ignored)
    text: str


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
