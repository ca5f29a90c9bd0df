"""End to end: the real `tui-chat` in a real terminal (tmux), on the bundled model, as a user drives it."""

from __future__ import annotations

import os
import re
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
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30)

    def start(self, command: str, env: dict[str, str]) -> None:
        exports = " ".join(f"{key}={value}" for key, value in env.items())
        self.tmux("new-session", "-d", "-s", self.name, "-x", "120", "-y", "40", f"env {exports} {command}")

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
        terminal.type("What is the capital of France?")
        saw_streaming = False
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            screen = terminal.screen()
            saw_streaming |= "generating…" in screen  # the reply's header while it streams
            if re.search(r"smollm2  ·  \d+ tokens", screen):  # the header once the reply is finished
                break
            time.sleep(0.1)
        assert saw_streaming, "the reply should be seen while it streams"
        assert "Paris" in screen, screen

        terminal.keys("C-q")
        deadline = time.monotonic() + 15
        while terminal.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not terminal.alive(), "Ctrl+Q should quit"
    finally:
        terminal.close()

    listing = subprocess.run(
        [str(TUI_CHAT), "--home", str(bundled_home.root), "sessions", "list"],
        capture_output=True, text=True, timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    assert "What is the capital of France?" in listing.stdout
