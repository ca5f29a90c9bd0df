"""`/compare`: two answers to the last prompt side by side, streamed one after the other, and the pick.

The chat screen's worker writes the answers (``ChatCompare``) and posts their text here; this screen shows it and
takes the pick: 1 or 2, n for neither (then the ideal answer), b to hide or show the models, Esc to leave without a
pick (stopping an answer still being written). What a pick means is the chat core's (``Comparison``).
"""

from __future__ import annotations

import threading

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from sessions import one_line

from tui_chat.chat.compare import Comparison, CompareError
from tui_chat.tui.screens.text_editor import TextEditorScreen
from tui_chat.tui.widgets.compare_column import CompareColumn
from tui_chat.tui.worker_messages import CompareAnswered, CompareAnswerStarted, CompareChunk, CompareFailed

KEYS_WHILE_WRITING = "Writing the answers, one after the other…  b: show/hide models · Esc: leave (no pick)"
KEYS_TO_PICK = (
    "Which is better?  1: A · 2: B · n: neither (write the ideal one) · b: show/hide models · Esc: no pick"
)


class CompareScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "leave", "No pick"),
        Binding("1", "pick('a')", "A is better"),
        Binding("2", "pick('b')", "B is better"),
        Binding("n", "neither", "Neither"),
        Binding("b", "toggle_blind", "Blind"),
    ]

    def __init__(self, comparison: Comparison, stop: threading.Event) -> None:
        super().__init__()
        self.comparison = comparison
        self.stop_answers = stop  # set by Esc: the chat's worker stops the answer being written and ends it

    def compose(self) -> ComposeResult:
        comparison = self.comparison
        with Vertical(classes="dialog -compare"):
            yield Label(self._title(), classes="dialog-title", id="compare-title")
            yield Static(Text.assemble(("You: ", "bold"), one_line(comparison.prompt.content, 200)),
                         classes="compare-prompt")
            with Horizontal(id="compare-columns"):
                yield CompareColumn(comparison.label(0), id="answer-a")
                yield CompareColumn(comparison.label(1), id="answer-b")
            yield Label(KEYS_WHILE_WRITING, classes="dialog-hint", id="compare-keys")
            with Horizontal(classes="dialog-buttons"):
                yield Button("A is better (1)", id="pick-a", disabled=True, compact=True)
                yield Button("B is better (2)", id="pick-b", disabled=True, compact=True)
                yield Button("Neither… (n)", id="neither", disabled=True, compact=True)
                yield Button("Leave (Esc)", id="leave", compact=True)

    def _title(self) -> str:
        what = "two samples of one model" if self.comparison.same_model else "two models"
        blind = "blind: the models are hidden until you pick" if self.comparison.blind else "the models are shown"
        return f"Compare two answers ({what}; {blind})"

    def column(self, index: int) -> CompareColumn:
        return self.query_one("#answer-a" if index == 0 else "#answer-b", CompareColumn)

    # ---- what the chat's worker posts ------------------------------------------------------------------------

    def on_compare_answer_started(self, message: CompareAnswerStarted) -> None:
        self.column(message.index).start()

    async def on_compare_chunk(self, message: CompareChunk) -> None:
        text = message.pending.take()
        if text:
            await self.column(message.index).append(text)

    async def on_compare_answered(self, message: CompareAnswered) -> None:
        reply = message.reply
        state = f"{reply.tokens_out or 0} tokens" if reply.status == "complete" else reply.status
        if (reply.tokens_out or 0) >= self.comparison.sides[message.index].params.max_new_tokens:
            state += " (the max_new_tokens limit)"
        await self.column(message.index).finish(reply.content, state)
        if self.comparison.answered:
            self.query_one("#compare-keys", Label).update(KEYS_TO_PICK)
            for button in self.query(".dialog-buttons Button"):
                button.disabled = False  # no pick button takes the focus: an Enter out of habit picks nothing

    async def on_compare_failed(self, message: CompareFailed) -> None:
        column = self.column(message.index)
        await column.finish(column.streamed, "failed")
        self.query_one("#compare-keys", Label).update(f"✗ {message.error}  ·  Esc leaves (no pick)")

    # ---- the pick --------------------------------------------------------------------------------------------

    def action_pick(self, choice: str) -> None:
        try:
            self.comparison.pick(choice)
        except CompareError as exc:
            self.notify(str(exc), severity="warning")
            return
        self.dismiss(None)

    def action_neither(self) -> None:
        if not self.comparison.answered:
            self.notify("Wait for both answers, then pick one (Esc leaves without a pick).", severity="warning")
            return
        first = self.comparison.replies[0]
        editor = TextEditorScreen(
            "Neither: write the ideal answer (both are rated down; empty: no ideal answer)",
            first.content if first is not None else "",
        )
        self.app.push_screen(editor, self._neither_written)

    def _neither_written(self, text: str | None) -> None:
        if text is None:
            return  # the editor was cancelled: back to the two answers
        self.comparison.pick("neither", text)
        self.dismiss(None)

    def action_toggle_blind(self) -> None:
        comparison = self.comparison
        comparison.toggle_blind()
        for index in range(2):
            self.column(index).show(label=comparison.label(index))
        self.query_one("#compare-title", Label).update(self._title())

    def action_leave(self) -> None:
        self.stop_answers.set()
        self.dismiss(None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "neither":
            self.action_neither()
        elif event.button.id == "leave":
            self.action_leave()
        else:
            self.action_pick("a" if event.button.id == "pick-a" else "b")
