"""Append-only schema migrations for the chat store.

Each migration is a named function that takes a ``sqlite_utils.Database``. They run in order, once each, and
their names are recorded in the ``_migrations`` table. Never edit or reorder a migration that has shipped: add a
new one at the end.
"""

from __future__ import annotations

import time
from typing import Callable

from sqlite_utils import Database

Migration = Callable[[Database], None]


def m001_initial(db: Database) -> None:
    db["conversations"].create(
        {
            "id": int,
            "title": str,
            "created_at": float,  # unix seconds
            "updated_at": float,
            "model": str,
            "system_prompt": str,
            "params": str,  # JSON object of generation params
            "exclude_from_training": int,
            "tip_id": int,  # the current leaf message: the active branch is the path root -> tip
        },
        pk="id",
        not_null={"title", "created_at", "updated_at", "exclude_from_training"},
        defaults={"exclude_from_training": 0, "params": "{}"},
    )
    # Written as SQL because sqlite-utils cannot declare ON DELETE CASCADE or CHECK constraints.
    db.execute(
        """
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            parent_id INTEGER REFERENCES messages(id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL DEFAULT '',
            created_at FLOAT NOT NULL,
            model TEXT,
            params TEXT,
            status TEXT NOT NULL DEFAULT 'complete'
                CHECK (status IN ('complete', 'streaming', 'stopped', 'failed')),
            tokens_in INTEGER,
            tokens_out INTEGER,
            ttft_s FLOAT,
            duration_s FLOAT,
            rating INTEGER NOT NULL DEFAULT 0 CHECK (rating IN (-1, 0, 1)),
            correction TEXT,
            error TEXT
        )
        """
    )
    db["messages"].create_index(["conversation_id"])
    db["messages"].create_index(["parent_id"])
    db["conversations"].create_index(["updated_at"])
    db["messages"].enable_fts(["content"], fts_version="FTS5", create_triggers=True, tokenize="porter")
    db["training_runs"].create(
        {
            "id": int,
            "name": str,
            "created_at": float,
            "finished_at": float,
            "base_model": str,
            "dataset_path": str,
            "dataset_sha256": str,
            "conversation_ids": str,  # JSON list
            "params": str,  # JSON object
            "status": str,  # pending | running | finished | failed | cancelled
            "metrics": str,  # JSON object
            "output_dir": str,
            "log_path": str,
            "pid": int,
            "error": str,
        },
        pk="id",
        not_null={"name", "created_at", "status"},
    )
    db["training_runs"].create_index(["name"], unique=True)


def m002_comparisons(db: Database) -> None:
    # One row a /compare: the prompt answered twice, the two replies in the order shown (A, B), and the pick.
    # Which model wrote each reply is the reply's own `model`; the win rate joins on it.
    db.execute(
        """
        CREATE TABLE comparisons (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            prompt_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            a_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            b_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            created_at FLOAT NOT NULL,
            seed INTEGER NOT NULL,
            blind INTEGER NOT NULL DEFAULT 0,
            choice TEXT CHECK (choice IN ('a', 'b', 'neither'))
        )
        """
    )
    db["comparisons"].create_index(["conversation_id"])
    db["comparisons"].create_index(["a_id"])
    db["comparisons"].create_index(["b_id"])


MIGRATIONS: list[Migration] = [m001_initial, m002_comparisons]


def migrate(db: Database) -> list[str]:
    """Apply the migrations not yet recorded in ``_migrations``; return the names applied.

    All of it runs under one ``BEGIN IMMEDIATE``: two app instances opening a new database at once take turns,
    and the second finds the work done instead of creating the tables twice. Each migration's DDL commits with
    its record, or not at all.
    """
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        if "_migrations" not in db.table_names():
            db["_migrations"].create({"name": str, "applied_at": float}, pk="name")
        done = {row["name"] for row in db["_migrations"].rows}
        applied = []
        for migration in MIGRATIONS:
            if migration.__name__ in done:
                continue
            migration(db)
            db["_migrations"].insert({"name": migration.__name__, "applied_at": time.time()})
            applied.append(migration.__name__)
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return applied
