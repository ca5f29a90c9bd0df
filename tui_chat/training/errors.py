"""The one error of `/train` and `/runs` (no torch here: front ends catch it before anything heavy is imported)."""

from __future__ import annotations

from tui_chat.chat.commands import CommandError


class TrainingError(CommandError):
    """A `/train` (or `/runs`) request that cannot go ahead; the message is one line naming the fix. A CommandError,
    so the front ends show it as they show any bad command."""
