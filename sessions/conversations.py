"""The Store's conversations: create, read, list, rename, delete, walk for exports, and bulk-import whole trees."""

from __future__ import annotations

import json
import time
from typing import Any, Iterable, Iterator, Sequence

from .records import (
    UNSET,
    Conversation,
    NewConversation,
    NotFound,
    StoreError,
    check_message,
    conversation_from_row,
)


class Conversations:
    """Conversation methods of ``Store``, which provides their ``db``, ``_query``, ``_write``, ``_writing``."""

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
        return conversation_from_row(rows[0])

    def list_conversations(self, limit: int = 50, offset: int = 0) -> list[Conversation]:
        """Newest (most recently updated) first, one page at a time."""
        rows = self._query(
            "SELECT * FROM conversations ORDER BY updated_at DESC, id DESC LIMIT ? OFFSET ?", (limit, offset)
        )
        return [conversation_from_row(row) for row in rows]

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
        title: str = UNSET,
        model: str | None = UNSET,
        system_prompt: str | None = UNSET,
        params: dict[str, Any] = UNSET,
        exclude_from_training: bool = UNSET,
    ) -> Conversation:
        self.get_conversation(conversation_id)
        changes: dict[str, Any] = {}
        if title is not UNSET:
            changes["title"] = title
        if model is not UNSET:
            changes["model"] = model
        if system_prompt is not UNSET:
            changes["system_prompt"] = system_prompt
        if params is not UNSET:
            changes["params"] = json.dumps(params)
        if exclude_from_training is not UNSET:
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
            yield conversation_from_row(row)

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
                    check_message(message.role, message.status, message.rating)
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
