"""The session store: every conversation kept in SQLite, searchable, exportable as training data."""

from .store import (
    Conversation,
    Message,
    NewConversation,
    NewMessage,
    NotFound,
    SearchHit,
    Store,
    StoreError,
    TrainingRun,
    connect,
    memory_database,
)
from .text import counted, minute_text, one_line, title_from

__all__ = [
    "Conversation",
    "Message",
    "NewConversation",
    "NewMessage",
    "NotFound",
    "SearchHit",
    "Store",
    "StoreError",
    "TrainingRun",
    "connect",
    "counted",
    "minute_text",
    "one_line",
    "memory_database",
    "title_from",
]
