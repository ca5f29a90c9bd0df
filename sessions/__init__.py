"""The session store: every conversation kept in SQLite, searchable, exportable as training data.

store.py holds ``Store`` (opening, locking, transactions) and composes one part per table: conversations.py,
messages.py, search.py, training_runs.py, comparisons.py; records.py has the records and errors they share;
migrations.py the schema; export.py and importers.py move conversations in and out as files; text.py formats them
for people.
"""

from .records import (
    Comparison,
    Conversation,
    Message,
    NewConversation,
    NewMessage,
    NotFound,
    SearchHit,
    StoreError,
    TrainingRun,
    WinRate,
)
from .store import Store, connect, memory_database
from .text import counted, minute_text, one_line, title_from

__all__ = [
    "Comparison",
    "Conversation",
    "Message",
    "NewConversation",
    "NewMessage",
    "NotFound",
    "SearchHit",
    "Store",
    "StoreError",
    "TrainingRun",
    "WinRate",
    "connect",
    "counted",
    "minute_text",
    "one_line",
    "memory_database",
    "title_from",
]
