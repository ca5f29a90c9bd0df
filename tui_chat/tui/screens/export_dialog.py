"""Export sessions as a dataset from inside the chat, with the options of `tui-chat export`."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static


class ExportDialogScreen(ModalScreen["str | None"]):
    """Returns the options as typed (split like a shell by the caller), or None when cancelled."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, cli_help: str) -> None:
        super().__init__()
        self.cli_help = cli_help

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -wide"):
            yield Label("Export sessions (the options of `tui-chat export`)", classes="dialog-title")
            yield Input(placeholder="e.g. --format messages --out ~/chats.jsonl   (empty: the defaults)", id="options")
            yield Label("Enter exports · Esc cancels", classes="dialog-hint")
            with VerticalScroll(id="export-help"):
                yield Static(self.cli_help, markup=False)

    def on_mount(self) -> None:
        self.query_one("#options", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value)
