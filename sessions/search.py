"""The Store's full-text search over message content (FTS5, kept current by triggers from the migrations)."""

from __future__ import annotations

from .records import SearchHit

SEARCH_CANDIDATES = 300  # most recent matches a search ranks: keeps a search over 100k messages under ~30 ms


class FullTextSearch:
    """The search method of ``Store``, which provides its ``_query``."""

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
