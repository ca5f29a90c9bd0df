"""Every key and every slash command, from the same tables that define them."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from tui_chat.chat import commands
from tui_chat.tui.keys import CHAT_ACTIONS, INPUT_KEYS


def key_label(keys: str) -> str:
    """``ctrl+n,f2`` -> ``Ctrl+N, F2``."""
    return ", ".join("+".join(part.capitalize() if len(part) > 1 else part.upper() for part in key.split("+"))
                     for key in keys.split(","))


def keys_table() -> Table:
    table = Table(box=None, show_header=True, header_style="bold", expand=True, padding=(0, 2, 0, 0))
    table.add_column("Key", style="bold", no_wrap=True)
    table.add_column("Action")
    table.add_column("Same as", style="dim", no_wrap=True)
    for action in CHAT_ACTIONS:
        table.add_row(Text(key_label(action.keys)), Text(action.help), Text(f"/{action.command}" if action.command else ""))
    for keys, what in INPUT_KEYS:
        table.add_row(Text(keys), Text(what), Text(""))
    return table


def commands_table() -> Table:
    table = Table(box=None, show_header=True, header_style="bold", expand=True, padding=(0, 2, 0, 0))
    table.add_column("Command", style="bold", no_wrap=True)
    table.add_column("What it does")
    for command in commands.COMMANDS:
        aliases = ", ".join(f"/{alias}" for alias in command.aliases)
        # Text, not str: usages like "/exclude [on|off]" would be read as Rich markup.
        table.add_row(Text(command.usage), Text(command.help + (f"  (also {aliases})" if aliases else "")))
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "dismiss(None)", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -wide -tall"):
            yield Label("Keys and commands", classes="dialog-title")
            with VerticalScroll(id="help-body"):
                yield Static(keys_table())
                yield Static(Text("\nSlash commands (type them in the message box)", style="bold"))
                yield Static(commands_table())
                yield Static(Text("\nCtrl+P opens the command palette: every action above, and Theme.", style="dim"))
            yield Label("Esc closes", classes="dialog-hint")
