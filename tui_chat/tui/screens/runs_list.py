"""`/runs`: every training run with its status and result; Enter on a finished run chats with it."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from sessions import TrainingRun

from tui_chat.training.monitor import RunProgress
from tui_chat.training.summary import run_line

RunEntry = tuple[TrainingRun, "RunProgress | None"]  # a run, and its live progress when the chat follows it


class RunsScreen(ModalScreen["str | None"]):
    """Returns the name of the finished run to chat with, or None."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Close")]

    def __init__(self, runs: list[RunEntry]) -> None:
        super().__init__()
        self.runs = runs

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -wide"):
            yield Label("Training runs", classes="dialog-title")
            options = []
            for run, progress in self.runs:
                style = {"finished": "green", "failed": "red", "cancelled": "yellow"}.get(run.status, "")
                options.append(Option(Text(run_line(run, progress), style=style), id=run.name,
                                      disabled=run.status != "finished"))
            yield OptionList(*(options or [Option(Text("no runs yet: /train starts one", style="dim"),
                                                  disabled=True)]), id="runs")
            yield Label("Enter on a finished run chats with it · the panel's Cancel (or /runs cancel) stops a run · "
                        "`tui-chat models show NAME` shows its lineage", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one("#runs", OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id)
