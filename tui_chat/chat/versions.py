"""Which version of a message is shown: its place among its siblings ("2/3" in the chat)."""

from __future__ import annotations

from collections import defaultdict

from sessions import Message


def version_positions(messages: list[Message]) -> dict[int, tuple[int, int]]:
    """For each message of one conversation: (its 1-based place among its siblings, how many there are).

    Siblings share a parent (a regenerated reply, an edited user message); they count oldest first, like
    ``Store.siblings``. One pass over ``Store.messages``, so a long conversation costs one query, not one per message.
    """
    children: dict[int | None, list[int]] = defaultdict(list)
    for message in sorted(messages, key=lambda m: m.id):
        children[message.parent_id].append(message.id)
    return {
        message_id: (place, len(ids)) for ids in children.values() for place, message_id in enumerate(ids, start=1)
    }
