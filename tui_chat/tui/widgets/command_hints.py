"""While a slash command is being typed: the commands that match, with what they take and do (Tab completes)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui_chat.chat import commands

MAX_HINTS = 6


def matching(text: str) -> list[commands.SlashCommand]:
    """The commands whose name (or alias) starts with what follows the slash, while no argument is typed yet."""
    if not text.startswith("/") or text.startswith("//") or any(c.isspace() for c in text):
        return []
    typed = text[1:].lower()
    return [c for c in commands.COMMANDS if any(name.startswith(typed) for name in (c.name, *c.aliases))]


def completion(text: str) -> str | None:
    """``text`` completed as far as the matching command names agree (a unique match gets a trailing space)."""
    names = [name for name in commands.names() if name.startswith(text.lower())] if matching(text) else []
    if not names:
        return None
    if len(names) == 1:
        return names[0] + " "
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    return prefix if len(prefix) > len(text) else None


class CommandHints(Static):
    def show_for(self, text: str) -> None:
        found = matching(text)
        self.display = bool(found)
        if not found:
            return
        hints = Text()
        for command in found[:MAX_HINTS]:
            if hints:
                hints.append("\n")
            hints.append(f"{command.usage:<22}", style="bold")
            hints.append(command.help, style="dim")
        if len(found) > MAX_HINTS:
            hints.append(f"\n… {len(found) - MAX_HINTS} more: keep typing, or Tab to complete", style="dim italic")
        self.update(hints)
