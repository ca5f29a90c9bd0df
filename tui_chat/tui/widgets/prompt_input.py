"""The message box: multi-line, Enter sends, Shift+Enter or Ctrl+J adds a line."""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.message import Message
from textual.widgets import TextArea

from tui_chat.tui.widgets.command_hints import completion

# Terminals send Ctrl+J as a bare line feed; Textual names it "ctrl+j" (alias "newline"). Shift+Enter arrives as
# its own key only where the terminal reports it (kitty keyboard protocol); Ctrl+J works everywhere.
NEWLINE_KEYS = ("shift+enter", "ctrl+j", "newline")


class PromptInput(TextArea):
    """Where the user writes. Enter takes the text out of the box at once and posts ``PromptInput.Submitted``;
    Tab completes a slash command's name.

    Emptying the box in the key handler, not later in the screen's handler, matters: keys typed right after Enter
    (a fast typist, a paste, tmux send-keys) reach the box before the screen has handled the message, and clearing
    then would wipe them. The screen hands the text back with ``restore`` when it could not use it.
    """

    @dataclass
    class Submitted(Message):
        prompt_input: PromptInput
        text: str

        @property
        def control(self) -> PromptInput:
            return self.prompt_input

    def __init__(self, *, placeholder: str = "", id: str | None = None) -> None:
        super().__init__(soft_wrap=True, tab_behavior="focus", placeholder=placeholder, id=id, compact=True)

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.submit()
            return
        if event.key == "tab" and (completed := completion(self.text)) is not None:
            event.stop()
            event.prevent_default()
            self.load_text(completed)
            self.move_cursor(self.document.end)
            return
        if event.key in NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        await super()._on_key(event)

    def submit(self) -> None:
        """What Enter does: take the text (unless blank) out of the box and post it."""
        text = self.text
        if text.strip():
            self.clear()
            self.post_message(self.Submitted(self, text))

    def restore(self, text: str) -> None:
        """Put back a message that could not be sent (or a command to fix), unless the user is typing a new one."""
        if not self.text:
            self.load_text(text)
            self.move_cursor(self.document.end)
