"""The generation settings of one conversation (saved with it): temperature, top-k, top-p, ..."""

from __future__ import annotations

from dataclasses import fields

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label

from tui_chat.inference.contract import GenerationParams

HELP = {
    "temperature": "0 = greedy (always the likeliest token); higher = more varied",
    "top_k": "sample from the k likeliest tokens (0 = off)",
    "top_p": "sample from the smallest set with this much probability (1 = off)",
    "repetition_penalty": "> 1 discourages repeating (1 = off)",
    "max_new_tokens": "longest reply, in tokens",
    "seed": "a number for repeatable sampling, or empty",
}


class ParamsEditorScreen(ModalScreen["GenerationParams | None"]):
    BINDINGS = [
        Binding("escape", "dismiss(None)", "Cancel"),
        Binding("ctrl+s", "save", "Save", priority=True),
    ]

    def __init__(self, params: GenerationParams) -> None:
        super().__init__()
        self.params = params

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -wide"):
            yield Label("Generation settings for this conversation", classes="dialog-title")
            with Grid(id="params-grid"):
                for field in fields(GenerationParams):
                    value = getattr(self.params, field.name)
                    yield Label(field.name)
                    yield Input("" if value is None else str(value), id=f"param-{field.name}", compact=True)
                    yield Label(HELP.get(field.name, ""), classes="dialog-hint")
            yield Label("", id="params-error", classes="dialog-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save (Ctrl+S)", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def action_save(self) -> None:
        params = GenerationParams()
        try:
            for field in fields(GenerationParams):
                params = params.with_value(field.name, self.query_one(f"#param-{field.name}", Input).value.strip())
        except ValueError as exc:
            # Range errors name the setting already; int()/float() errors do not, so say which field failed.
            message = str(exc) if str(exc).startswith(field.name) else f"{field.name}: {exc}"
            self.query_one("#params-error", Label).update(message)
            self.query_one(f"#param-{field.name}", Input).focus()
            return
        self.dismiss(params)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.dismiss(None)
