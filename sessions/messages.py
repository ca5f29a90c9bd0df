"""The Store's messages: add and update them (as a reply streams), rate and correct them, and walk their branches."""

from __future__ import annotations

import json
import time
from typing import Any

from .records import STATUSES, UNSET, Message, NotFound, StoreError, check_message, message_from_row


class Messages:
    """Message and branch methods of ``Store``, which provides their ``db``, ``_query``, ``_write``, ``_writing``."""

    def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        *,
        parent_id: int | None = UNSET,
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
        check_message(role, status, rating)
        with self._writing():
            conversation = self.get_conversation(conversation_id)
            if parent_id is UNSET:
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
        return message_from_row(rows[0])

    def update_message(
        self,
        message_id: int,
        *,
        content: str = UNSET,
        status: str = UNSET,
        tokens_in: int | None = UNSET,
        tokens_out: int | None = UNSET,
        ttft_s: float | None = UNSET,
        duration_s: float | None = UNSET,
        error: str | None = UNSET,
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
            if value is not UNSET
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
        return [message_from_row(row) for row in rows]

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
        return [message_from_row(row) for row in rows]

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
        return [message_from_row(row) for row in rows]

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
