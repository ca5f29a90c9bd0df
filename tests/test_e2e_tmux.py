"""End to end: the real `tui-chat` in a real terminal (tmux), on the bundled model, as a user drives it."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

TUI_CHAT = Path(sys.executable).with_name("tui-chat")
STARTUP_LIMIT_S = 5.0  # the window is up well under a second on an idle machine; CI machines may be busy


class Terminal:
    """A tmux session on a private server socket, so tests never touch the user's own tmux."""

    def __init__(self, name: str) -> None:
        self.socket = f"tui-chat-test-{os.getpid()}"
        self.name = name

    def tmux(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30, check=False)

    def start(self, command: str, env: dict[str, str]) -> None:
        """Run ``command`` in a 120x40 pane. COLUMNS and LINES (set by some test runners) would override the
        pane's real size, so they are removed."""
        exports = " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())
        self.tmux(
            "new-session", "-d", "-s", self.name, "-x", "120", "-y", "40",
            f"env -u COLUMNS -u LINES {exports} {shlex.quote(command)}",
        )

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.name).stdout

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", self.name, "-l", text)
        self.tmux("send-keys", "-t", self.name, "Enter")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.name, *keys)

    def alive(self) -> bool:
        return self.tmux("has-session", "-t", self.name).returncode == 0

    def wait_for(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if re.search(pattern, screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not on screen after {timeout} s; the screen:\n{self.screen()}")

    def wait_gone(self, pattern: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while re.search(pattern, self.screen()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} still on screen after {timeout} s:\n{self.screen()}")
            time.sleep(0.1)

    def close(self) -> None:
        self.tmux("kill-server")


def test_ask_the_bundled_model_then_find_the_chat_in_sessions_list(bundled_home):
    terminal = Terminal("chat")
    env = {"TUI_CHAT_HOME": str(bundled_home.root), "TERM": "xterm-256color", "COLORTERM": "truecolor"}
    try:
        started = time.monotonic()
        terminal.start(str(TUI_CHAT), env)
        terminal.wait_for(r"Loading model|Message  \(Enter sends", timeout=30)
        startup_s = time.monotonic() - started
        print(f"window up in {startup_s:.2f} s")
        assert startup_s < STARTUP_LIMIT_S
        terminal.wait_for(r"● smollm2", timeout=90)  # loaded: the status line names the model

        terminal.type("/set temperature 0")  # greedy: the answer is known
        terminal.type("/set max_new_tokens 24")
        terminal.wait_for(r"max_new_tokens 24", timeout=10)  # each command says what it changed...
        terminal.wait_gone(r"This chat now uses", timeout=15)  # ...in a toast that goes after a few seconds
        terminal.type("What is the capital of France?")
        screens = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            screens.append(terminal.screen())
            if re.search(r"smollm2  ·  \d+ tokens", screens[-1]):  # the reply's header once it is finished
                break
            time.sleep(0.05)
        # While it streams, the reply's header says so: seen at least once before the end.
        assert any("generating…" in earlier for earlier in screens[:-1]), "\n---\n".join(screens[-5:])
        # The finished header can be drawn a frame before the reply's last words on a busy machine.
        terminal.wait_for("Paris", timeout=5)

        terminal.keys("C-q")
        deadline = time.monotonic() + 15
        while terminal.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not terminal.alive(), "Ctrl+Q should quit"
    finally:
        terminal.close()

    listing = subprocess.run(
        [str(TUI_CHAT), "--home", str(bundled_home.root), "sessions", "list"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert listing.returncode == 0, listing.stderr
    assert "What is the capital of France?" in listing.stdout
