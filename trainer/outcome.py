"""A finished run's outcome in one line for people: what it gained on the user's held-out conversations and what it
kept of general knowledge. Reads metrics.json's numbers only (no torch), so the chat window can say it too."""

from __future__ import annotations

from typing import Any


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2f}"


def outcome_line(metrics: dict[str, Any]) -> str | None:
    """``Your held-out chats: 21% less surprising to the model (perplexity 59 -> 47). General knowledge kept: 25 of
    26 answers (96%).``; either half when only it was measured, None when neither was."""
    parts = []
    before, after = (metrics.get("before") or {}).get("val_ppl"), (metrics.get("after") or {}).get("val_ppl")
    if before and after:
        change = 1 - after / before
        word = f"{change:.0%} less surprising" if change >= 0 else f"{-change:.0%} more surprising"
        parts.append(f"Your held-out chats: {word} to the model (perplexity {_number(before)} -> {_number(after)}).")
    retention = metrics.get("retention") or {}
    if retention.get("facts_total"):
        parts.append(f"General knowledge kept: {retention['facts_kept']} of {retention['facts_total']} answers "
                     f"({retention['retention']:.0%}).")
    return " ".join(parts) or None
