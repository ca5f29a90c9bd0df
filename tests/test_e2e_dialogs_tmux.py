"""End to end: every dialog of the chat window, opened and closed from the keyboard in a real terminal (tmux).

Each dialog is closed with Esc and then, where it has one, with its own Cancel button (Shift+Tab to it, Enter) or
close key (F1 for help; export, the model switcher, the runs list and the palette have only Esc); after each close,
typed text must reach the message box, and messages must still be answered. The /train form once left the window
deaf to every key after Esc (it overwrote Textual's ``_closed``) while a Pilot test passed: only a real terminal
showed it.

Then /compare --blind is opened again and an answer picked with 1 (the labels are A and B only until then).

One app session and one model load: 65 s on the 2-core machine at load ~5 (25 s of it converting the bundled model,
shared with the other real-model tests), 2 min at load ~7 (before /compare was added).
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass

import pytest

from .test_e2e_tmux import TUI_CHAT, Terminal

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

ESCAPE_DELAY_S = 0.3  # after Esc: a key sent sooner reaches the app as Alt+key (tmux sends Alt as an Esc prefix)
FINISHED_REPLY = r"smollm2  ·  \d+ tokens"  # the header of a finished reply


@dataclass(frozen=True)
class Dialog:
    name: str
    opens: tuple[str, ...]  # tmux key names; or a slash command, typed and sent
    title: str  # a regex for the dialog on screen
    closes: tuple[str, ...] = ()  # its own way out besides Esc: keys that reach its button, then Enter; or a key
    button: str | None = None  # the button those keys must focus before Enter presses it

    def open(self, terminal: Terminal) -> str:
        if self.opens[0].startswith("/"):
            terminal.type(self.opens[0])
        else:
            terminal.keys(*self.opens)
        return terminal.wait_for(self.title, timeout=60)  # the /train form works out its preview first


DIALOGS = [
    Dialog("the /train form", ("/train",), "Train a model on your conversations", ("BTab",), "Cancel (Esc)"),
    Dialog("export", ("M-x",), r"Export sessions \(the options"),
    Dialog("generation settings", ("M-p",), "Generation settings for this conversation", ("BTab",), "Cancel"),
    Dialog("system prompt", ("M-s",), "System prompt for this conversation", ("BTab",), "Cancel"),
    Dialog("model switcher", ("M-m",), r"Switch model \(now: smollm2\)"),
    Dialog("rename", ("F2",), "Rename this conversation", ("BTab",), "Cancel"),
    Dialog("delete confirm", ("F8",), r"Delete “.+” and its \d+ messages", (), "Cancel (Esc)"),  # Cancel has focus
    Dialog("help", ("F1",), "Keys and commands", ("F1",)),
    Dialog("runs list", ("/runs",), "Training runs"),
    Dialog("command palette", ("C-p",), "Search for commands"),
    # Esc here leaves a comparison without a pick, whether its answers are still being written or not.
    Dialog("compare", ("M-v",), r"Compare two answers", ("BTab",), "Leave (Esc)"),
]


def focused(terminal: Terminal, label: str) -> bool:
    """Whether the button ``label`` is drawn focused (Textual's default focus style is bold reverse)."""
    styled = terminal.tmux("capture-pane", "-e", "-p", "-t", terminal.name).stdout
    for match in re.finditer(r"((?:\x1b\[[0-9;]*m)+) *" + re.escape(label), styled):
        for params in re.findall(r"\x1b\[([0-9;]*)m", match.group(1)):
            codes = iter(params.split(";"))
            for code in codes:
                if code in ("38", "48", "58"):  # a colour: skip its arguments (2;r;g;b or 5;n)
                    for _ in range(3 if next(codes, "") == "2" else 1):
                        next(codes, None)
                elif code == "7":
                    return True
    return False


def close(terminal: Terminal, dialog: Dialog, how: str) -> None:
    if how == "Esc":
        terminal.keys("Escape")
        time.sleep(ESCAPE_DELAY_S)
    elif dialog.button is None:
        terminal.keys(*dialog.closes)
    else:
        terminal.keys(*dialog.closes)
        deadline = time.monotonic() + 10
        while not focused(terminal, dialog.button):
            assert time.monotonic() < deadline, (
                f"{dialog.name}: keys {dialog.closes} should focus its {dialog.button!r} button:\n{terminal.screen()}"
            )
            time.sleep(0.1)
        terminal.keys("Enter")
    try:
        terminal.wait_gone(dialog.title, timeout=10)
    except AssertionError as exc:
        raise AssertionError(f"{dialog.name} did not close with {how}: {exc}") from None


def check_typing(terminal: Terminal, after: str) -> None:
    """Typed text reaches the message box; then it is cleared (Ctrl+U)."""
    text = f"typed after {after}"
    terminal.keys("-l", text)
    deadline = time.monotonic() + 10
    while f"▌ {text}" not in (screen := terminal.screen()):
        assert time.monotonic() < deadline, f"the message box did not take {text!r} within 10 s; the screen:\n{screen}"
        time.sleep(0.1)
    terminal.keys("C-u")
    terminal.wait_gone(re.escape(text), timeout=10)


def ask(terminal: Terminal, question: str, after: str) -> None:
    """Send ``question`` and wait for its answer (one more finished reply on screen)."""
    before = len(re.findall(FINISHED_REPLY, terminal.screen()))
    terminal.type(question)
    deadline = time.monotonic() + 180  # the first one waits for the model to load
    while len(re.findall(FINISHED_REPLY, terminal.screen())) <= before:
        assert time.monotonic() < deadline, f"no answer to a message sent after {after}:\n{terminal.screen()}"
        time.sleep(0.2)


def pick_in_compare(terminal: Terminal) -> None:
    """/compare --blind: the answers are labelled A and B only; 1 picks A, and the pick names the models."""
    terminal.type("/compare --blind")
    screen = terminal.wait_for(r"Which is better\?", timeout=120)
    assert "A  ·" in screen and "B  ·" in screen and "A · smollm2" not in screen, screen
    terminal.keys("1")
    terminal.wait_for(r"You picked A", timeout=10)  # the notification wraps before it names the models
    terminal.wait_gone(r"Which is better\?", timeout=10)


def test_every_dialog_closes_by_keyboard_and_the_window_keeps_working(bundled_home):
    terminal = Terminal("dialogs")
    env = {"TUI_CHAT_HOME": str(bundled_home.root), "TERM": "xterm-256color", "COLORTERM": "truecolor"}
    try:
        started = time.monotonic()
        terminal.start(str(TUI_CHAT), env)
        terminal.wait_for(r"Loading model|Message  \(Enter sends", timeout=30)
        terminal.type("/set max_new_tokens 4")  # short replies: what matters is that an answer comes
        terminal.wait_for(r"max_new_tokens 4", timeout=10)
        ask(terminal, "Hello", "start-up, while the model loaded")  # sent once it is ready; a chat to rename...
        for dialog in DIALOGS:
            for how in ("Esc", "its own close") if dialog.closes or dialog.button else ("Esc",):
                dialog.open(terminal)
                close(terminal, dialog, how)
                check_typing(terminal, f"{dialog.name} closed with {how}")
            if dialog is DIALOGS[0]:
                ask(terminal, "Hi again", f"closing {dialog.name}")
        ask(terminal, "Goodbye", "closing every dialog")
        pick_in_compare(terminal)
        check_typing(terminal, "a pick in /compare")
        print(f"every dialog opened and closed in {time.monotonic() - started:.0f} s")
        terminal.keys("C-q")
        deadline = time.monotonic() + 15
        while terminal.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not terminal.alive(), f"Ctrl+Q should quit:\n{terminal.screen()}"
    finally:
        terminal.close()
