"""Choose the model: the bundled one, a trained run, or any local path or Hub id typed in."""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option

ModelChoice = tuple[str, str]  # (the spec that loads it, a one-line description)


class ModelPickerScreen(ModalScreen["str | None"]):
    """Returns the chosen spec, or None. ``list_models`` may be slow (it imports torch): it runs in a thread."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, current: str | None, list_models: Callable[[], list[ModelChoice]]) -> None:
        super().__init__()
        self.current = current
        self.list_models = list_models

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -wide"):
            yield Label(f"Switch model (now: {self.current or 'none'})", classes="dialog-title")
            yield Input(placeholder="a path, a run name or a Hub id (e.g. HuggingFaceTB/SmolLM2-360M-Instruct)", id="spec")
            yield Label("Enter loads what you typed; or pick a model below (local ones, then your endpoints').", classes="dialog-hint")
            yield OptionList(Option(Text("looking for local models…", style="dim"), disabled=True), id="models")
            yield Label("", id="models-error", classes="dialog-error")

    def on_mount(self) -> None:
        self.query_one("#spec", Input).focus()
        self.find_models()

    @work(thread=True, exclusive=True, group="model-list")
    def find_models(self) -> None:
        try:
            choices = self.list_models()
        except Exception as exc:  # shown in the dialog; typing a spec still works
            self.app.call_from_thread(self.query_one("#models-error", Label).update, f"{type(exc).__name__}: {exc}")
            return
        self.app.call_from_thread(self._show_models, choices)

    def _show_models(self, choices: list[ModelChoice]) -> None:
        models = self.query_one("#models", OptionList)
        options = []
        for spec, description in choices:
            prompt = Text(spec, style="bold")
            if spec == self.current:
                prompt.append("  (in use)", style="green")
            prompt.append(f"\n{description}", style="dim")
            options.append(Option(prompt, id=spec))
        models.set_options(options or [Option(Text("no local models yet", style="dim"), disabled=True)])

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.value.strip():
            self.dismiss(event.value.strip())

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id)
