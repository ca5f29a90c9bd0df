"""The chat store: ``Store`` itself (opening, locking, transactions, backup), assembled from one part per table.

``Store`` is the only code in the project that writes SQL. It wraps a ``sqlite_utils.Database`` and migrates it on
construction. One Store may be used from several threads (the TUI saves streamed replies from a worker), so every
operation holds a lock; several processes may share one file (WAL mode plus a busy timeout).

Every write runs in a ``BEGIN IMMEDIATE`` transaction: it takes SQLite's write lock up front, so a second writer
(another app instance) waits up to the busy timeout instead of failing with "database is locked" halfway through.

Its methods live by table: conversations.py, messages.py (and their branches, ratings, corrections), search.py,
training_runs.py and comparisons.py; the records they return and the errors they raise are in records.py.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sqlite_utils import Database

from .comparisons import Comparisons
from .conversations import Conversations
from .messages import Messages
from .migrations import migrate
from .records import StoreError
from .search import FullTextSearch
from .training_runs import TrainingRuns

BUSY_TIMEOUT_MS = 5000  # how long a writer waits for another app instance's write to finish
DAMAGED = "move it aside (or restore a `tui-chat backup`) and start again"


def connect(path: str | Path) -> Database:
    """Open (creating if needed) a chat database file shared safely between threads and processes."""
    path = Path(path)
    if not path.parent.is_dir():
        raise StoreError(f"cannot create {path}: the folder {path.parent} does not exist; create it or pick another")
    try:
        conn = sqlite3.connect(str(path), check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
        _use_wal(conn)
    except sqlite3.OperationalError as exc:
        raise StoreError(f"cannot open {path} ({exc}); check that it is readable and writable") from exc
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a usable chat database ({exc}); {DAMAGED}") from exc
    return Database(conn)


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch to write-ahead logging (readers never block the writer). On a new file the switch needs the file to
    itself, and SQLite answers "locked" at once instead of waiting out the busy timeout: two windows opening a new
    data home together retry for up to that long (measured: 1 in 5 runs of four threads failed without it)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


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


class Store(Conversations, Messages, FullTextSearch, TrainingRuns, Comparisons):
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
