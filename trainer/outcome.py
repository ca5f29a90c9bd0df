"""A finished run's outcome in one line for people: what it gained on the user's held-out conversations and what it
kept of general knowledge. Reads metrics.json's numbers only (no torch), so the chat window can say it too."""

from __future__ import annotations

from typing import Any


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2f}"


def outcome_parts(metrics: dict[str, Any]) -> dict[str, str]:
    """The sentences of ``outcome_line`` by the measure each says in words: ``val_ppl`` (the gain on the user's
    held-out chats) and ``retention`` (the general facts kept), each only when it was measured."""
    parts = {}
    before, after = (metrics.get("before") or {}).get("val_ppl"), (metrics.get("after") or {}).get("val_ppl")
    if before and after:
        change = 1 - after / before
        word = f"{change:.0%} less surprising" if change >= 0 else f"{-change:.0%} more surprising"
        parts["val_ppl"] = (f"Your held-out chats: {word} to the model (perplexity {_number(before)} -> "
                            f"{_number(after)}).")
    retention = metrics.get("retention") or {}
    if retention.get("facts_total"):
        parts["retention"] = (f"General knowledge kept: {retention['facts_kept']} of {retention['facts_total']} "
                              f"answers ({retention['retention']:.0%}).")
    return parts


def outcome_line(metrics: dict[str, Any]) -> str | None:
    """``Your held-out chats: 21% less surprising to the model (perplexity 59 -> 47). General knowledge kept: 25 of
    26 answers (96%).``; either half when only it was measured, None when neither was."""
    return " ".join(outcome_parts(metrics).values()) or None
