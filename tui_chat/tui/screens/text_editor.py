"""Edit a piece of text: a title (one line) or a prompt, a message or an ideal answer (several lines)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, TextArea


class TextEditorScreen(ModalScreen["str | None"]):
    """Returns the edited text (stripped), or None when cancelled."""

    BINDINGS = [
        Binding("escape", "dismiss(None)", "Cancel"),
        Binding("ctrl+s", "save", "Save", priority=True),
    ]

    def __init__(self, title: str, text: str = "", *, multiline: bool = True, hint: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.text = text
        self.multiline = multiline
        self.hint = hint

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -wide"):
            yield Label(self.title_text, classes="dialog-title")
            if self.multiline:
                yield TextArea(self.text, soft_wrap=True, id="editor")
            else:
                yield Input(self.text, id="editor")
            save_keys = "Ctrl+S" if self.multiline else "Enter"
            yield Label(f"{self.hint}  {save_keys} saves · Esc cancels".strip(), classes="dialog-hint")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        editor = self.query_one("#editor")
        editor.focus()
        if isinstance(editor, TextArea):
            editor.move_cursor(editor.document.end)

    def _value(self) -> str:
        editor = self.query_one("#editor")
        return (editor.text if isinstance(editor, TextArea) else editor.value).strip()

    def action_save(self) -> None:
        self.dismiss(self._value())

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.dismiss(None)
