"""`/train` in the chat window, as a part of ChatScreen: work out the preview, show the form, start and stop runs.

The preview (an export and a tokenizer pass) is worked out in a thread worker, which posts it back; the training
panel only shows the runs the screen starts or finds running, and posts what its buttons ask for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from textual import work
from textual.message import Message

from sessions import StoreError, TrainingRun

from tui_chat.chat.commands import CommandError
from tui_chat.tui.screens.train_dialog import TrainDialogScreen
from tui_chat.tui.widgets.training_panel import TrainingPanel

if TYPE_CHECKING:
    from tui_chat.training.plan import TrainingPlan
    from tui_chat.tui.screens.chat import ChatScreen

    _Base = ChatScreen
else:
    _Base = object


@dataclass
class TrainingPlanned(Message):
    """A preview is ready (from the worker)."""

    plan: TrainingPlan
    argv: list[str]
    current_model: str


@dataclass
class TrainingPlanFailed(Message):
    error: str


class ChatTraining(_Base):
    """Starting and stopping training runs from the chat window; mixed into ChatScreen."""

    @property
    def current_model(self) -> str:
        """The model a new `/train` starts from: the one in use, else the one loading or remembered."""
        return self.engine.name if self.engine else self.loading_model or self.state.model or "default"

    def train(self, argv: Sequence[str]) -> None:
        """`/train ARGS`: the form at once, its preview worked out while it shows (`--help`: every option listed);
        with --yes no form: the run starts once its plan is worked out."""
        from tui_chat.training.options import parse_train_options

        wanted_help = "-h" in argv or "--help" in argv
        argv = [a for a in argv if a not in ("-h", "--help")]
        try:
            yes = not wanted_help and parse_train_options(argv).yes
        except CommandError as exc:
            self.notify(str(exc), title="Training not started", severity="error", timeout=10)
            return
        if yes:
            self.notify("Exporting a snapshot of your conversations and counting tokens…")
            self.plan_training(argv, self.current_model)
        else:
            self._open_training_form(argv, self.current_model, None, show_options=wanted_help)

    @work(thread=True, exclusive=True, group="train-plan")
    def plan_training(self, argv: list[str], current_model: str) -> None:
        from tui_chat.training.plan import plan_training

        try:
            plan = plan_training(self.store, self.home, argv, current_model=current_model)
        except (CommandError, StoreError) as exc:
            self.post_message(TrainingPlanFailed(str(exc)))
        except Exception as exc:  # logged with its traceback, shown as one line
            self.post_message(TrainingPlanFailed(self.describe_error(exc)))
        else:
            self.post_message(TrainingPlanned(plan, argv, current_model))

    def on_training_planned(self, message: TrainingPlanned) -> None:
        if message.plan.options.yes:
            self.start_training(message.plan)
        else:
            self._open_training_form(message.argv, message.current_model, message.plan)

    def on_training_plan_failed(self, message: TrainingPlanFailed) -> None:
        self.notify(message.error, title="Training not started", severity="error", timeout=10)

    def _open_training_form(
        self, argv: list[str], current_model: str, plan: TrainingPlan | None, show_options: bool = False
    ) -> None:
        form = TrainDialogScreen(self.store, self.home, current_model, argv, plan, show_options=show_options)
        self.app.push_screen(form, self.start_training)

    def start_training(self, plan: TrainingPlan | None) -> None:
        """Launch a previewed run (None: the form was cancelled)."""
        if plan is None:
            return
        from tui_chat.training.launch import start_training

        try:
            monitor = start_training(self.store, self.home, plan)
        except (CommandError, StoreError) as exc:
            self.notify(str(exc), title="Training not started", severity="error", timeout=10)
            return
        self.training.follow(monitor)
        self.notify(f"Training {monitor.name} in the background: keep chatting. Log: {monitor.log_path}",
                    title="Training")

    def cancel_run(self, run: TrainingRun) -> None:
        from tui_chat.training.launch import cancel_run

        try:
            run = cancel_run(self.store, run)
        except (CommandError, StoreError) as exc:
            self.notify(str(exc), severity="error")
            return
        self.notify(f"Stopping {run.name}: it finishes its step and saves a checkpoint (Cancel again stops it at "
                    "once).")

    def on_training_panel_cancel_run(self, message: TrainingPanel.CancelRun) -> None:
        self.cancel_run(message.run)

    def on_training_panel_switch_model(self, message: TrainingPanel.SwitchModel) -> None:
        self.switch_model(message.name)
