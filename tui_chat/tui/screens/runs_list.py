"""`/runs`: every training run with its status and result; Enter on a finished run chats with it, d deletes a run's
model folder (after asking)."""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from sessions import Store, TrainingRun
from trainer.home import DataHome

from tui_chat.training.errors import TrainingError
from tui_chat.training.monitor import RunProgress
from tui_chat.training.run_folder import RunFolder, delete_run, run_to_delete
from tui_chat.training.summary import run_line
from tui_chat.tui.screens.confirm import ConfirmScreen

RunEntry = tuple[TrainingRun, "RunProgress | None"]  # a run, and its live progress when the chat follows it
STATUS_STYLES = {"finished": "green", "failed": "red", "cancelled": "yellow", "deleted": "dim"}


class RunsScreen(ModalScreen["str | None"]):
    """Returns the name of the finished run to chat with, or None."""

    BINDINGS = [
        Binding("escape", "dismiss(None)", "Close"),
        Binding("d,delete", "delete_run", "Delete"),
    ]

    def __init__(self, runs: list[RunEntry], store: Store, home: DataHome) -> None:
        super().__init__()
        self.runs = {run.name: (run, progress) for run, progress in runs}
        self.store = store
        self.home = home

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -wide"):
            yield Label("Training runs", classes="dialog-title")
            options = [self._option(run, progress) for run, progress in self.runs.values()]
            yield OptionList(*(options or [Option(Text("no runs yet: /train starts one", style="dim"),
                                                  disabled=True)]), id="runs")
            yield Label("Enter on a finished run chats with it · d deletes a run's model folder · the panel's Cancel "
                        "(or /runs cancel) stops a run · `tui-chat models show NAME` shows its lineage",
                        classes="dialog-hint")

    @staticmethod
    def _option(run: TrainingRun, progress: RunProgress | None) -> Option:
        return Option(Text(run_line(run, progress), style=STATUS_STYLES.get(run.status, "")), id=run.name)

    def on_mount(self) -> None:
        self.query_one("#runs", OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        run, _ = self.runs[event.option.id]
        if run.status == "finished":
            self.dismiss(run.name)
        else:
            self.notify(f"{run.name} is {run.status}: only a finished run has a model to chat with",
                        severity="warning")

    def action_delete_run(self) -> None:
        """Ask, then delete the highlighted run's model folder; a run still training is refused at once."""
        runs = self.query_one("#runs", OptionList)
        if runs.highlighted is None or not self.runs:
            return
        name = runs.get_option_at_index(runs.highlighted).id
        try:
            target = run_to_delete(self.store, self.home, name)
        except TrainingError as exc:
            self.notify(str(exc), severity="warning")
            return
        if target.path is None:
            question = f"Mark run {name} as deleted? Its folder is already gone."
        else:
            question = f"Delete run {name}'s model folder ({target.size_text})? Its record and lineage stay."

        def answered(yes: bool | None) -> None:
            if yes:
                self.delete(target)

        self.app.push_screen(ConfirmScreen(question, yes="Delete"), answered)

    @work(thread=True, exclusive=True, group="delete-run")
    def delete(self, target: RunFolder) -> None:
        """Delete in a thread: a model folder is hundreds of MB."""
        try:
            delete_run(self.store, target)
        except TrainingError as exc:
            self.app.call_from_thread(self.notify, str(exc), severity="error")
            return
        run = self.store.get_training_run(target.name) if target.run is not None else None
        self.app.call_from_thread(self._deleted, target, run)

    def _deleted(self, target: RunFolder, run: TrainingRun | None) -> None:
        runs = self.query_one("#runs", OptionList)
        if run is not None:
            self.runs[run.name] = (run, None)
            runs.replace_option_prompt(run.name, self._option(run, None).prompt)
        freed = f": {target.size_text} freed" if target.path is not None else ""
        self.notify(f"deleted {target.name}'s model folder{freed}")
