"""The session store: every conversation kept in SQLite, searchable, exportable as training data."""

from .store import Conversation, Message, NotFound, SearchHit, Store, StoreError, TrainingRun, connect, memory_database

__all__ = [
    "Conversation",
    "Message",
    "NotFound",
    "SearchHit",
    "Store",
    "StoreError",
    "TrainingRun",
    "connect",
    "memory_database",
]
