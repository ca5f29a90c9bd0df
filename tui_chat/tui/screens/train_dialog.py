"""The `/train` form: base model, method, epochs, steps, learning rate and any other trainer option, with the
preview of what the run would train on, how, and for how long. Returns the plan to start, or None.

The preview (an export and a tokenizer pass) runs in a thread worker; changing a field asks for a new preview before
Start is offered again, so what starts is always what was shown. Previews that are replaced or cancelled are
discarded (their pending snapshot is deleted).
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Collapsible, Input, Label, Select, Static

from sessions import Store, StoreError
from trainer.home import DataHome

from tui_chat.chat.commands import CommandError

if TYPE_CHECKING:
    from tui_chat.training.plan import TrainingPlan

METHODS = [("automatic (LoRA on CPU, full on GPU)", "auto"), ("LoRA", "lora"), ("full fine-tune", "full")]
# The form's own fields, as `/train` options; everything else stays in "More options".
FIELDS = {"base": "--base", "method": "--method", "epochs": "--epochs", "max_steps": "--max-steps", "lr": "--lr"}


def _split_form_options(argv: list[str]) -> tuple[dict[str, str], str]:
    """(the form fields' values, the other options as one line) from `/train` arguments."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for name, flag in FIELDS.items():
        parser.add_argument(flag, dest=name)
    known, rest = parser.parse_known_args(argv)
    return {name: value for name, value in vars(known).items() if value is not None}, shlex.join(rest)


class TrainDialogScreen(ModalScreen["TrainingPlan | None"]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    #train-form {
        grid-size: 2;
        grid-columns: 16 1fr;
        grid-rows: 1;
        grid-gutter: 1 1;
        height: auto;
    }
    #train-preview-box { height: 1fr; margin: 1 0 0 0; }
    #train-help { color: $text-muted; }
    """

    @dataclass
    class Previewed(Message):
        number: int  # which preview request this answers (older ones are dropped)
        plan: "TrainingPlan | None"
        error: str | None

    def __init__(
        self, store: Store, home: DataHome, current_model: str, argv: list[str], plan: "TrainingPlan | None" = None,
        *, show_options: bool = False,
    ) -> None:
        super().__init__()
        self.store = store
        self.home = home
        self.current_model = current_model
        self.values, self.more = _split_form_options(argv)
        self.plan = plan
        self.show_options = show_options
        self._request = 0
        self._dismissed = False
        self._shown_argv: list[str] | None = None  # the form as it was when the preview shown was asked for

    def compose(self) -> ComposeResult:
        values = self.values
        with Vertical(classes="dialog -wide -tall"):
            yield Label("Train a model on your conversations", classes="dialog-title")
            with Grid(id="train-form"):
                yield Label("Base model")
                yield Input(values.get("base", self.current_model), id="train-base", compact=True)
                yield Label("Method")
                yield Select(METHODS, value=values.get("method", "auto"), allow_blank=False, id="train-method",
                             compact=True)
                yield Label("Epochs")
                # Until the preview says how many: the trainer picks them by dataset size (see _show).
                yield Input(values.get("epochs", ""), placeholder="(chosen for your data)", type="number",
                            id="train-epochs", compact=True)
                yield Label("Max steps")
                yield Input(values.get("max_steps", ""), placeholder="(from the epochs)", type="integer",
                            id="train-max-steps", compact=True)
                yield Label("Learning rate")
                yield Input(values.get("lr", ""), placeholder="(the method's default)", id="train-lr", compact=True)
                yield Label("More options")
                yield Input(self.more, placeholder="any trainer option, e.g. --lora-r 8 (listed below)",
                            id="train-more", compact=True)
            with VerticalScroll(id="train-preview-box"):
                yield Static("Working out the preview…", id="train-preview", markup=False)
                with Collapsible(title="Every option", collapsed=not self.show_options, id="train-options"):
                    yield Static("", id="train-help", markup=False)
            yield Label("", id="train-error", classes="dialog-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Update preview", id="train-refresh")
                yield Button("Start training", variant="primary", id="train-start", disabled=True)
                yield Button("Cancel (Esc)", id="train-cancel")

    def on_mount(self) -> None:
        self.load_help()
        if self.plan is not None:
            self._shown_argv = self.argv()
            self._show(self.plan)
        else:
            self.refresh_preview()

    @work(thread=True, group="train-help")
    def load_help(self) -> None:
        from tui_chat.training.options import train_help

        text = train_help()
        self.app.call_from_thread(self.query_one("#train-help", Static).update, text)

    # ---- the form --------------------------------------------------------------------------------------------

    def argv(self) -> list[str]:
        """The form as `/train` arguments; CommandError for "More options" that do not split."""
        argv = []
        base = self.query_one("#train-base", Input).value.strip()
        if base:
            argv += ["--base", base]
        method = self.query_one("#train-method", Select).value
        if method in ("lora", "full"):
            argv += ["--method", str(method)]
        for flag, field_id in (("--epochs", "#train-epochs"), ("--max-steps", "#train-max-steps"),
                               ("--lr", "#train-lr")):
            value = self.query_one(field_id, Input).value.strip()
            if value:
                argv += [flag, value]
        try:
            return argv + shlex.split(self.query_one("#train-more", Input).value)
        except ValueError as exc:
            raise CommandError(f"More options: {exc}") from None

    def on_input_changed(self, event: Input.Changed) -> None:
        self._stale()

    def on_select_changed(self, event: Select.Changed) -> None:
        self._stale()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.refresh_preview()

    def _stale(self) -> None:
        """Offer Start only while the form still says what the preview shows (fields also report their initial
        values once mounted)."""
        if self.plan is None or not self.is_mounted:
            return
        try:
            same = self.argv() == self._shown_argv
        except CommandError:
            same = False
        self.query_one("#train-start", Button).disabled = not same
        self.query_one("#train-error", Label).update(
            "" if same else "Changed: press Update preview (or Enter) to see the run."
        )

    # ---- the preview -----------------------------------------------------------------------------------------

    def refresh_preview(self) -> None:
        try:
            argv = self.argv()
        except CommandError as exc:
            self.query_one("#train-error", Label).update(str(exc))
            return
        self._request += 1
        self._shown_argv = argv
        self.query_one("#train-start", Button).disabled = True
        self.query_one("#train-error", Label).update("")
        self.query_one("#train-preview", Static).update("Working out the preview…")
        self.preview(self._request, argv)

    @work(thread=True, group="train-preview")
    def preview(self, number: int, argv: list[str]) -> None:
        from tui_chat.training.plan import plan_training

        try:
            plan = plan_training(self.store, self.home, argv, current_model=self.current_model)
        except (CommandError, StoreError) as exc:
            self.post_message(self.Previewed(number, None, str(exc)))
            return
        if self._dismissed:
            plan.discard()  # the form closed while this preview was being worked out
            return
        self.post_message(self.Previewed(number, plan, None))

    def on_train_dialog_screen_previewed(self, message: Previewed) -> None:
        if message.number != self._request or self._dismissed:
            if message.plan is not None:
                message.plan.discard()
            return
        if message.plan is None:
            self.query_one("#train-preview", Static).update("")
            self.query_one("#train-error", Label).update(message.error or "")
            return
        if self.plan is not None:
            self.plan.discard()
        self._show(message.plan)

    def _show(self, plan: "TrainingPlan") -> None:
        self.plan = plan
        self.query_one("#train-preview", Static).update("\n".join(plan.preview_lines()))
        # A blank field shows what the run will do, in the preview's words: the same number from the same plan.
        reason = f" ({plan.epochs_reason})" if plan.epochs_reason else ""
        self.query_one("#train-epochs", Input).placeholder = f"{plan.epochs:.3g}{reason}"
        self._stale()

    # ---- leaving ---------------------------------------------------------------------------------------------

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "train-refresh":
            self.refresh_preview()
        elif event.button.id == "train-start" and self.plan is not None:
            self._dismissed = True
            self.dismiss(self.plan)
        elif event.button.id == "train-cancel":
            self.action_cancel()

    def action_cancel(self) -> None:
        self._dismissed = True
        if self.plan is not None:
            self.plan.discard()
        self.dismiss(None)
