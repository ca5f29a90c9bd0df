"""The Store's comparisons: a prompt answered by two models (or two samples), the user's pick, and the win rate
of one model over another that the picks add up to."""

from __future__ import annotations

import time

from .records import Comparison, NotFound, StoreError, WinRate, comparison_from_row

CHOICES = ("a", "b", "neither")


class Comparisons:
    """Comparison methods of ``Store``, which provides their ``_query``, ``_write`` and ``transaction``."""

    def record_comparison(
        self, prompt_id: int, a_id: int, b_id: int, *, seed: int, blind: bool, choice: str | None,
        ratings: dict[int, int] | None = None,
    ) -> Comparison:
        """Keep a comparison of replies ``a_id`` and ``b_id`` to ``prompt_id`` and its ``choice`` (None: no pick),
        with the ``ratings`` (message id -> -1/0/+1) the pick gives, in one transaction."""
        if choice is not None and choice not in CHOICES:
            raise StoreError(f"a comparison's choice is one of {', '.join(CHOICES)}, not {choice!r}")
        with self.transaction():
            prompt = self.get_message(prompt_id)
            for reply_id in (a_id, b_id):
                reply = self.get_message(reply_id)
                if reply.role != "assistant" or reply.parent_id != prompt_id:
                    raise StoreError(f"message {reply_id} is not a reply to message {prompt_id}")
            for message_id, rating in (ratings or {}).items():
                self.set_rating(message_id, rating)
            cursor = self._write(
                "INSERT INTO comparisons (conversation_id, prompt_id, a_id, b_id, created_at, seed, blind, choice) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (prompt.conversation_id, prompt_id, a_id, b_id, time.time(), seed, int(blind), choice),
            )
        return self.get_comparison(cursor.lastrowid)

    def get_comparison(self, comparison_id: int) -> Comparison:
        rows = self._query("SELECT * FROM comparisons WHERE id = ?", (comparison_id,))
        if not rows:
            raise NotFound(f"no comparison {comparison_id}")
        return comparison_from_row(rows[0])

    def comparisons(self, conversation_id: int) -> list[Comparison]:
        rows = self._query("SELECT * FROM comparisons WHERE conversation_id = ? ORDER BY id", (conversation_id,))
        return [comparison_from_row(row) for row in rows]

    def win_rate(self, model: str, against: str) -> WinRate:
        """How often ``model``'s reply was picked over ``against``'s, in comparisons of one against the other
        (a pick of neither is no win for either and is not counted)."""
        rows = self._query(
            """
            SELECT c.choice, c.blind, a.model AS a_model FROM comparisons c
            JOIN messages a ON a.id = c.a_id JOIN messages b ON b.id = c.b_id
            WHERE c.choice IN ('a', 'b')
              AND ((a.model = :model AND b.model = :against) OR (a.model = :against AND b.model = :model))
            """,
            {"model": model, "against": against},
        )
        wins = [(row["choice"] == "a") == (row["a_model"] == model) for row in rows]
        blind = [won for won, row in zip(wins, rows) if row["blind"]]
        return WinRate(model, against, sum(wins), len(wins), sum(blind), len(blind))
