"""The chat store: conversations as message trees, ratings, corrections, search and training runs.

``Store`` is the only code in the project that writes SQL. It wraps a ``sqlite_utils.Database`` and migrates it on
construction. One Store may be used from several threads (the TUI saves streamed replies from a worker), so every
operation holds a lock; several processes may share one file (WAL mode plus a busy timeout).

Every write runs in a ``BEGIN IMMEDIATE`` transaction: it takes SQLite's write lock up front, so a second writer
(another app instance) waits up to the busy timeout instead of failing with "database is locked" halfway through.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from sqlite_utils import Database

from .migrations import migrate

ROLES = ("system", "user", "assistant")
STATUSES = ("complete", "streaming", "stopped", "failed")
BUSY_TIMEOUT_MS = 5000  # how long a writer waits for another app instance's write to finish
SEARCH_CANDIDATES = 300  # most recent matches a search ranks: keeps a search over 100k messages under ~30 ms
DAMAGED = "move it aside (or restore a `tui-chat backup`) and start again"


class StoreError(Exception):
    """A problem with the store the user can act on; the message is one line naming the fix."""


class NotFound(StoreError):
    """No conversation, message or training run with that id."""


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    created_at: float
    updated_at: float
    model: str | None = None
    system_prompt: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    exclude_from_training: bool = False
    tip_id: int | None = None


@dataclass(frozen=True)
class Message:
    id: int
    conversation_id: int
    parent_id: int | None
    role: str
    content: str
    created_at: float
    model: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    status: str = "complete"
    tokens_in: int | None = None
    tokens_out: int | None = None
    ttft_s: float | None = None
    duration_s: float | None = None
    rating: int = 0
    correction: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class SearchHit:
    conversation_id: int
    message_id: int
    title: str
    role: str
    snippet: str
    rank: float


@dataclass(frozen=True)
class TrainingRun:
    id: int
    name: str
    created_at: float
    status: str  # pending | running | finished | failed | cancelled | deleted (its model folder; the record stays)
    finished_at: float | None = None
    base_model: str | None = None
    dataset_path: str | None = None
    dataset_sha256: str | None = None
    conversation_ids: list[int] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    output_dir: str | None = None
    log_path: str | None = None
    pid: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class NewMessage:
    """A message to bulk-insert with ``Store.import_conversations``.

    ``parent`` is the index of an earlier message in the same ``NewConversation.messages`` (``None``: a root).
    """

    role: str
    content: str
    parent: int | None = None
    created_at: float | None = None
    model: str | None = None
    params: dict[str, Any] | None = None
    status: str = "complete"
    rating: int = 0
    correction: str | None = None


@dataclass(frozen=True)
class NewConversation:
    """A whole conversation tree to bulk-insert; ``tip`` is the index of the tip message (default: the last)."""

    title: str
    messages: Sequence[NewMessage]
    tip: int | None = None
    created_at: float | None = None
    updated_at: float | None = None
    model: str | None = None
    system_prompt: str | None = None
    params: dict[str, Any] | None = None
    exclude_from_training: bool = False


_UNSET: Any = object()


def _loads(text: str | None, default: Any) -> Any:
    return json.loads(text) if text else default


def _conversation(row: dict[str, Any]) -> Conversation:
    return Conversation(
        id=row["id"],
        title=row["title"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        model=row["model"],
        system_prompt=row["system_prompt"],
        params=_loads(row["params"], {}),
        exclude_from_training=bool(row["exclude_from_training"]),
        tip_id=row["tip_id"],
    )


def _message(row: dict[str, Any]) -> Message:
    values = dict(row)
    values["params"] = _loads(values.get("params"), {})
    return Message(**values)


def _training_run(row: dict[str, Any]) -> TrainingRun:
    values = dict(row)
    values["conversation_ids"] = _loads(values.get("conversation_ids"), [])
    values["params"] = _loads(values.get("params"), {})
    values["metrics"] = _loads(values.get("metrics"), {})
    return TrainingRun(**values)


def connect(path: str | Path) -> Database:
    """Open (creating if needed) a chat database file shared safely between threads and processes."""
    path = Path(path)
    if not path.parent.is_dir():
        raise StoreError(f"cannot create {path}: the folder {path.parent} does not exist; create it or pick another")
    try:
        conn = sqlite3.connect(str(path), check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as exc:
        raise StoreError(f"cannot open {path} ({exc}); check that it is readable and writable") from exc
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a usable chat database ({exc}); {DAMAGED}") from exc
    return Database(conn)


@contextmanager
def _sqlite_errors() -> Iterator[None]:
    """Turn the SQLite failures a user can act on (a damaged file, a writer that never finishes) into StoreError."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise StoreError(
                f"the chat database stayed busy for {BUSY_TIMEOUT_MS / 1000:g} s (another tui-chat is writing); "
                "try again"
            ) from exc
        raise
    except sqlite3.DatabaseError as exc:
        # Exactly DatabaseError (not a subclass) is what SQLite raises for a malformed or non-database file.
        if type(exc) is sqlite3.DatabaseError:
            raise StoreError(f"the chat database is damaged ({exc}); {DAMAGED}") from exc
        raise


def memory_database() -> Database:
    """An in-memory database usable from worker threads (tests, `--no-save`)."""
    return Database(sqlite3.connect(":memory:", check_same_thread=False))


class Store:
    """Conversations, messages and training runs in one SQLite database; see the module docstring."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = threading.RLock()
        self._transaction_depth = 0  # > 0 inside `transaction()`: writes then commit only at its end
        try:
            with self._lock:
                conn = db.conn
                conn.execute("PRAGMA foreign_keys=ON")
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                migrate(db)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreError("the chat database is busy (another tui-chat is upgrading it); try again") from exc
            raise
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"the chat database is damaged or not a database ({exc}); {DAMAGED}") from exc

    @classmethod
    def open(cls, path: str | Path) -> "Store":
        """Open (creating and migrating if needed) the database file at ``path``."""
        return cls(connect(path))

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # ---- low level -------------------------------------------------------------------------------------------

    def _query(self, sql: str, params: tuple | dict = ()) -> list[dict[str, Any]]:
        with self._lock, _sqlite_errors():
            return list(self.db.query(sql, params))

    def _write(self, sql: str, params: tuple | dict = ()) -> sqlite3.Cursor:
        with self._writing():
            return self.db.execute(sql, params)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the lock and run the block as one write transaction, unless an outer ``transaction()`` owns it.

        ``BEGIN IMMEDIATE`` takes the write lock before the first read, so reads inside the block see what the
        block will write over, and another process's writer makes us wait (busy timeout) rather than fail.
        """
        with self._lock, _sqlite_errors():
            if self._transaction_depth:
                yield
                return
            conn = self.db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if conn.in_transaction:  # some errors (a full disk) have already rolled it back
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def transaction(self) -> "_Transaction":
        """Group several writes into one all-or-nothing transaction (imports use it); may be nested."""
        return _Transaction(self)

    # ---- conversations ---------------------------------------------------------------------------------------

    def create_conversation(
        self,
        title: str = "New chat",
        *,
        model: str | None = None,
        system_prompt: str | None = None,
        params: dict[str, Any] | None = None,
        created_at: float | None = None,
    ) -> Conversation:
        now = created_at if created_at is not None else time.time()
        cursor = self._write(
            "INSERT INTO conversations (title, created_at, updated_at, model, system_prompt, params, "
            "exclude_from_training) VALUES (?, ?, ?, ?, ?, ?, 0)",
            (title, now, now, model, system_prompt, json.dumps(params or {})),
        )
        return self.get_conversation(cursor.lastrowid)

    def get_conversation(self, conversation_id: int) -> Conversation:
        rows = self._query("SELECT * FROM conversations WHERE id = ?", (conversation_id,))
        if not rows:
            raise NotFound(f"no conversation {conversation_id}; `tui-chat sessions list` shows the ids")
        return _conversation(rows[0])

    def list_conversations(self, limit: int = 50, offset: int = 0) -> list[Conversation]:
        """Newest (most recently updated) first, one page at a time."""
        rows = self._query(
            "SELECT * FROM conversations ORDER BY updated_at DESC, id DESC LIMIT ? OFFSET ?", (limit, offset)
        )
        return [_conversation(row) for row in rows]

    def count_conversations(self) -> int:
        return self._query("SELECT count(*) AS n FROM conversations")[0]["n"]

    def latest_conversation(self) -> Conversation | None:
        page = self.list_conversations(limit=1)
        return page[0] if page else None

    def rename_conversation(self, conversation_id: int, title: str) -> Conversation:
        self.update_conversation(conversation_id, title=title)
        return self.get_conversation(conversation_id)

    def update_conversation(
        self,
        conversation_id: int,
        *,
        title: str = _UNSET,
        model: str | None = _UNSET,
        system_prompt: str | None = _UNSET,
        params: dict[str, Any] = _UNSET,
        exclude_from_training: bool = _UNSET,
    ) -> Conversation:
        self.get_conversation(conversation_id)
        changes: dict[str, Any] = {}
        if title is not _UNSET:
            changes["title"] = title
        if model is not _UNSET:
            changes["model"] = model
        if system_prompt is not _UNSET:
            changes["system_prompt"] = system_prompt
        if params is not _UNSET:
            changes["params"] = json.dumps(params)
        if exclude_from_training is not _UNSET:
            changes["exclude_from_training"] = int(bool(exclude_from_training))
        if changes:
            changes["updated_at"] = time.time()
            columns = ", ".join(f"{name} = :{name}" for name in changes)
            self._write(f"UPDATE conversations SET {columns} WHERE id = :id", {**changes, "id": conversation_id})
        return self.get_conversation(conversation_id)

    def delete_conversation(self, conversation_id: int) -> None:
        """Hard delete: the messages go with it (cascade) and the FTS triggers drop them from the index."""
        self.get_conversation(conversation_id)
        self._write("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # ---- messages --------------------------------------------------------------------------------------------

    def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        *,
        parent_id: int | None = _UNSET,
        model: str | None = None,
        params: dict[str, Any] | None = None,
        status: str = "complete",
        created_at: float | None = None,
        rating: int = 0,
        correction: str | None = None,
    ) -> Message:
        """Append a message under ``parent_id`` (default: the conversation's tip) and make it the new tip.

        Adding under a parent that already has children creates a sibling: a new branch.
        """
        _check_message(role, status, rating)
        with self._writing():
            conversation = self.get_conversation(conversation_id)
            if parent_id is _UNSET:
                parent_id = conversation.tip_id
            elif parent_id is not None and self.get_message(parent_id).conversation_id != conversation_id:
                raise StoreError(f"message {parent_id} belongs to another conversation than {conversation_id}")
            now = created_at if created_at is not None else time.time()
            cursor = self.db.execute(
                "INSERT INTO messages (conversation_id, parent_id, role, content, created_at, model, params, "
                "status, rating, correction) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    conversation_id,
                    parent_id,
                    role,
                    content,
                    now,
                    model,
                    json.dumps(params) if params else None,
                    status,
                    rating,
                    correction,
                ),
            )
            message_id = cursor.lastrowid
            self.db.execute(
                "UPDATE conversations SET tip_id = ?, updated_at = ? WHERE id = ?",
                (message_id, max(now, conversation.updated_at), conversation_id),
            )
        return self.get_message(message_id)

    def get_message(self, message_id: int) -> Message:
        rows = self._query("SELECT * FROM messages WHERE id = ?", (message_id,))
        if not rows:
            raise NotFound(f"no message {message_id}")
        return _message(rows[0])

    def update_message(
        self,
        message_id: int,
        *,
        content: str = _UNSET,
        status: str = _UNSET,
        tokens_in: int | None = _UNSET,
        tokens_out: int | None = _UNSET,
        ttft_s: float | None = _UNSET,
        duration_s: float | None = _UNSET,
        error: str | None = _UNSET,
    ) -> None:
        """Update a message in place: used while a reply streams and to finalise it."""
        changes = {
            name: value
            for name, value in {
                "content": content,
                "status": status,
                "tokens_in": tokens_in,
                "tokens_out": tokens_out,
                "ttft_s": ttft_s,
                "duration_s": duration_s,
                "error": error,
            }.items()
            if value is not _UNSET
        }
        if "status" in changes and changes["status"] not in STATUSES:
            raise StoreError(f"unknown status {changes['status']!r}; use one of {', '.join(STATUSES)}")
        if not changes:
            return
        # A message deleted meanwhile (its conversation deleted from another window while the reply streamed) is
        # silently not updated: the streaming writer has nothing left to save it to.
        columns = ", ".join(f"{name} = :{name}" for name in changes)
        self._write(f"UPDATE messages SET {columns} WHERE id = :id", {**changes, "id": message_id})

    def set_rating(self, message_id: int, rating: int) -> Message:
        """Rate a message: +1 (good), -1 (bad: left out of training data), 0 (no rating)."""
        if rating not in (-1, 0, 1):
            raise StoreError("a rating is -1, 0 or +1")
        self.get_message(message_id)
        self._write("UPDATE messages SET rating = ? WHERE id = ?", (rating, message_id))
        return self.get_message(message_id)

    def set_correction(self, message_id: int, correction: str | None) -> Message:
        """Record the user's ideal answer for an assistant reply (``None`` or empty clears it)."""
        message = self.get_message(message_id)
        if message.role != "assistant":
            raise StoreError("only assistant replies can be corrected")
        self._write("UPDATE messages SET correction = ? WHERE id = ?", (correction or None, message_id))
        return self.get_message(message_id)

    def messages(self, conversation_id: int) -> list[Message]:
        """Every message of a conversation, all branches, in creation order."""
        rows = self._query("SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,))
        return [_message(row) for row in rows]

    def path_to(self, message_id: int | None) -> list[Message]:
        """The messages from the root down to ``message_id``."""
        if message_id is None:
            return []
        rows = self._query(
            """
            WITH RECURSIVE chain(id, depth) AS (
                SELECT id, 0 FROM messages WHERE id = ?
                UNION ALL
                SELECT messages.parent_id, chain.depth + 1 FROM messages JOIN chain ON messages.id = chain.id
                WHERE messages.parent_id IS NOT NULL
            )
            SELECT messages.* FROM chain JOIN messages ON messages.id = chain.id ORDER BY chain.depth DESC
            """,
            (message_id,),
        )
        return [_message(row) for row in rows]

    def active_branch(self, conversation_id: int) -> list[Message]:
        """The active branch: root to tip."""
        return self.path_to(self.get_conversation(conversation_id).tip_id)

    def siblings(self, message_id: int) -> list[Message]:
        """The versions of a message: itself and the other children of its parent, oldest first."""
        message = self.get_message(message_id)
        if message.parent_id is None:
            rows = self._query(
                "SELECT * FROM messages WHERE conversation_id = ? AND parent_id IS NULL ORDER BY id",
                (message.conversation_id,),
            )
        else:
            rows = self._query("SELECT * FROM messages WHERE parent_id = ? ORDER BY id", (message.parent_id,))
        return [_message(row) for row in rows]

    def switch_branch(self, message_id: int) -> list[Message]:
        """Make the branch through ``message_id`` active: the tip becomes its newest descendant leaf."""
        with self._writing():
            message = self.get_message(message_id)
            leaf = message_id
            while True:
                child = self._query("SELECT id FROM messages WHERE parent_id = ? ORDER BY id DESC LIMIT 1", (leaf,))
                if not child:
                    break
                leaf = child[0]["id"]
            self.db.execute("UPDATE conversations SET tip_id = ? WHERE id = ?", (leaf, message.conversation_id))
        return self.active_branch(message.conversation_id)

    def set_tip(self, conversation_id: int, message_id: int | None) -> None:
        """Point the conversation's tip at ``message_id`` (e.g. the parent, before adding a new sibling)."""
        with self._writing():
            self.get_conversation(conversation_id)
            if message_id is not None and self.get_message(message_id).conversation_id != conversation_id:
                raise StoreError(f"message {message_id} belongs to another conversation than {conversation_id}")
            self.db.execute("UPDATE conversations SET tip_id = ? WHERE id = ?", (message_id, conversation_id))

    # ---- search ----------------------------------------------------------------------------------------------

    def search(self, query: str, limit: int = 20) -> list[SearchHit]:
        """Full-text search over message content, best matches first, with a highlighted snippet each.

        The query is taken as plain words (each a prefix match), so user input never trips FTS5 syntax. Ranking
        (bm25) covers the ``SEARCH_CANDIDATES`` most recent matching messages: all of them for any specific query,
        the most recent ones for a word found everywhere, where ranking every match costs ~0.3 s per 100k
        messages and recent chats are the likelier target.
        """
        words = [word.replace('"', '""') for word in query.split()]
        if not words:
            return []
        match = " ".join(f'"{word}"*' for word in words)
        rows = self._query(
            """
            SELECT messages.id AS message_id, messages.conversation_id, messages.role, conversations.title,
                   hits.snippet, hits.rank
            FROM (
                SELECT rowid, snippet(messages_fts, 0, '[', ']', '…', 12) AS snippet, bm25(messages_fts) AS rank
                FROM messages_fts WHERE messages_fts MATCH :match ORDER BY rowid DESC LIMIT :candidates
            ) AS hits
            JOIN messages ON messages.id = hits.rowid
            JOIN conversations ON conversations.id = messages.conversation_id
            ORDER BY hits.rank, hits.rowid DESC
            LIMIT :limit
            """,
            {"match": match, "candidates": SEARCH_CANDIDATES, "limit": limit},
        )
        return [SearchHit(**row) for row in rows]

    # ---- training runs ---------------------------------------------------------------------------------------

    def create_training_run(
        self,
        name: str,
        *,
        base_model: str,
        dataset_path: str | None = None,
        dataset_sha256: str | None = None,
        conversation_ids: list[int] | None = None,
        params: dict[str, Any] | None = None,
        output_dir: str | None = None,
        log_path: str | None = None,
        status: str = "pending",
    ) -> TrainingRun:
        cursor = self._write(
            "INSERT INTO training_runs (name, created_at, base_model, dataset_path, dataset_sha256, "
            "conversation_ids, params, status, output_dir, log_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                name,
                time.time(),
                base_model,
                dataset_path,
                dataset_sha256,
                json.dumps(conversation_ids or []),
                json.dumps(params or {}),
                status,
                output_dir,
                log_path,
            ),
        )
        return self.get_training_run(cursor.lastrowid)

    def get_training_run(self, run: int | str) -> TrainingRun:
        column = "id" if isinstance(run, int) else "name"
        rows = self._query(f"SELECT * FROM training_runs WHERE {column} = ?", (run,))
        if not rows:
            raise NotFound(f"no training run {run!r}; `tui-chat models` lists them")
        return _training_run(rows[0])

    def list_training_runs(self) -> list[TrainingRun]:
        return [_training_run(row) for row in self._query("SELECT * FROM training_runs ORDER BY id DESC")]

    def update_training_run(
        self,
        run_id: int,
        *,
        status: str = _UNSET,
        metrics: dict[str, Any] = _UNSET,
        finished_at: float | None = _UNSET,
        pid: int | None = _UNSET,
        error: str | None = _UNSET,
        output_dir: str | None = _UNSET,
    ) -> TrainingRun:
        changes = {
            name: value
            for name, value in {
                "status": status,
                "metrics": json.dumps(metrics) if metrics is not _UNSET else _UNSET,
                "finished_at": finished_at,
                "pid": pid,
                "error": error,
                "output_dir": output_dir,
            }.items()
            if value is not _UNSET
        }
        if changes:
            columns = ", ".join(f"{name} = :{name}" for name in changes)
            self._write(f"UPDATE training_runs SET {columns} WHERE id = :id", {**changes, "id": run_id})
        return self.get_training_run(run_id)

    def mark_training_run_deleted(self, run_id: int) -> TrainingRun:
        """Record that a run's model folder was deleted; its settings, conversations and replies stay for lineage.
        StoreError for a run that is pending or running (checked in the same write, so it cannot start meanwhile)."""
        cursor = self._write(
            "UPDATE training_runs SET status = 'deleted', pid = NULL "
            "WHERE id = ? AND status NOT IN ('pending', 'running')",
            (run_id,),
        )
        run = self.get_training_run(run_id)
        if cursor.rowcount == 0:
            raise StoreError(f"run {run.name} is still {run.status}; stop it first (/runs cancel {run.name} in the "
                             "chat), then delete it")
        return run

    def messages_by_model(self, model: str, limit: int = 100) -> list[Message]:
        """Assistant messages produced by ``model`` (lineage: what a base model or run has said)."""
        rows = self._query(
            "SELECT * FROM messages WHERE role = 'assistant' AND model = ? ORDER BY id DESC LIMIT ?", (model, limit)
        )
        return [_message(row) for row in rows]

    # ---- maintenance -----------------------------------------------------------------------------------------

    def backup(self, path: str | Path) -> Path:
        """A consistent copy of the whole database (``VACUUM INTO``), safe while the app is running."""
        path = Path(path)
        if path.exists():
            raise StoreError(f"{path} already exists; choose a new file name for the backup")
        if not path.parent.is_dir():
            raise StoreError(f"the folder {path.parent} does not exist; create it or pick another backup path")
        with self._lock, _sqlite_errors():
            if self._transaction_depth:
                raise StoreError("cannot back up inside a store transaction")
            try:
                self.db.execute("VACUUM INTO ?", (str(path),))
            except sqlite3.OperationalError as exc:
                raise StoreError(f"cannot write the backup to {path} ({exc})") from exc
        return path

    def iter_conversations(
        self, since: float | None = None, ids: Sequence[int] | None = None
    ) -> Iterator[Conversation]:
        """Every conversation (updated at or after ``since``, unix seconds; only ``ids`` if given), oldest first:
        exports walk them in a stable order."""
        sql = "SELECT * FROM conversations WHERE (? IS NULL OR updated_at >= ?)"
        params: list[Any] = [since, since]
        if ids is not None:
            sql += f" AND id IN ({', '.join('?' for _ in ids)})"
            params.extend(ids)
        for row in self._query(sql + " ORDER BY created_at, id", tuple(params)):
            yield _conversation(row)

    def message_counts(self, conversation_ids: Sequence[int]) -> dict[int, int]:
        """How many messages (all branches) each conversation holds; for listings."""
        if not conversation_ids:
            return {}
        rows = self._query(
            f"SELECT conversation_id, count(*) AS n FROM messages WHERE conversation_id IN "
            f"({', '.join('?' for _ in conversation_ids)}) GROUP BY conversation_id",
            tuple(conversation_ids),
        )
        counts = {row["conversation_id"]: row["n"] for row in rows}
        return {cid: counts.get(cid, 0) for cid in conversation_ids}

    def import_conversations(self, conversations: Iterable[NewConversation]) -> list[int]:
        """Insert whole conversation trees in bulk, all or nothing; return their new ids in order.

        Ids are allocated up front under the write lock so both tables go in with one ``executemany`` each: an
        import of a large ChatGPT export (or the benchmark's 100k messages) takes seconds, not minutes.
        """
        now = time.time()
        conversation_rows: list[tuple] = []
        message_rows: list[tuple] = []
        with self._writing():
            next_conversation = self._query("SELECT coalesce(max(id), 0) + 1 AS n FROM conversations")[0]["n"]
            next_message = self._query("SELECT coalesce(max(id), 0) + 1 AS n FROM messages")[0]["n"]
            ids = []
            for conversation in conversations:
                conversation_id = next_conversation
                next_conversation += 1
                first_id = next_message
                for index, message in enumerate(conversation.messages):
                    _check_message(message.role, message.status, message.rating)
                    if message.parent is not None and not 0 <= message.parent < index:
                        raise StoreError(
                            f"{conversation.title!r}: message {index} has parent {message.parent}; "
                            "a parent must come before its children"
                        )
                    message_rows.append(
                        (
                            next_message,
                            conversation_id,
                            None if message.parent is None else first_id + message.parent,
                            message.role,
                            message.content,
                            message.created_at if message.created_at is not None else now,
                            message.model,
                            json.dumps(message.params) if message.params else None,
                            message.status,
                            message.rating,
                            message.correction,
                        )
                    )
                    next_message += 1
                count = len(conversation.messages)
                tip = conversation.tip if conversation.tip is not None else count - 1
                if count and not 0 <= tip < count:
                    raise StoreError(f"{conversation.title!r}: tip {tip} is not one of its {count} messages")
                created = conversation.created_at if conversation.created_at is not None else now
                conversation_rows.append(
                    (
                        conversation_id,
                        conversation.title,
                        created,
                        max(conversation.updated_at or created, created),
                        conversation.model,
                        conversation.system_prompt,
                        json.dumps(conversation.params or {}),
                        int(conversation.exclude_from_training),
                        first_id + tip if count else None,
                    )
                )
                ids.append(conversation_id)
            conn = self.db.conn
            conn.executemany(
                "INSERT INTO conversations (id, title, created_at, updated_at, model, system_prompt, params, "
                "exclude_from_training, tip_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                conversation_rows,
            )
            conn.executemany(
                "INSERT INTO messages (id, conversation_id, parent_id, role, content, created_at, model, params, "
                "status, rating, correction) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                message_rows,
            )
        return ids


def _check_message(role: str, status: str, rating: int) -> None:
    if role not in ROLES:
        raise StoreError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    if status not in STATUSES:
        raise StoreError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
    if rating not in (-1, 0, 1):
        raise StoreError(f"a rating is -1, 0 or +1, not {rating!r}")


class _Transaction:
    """``with store.transaction():`` makes the enclosed Store calls one atomic unit (nested: a savepoint)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._savepoint = False

    def __enter__(self) -> Store:
        store = self.store
        store._lock.acquire()
        try:
            with _sqlite_errors():
                if store._transaction_depth:
                    store.db.conn.execute("SAVEPOINT store_transaction")
                    self._savepoint = True
                else:
                    store.db.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            store._lock.release()
            raise
        store._transaction_depth += 1
        return store

    def __exit__(self, exc_type, exc, tb) -> None:
        store = self.store
        conn = store.db.conn
        try:
            if self._savepoint:
                if exc_type is not None:
                    conn.execute("ROLLBACK TO store_transaction")
                conn.execute("RELEASE store_transaction")
            elif exc_type is None:
                conn.execute("COMMIT")
            elif conn.in_transaction:
                conn.execute("ROLLBACK")
        finally:
            store._transaction_depth -= 1
            store._lock.release()
