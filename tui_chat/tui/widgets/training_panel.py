"""The training panel above the message box: a row per run the chat follows, and each run's result when it ends.

A running run shows its progress bar, its loss as a sparkline, tokens/s and ETA, and a Cancel button. When it
ends the row says how (the same summary the REPL prints) and, for a finished run, offers to chat with the new model.
A timer polls the runs' logs (``RunWatch``: a file read, no threads). The panel starts and stops nothing: its
buttons post messages (``SwitchModel``, ``CancelRun``) and the screen acts. It hides itself when it has no rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Label, ProgressBar, Sparkline, Static

from sessions import Store, TrainingRun
from trainer.home import DataHome

from tui_chat.training.monitor import RunMonitor, RunWatch
from tui_chat.training.summary import duration, finish_summary

POLL_S = 0.5  # how often the runs' logs are read


class RunRow(Vertical):
    """One run: live progress while it trains (two lines), its summary once it ended."""

    DEFAULT_CSS = """
    RunRow {
        height: auto;
        padding: 0 1;
        & .run-line { height: auto; }
        & .run-name { width: auto; text-style: bold; margin: 0 2 0 0; }
        & .run-progress { width: 1fr; }
        & .run-progress Bar { width: 1fr; }
        & .run-loss { width: 24; height: 1; margin: 0 1 0 0; }
        & .run-stats { width: 1fr; color: $text-muted; }
        & .run-summary { width: 1fr; height: auto; }
        & Button { margin: 0 0 0 1; }
        &.-finished .run-summary { color: $success; }
        &.-failed .run-summary { color: $error; }
        &.-cancelled .run-summary { color: $warning; }
    }
    """

    def __init__(self, monitor: RunMonitor) -> None:
        super().__init__(classes="run-row")
        self.monitor = monitor
        self.run = monitor.run

    def compose(self) -> ComposeResult:
        with Horizontal(classes="run-line"):
            yield Label(self.run.name, classes="run-name")
            yield ProgressBar(total=None, show_eta=False, classes="run-progress")
            yield Button("Cancel", variant="error", compact=True, classes="run-cancel")
        with Horizontal(classes="run-line"):
            yield Sparkline([], classes="run-loss")
            yield Static("", classes="run-stats")

    def on_mount(self) -> None:
        self.show_progress()

    def show_progress(self) -> None:
        progress = self.monitor.progress
        bar = self.query_one(ProgressBar)
        if progress.total:
            bar.update(total=progress.total, progress=progress.step)
        self.query_one(Sparkline).data = progress.losses[-60:]
        parts = [f"step {progress.step}/{progress.total}"] if progress.total else []
        if progress.losses:
            parts.append(f"loss {progress.losses[-1]:.3f}")
        if progress.tokens_per_s:
            parts.append(f"{progress.tokens_per_s:,.0f} tok/s")
        if progress.phase == "training" and progress.eta_s is not None:
            parts.append(f"ETA {duration(progress.eta_s)}")
        elif progress.phase not in ("finished", "stopped"):
            parts.append(f"{progress.phase}…")
        self.query_one(".run-stats", Static).update(" · ".join(parts))

    async def show_end(self, run: TrainingRun) -> None:
        self.run = run
        await self.remove_children()
        widgets = [Static(finish_summary(run), classes="run-summary", markup=False)]
        if run.status == "finished":
            widgets.append(Button("Chat with it", variant="success", compact=True, classes="run-switch"))
        widgets.append(Button("Dismiss", compact=True, classes="run-dismiss"))
        await self.mount(Horizontal(*widgets, classes="run-line"))
        self.add_class(f"-{run.status}")  # last: the row says it ended once its buttons are there


class TrainingPanel(Vertical):
    """Follows the runs started in this window and those still going when it opened."""

    DEFAULT_CSS = """
    TrainingPanel {
        height: auto;
        max-height: 8;
        margin: 0 1;
        background: $panel;
        border-top: hkey $primary 50%;
    }
    """

    @dataclass
    class SwitchModel(Message):
        """The user asked to chat with a finished run."""

        name: str

    @dataclass
    class CancelRun(Message):
        """The user asked to stop a run."""

        run: TrainingRun

    def __init__(self, store: Store, home: DataHome, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.store = store
        self.home = home
        self.run_watch = RunWatch(store)

    def on_mount(self) -> None:
        self.display = False
        for run in self.run_watch.catch_up():
            self.notify(f"While the app was closed: {finish_summary(run)}", markup=False, timeout=15,
                        severity="error" if run.status == "failed" else "information")
        for monitor in self.run_watch.active:
            self._add_row(monitor)
        self.set_interval(POLL_S, self.poll)

    @property
    def rows(self) -> list[RunRow]:
        return list(self.query(RunRow))

    def _add_row(self, monitor: RunMonitor) -> None:
        self.mount(RunRow(monitor))
        self.display = True

    def follow(self, monitor: RunMonitor) -> None:
        """Show and follow a run this window just started."""
        self.run_watch.follow(monitor)
        self._add_row(monitor)

    async def poll(self) -> None:
        ended = {run.id: run for run in self.run_watch.poll()}
        for row in self.rows:
            if row.run.id in ended:
                run = ended[row.run.id]
                self.notify(finish_summary(run), title="Training", timeout=15, markup=False,
                            severity="error" if run.status == "failed" else "information")
                await row.show_end(run)
            elif row.monitor.run.id in self.run_watch.monitors:
                row.show_progress()

    async def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        row = next(node for node in event.button.ancestors if isinstance(node, RunRow))
        if event.button.has_class("run-cancel"):
            self.post_message(self.CancelRun(row.run))
        elif event.button.has_class("run-switch"):
            self.post_message(self.SwitchModel(row.run.name))
            await self._dismiss(row)
        elif event.button.has_class("run-dismiss"):
            await self._dismiss(row)

    async def _dismiss(self, row: RunRow) -> None:
        await row.remove()
        self.display = bool(self.rows)
