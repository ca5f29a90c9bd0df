"""End to end, "make it yours": chat with the bundled model in the real `tui-chat` (tmux), rate a reply, `/train`
in the background, watch it finish, switch to the new model and ask again; then the lineage from the CLI.

A real model loads twice and really trains (one optimizer step): 75 s on the 2-core machine at load ~3, 2.5 min at
load ~9."""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest

from .test_e2e_tmux import TUI_CHAT, Terminal

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

RUN_NAME = r"smollm2-sft-\d{8}-\d{6}(?:-\d+)?"
QUESTIONS = ["What is the capital of France?", "Name a primary colour.", "How many legs does a spider have?",
             "What is 2 + 2?", "Who wrote Hamlet?"]


def new_greedy_chat(terminal: Terminal) -> None:
    """A new chat (settings belong to a chat) with greedy, short replies."""
    terminal.type("/new")
    terminal.wait_gone(r"  ·  \d+ tokens", timeout=10)  # the last chat's replies are off the screen
    terminal.type("/set temperature 0")
    terminal.type("/set max_new_tokens 16")
    terminal.wait_for(r"max_new_tokens 16", timeout=10)


def ask(terminal: Terminal, question: str, model: str, replies_before: int) -> str:
    """Send ``question`` and wait for the reply's finished header (``MODEL  ·  N tokens``)."""
    terminal.type(question)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        screen = terminal.screen()
        if len(re.findall(rf"{re.escape(model)}  ·  \d+ tokens", screen)) > replies_before:
            return screen
        time.sleep(0.2)
    raise AssertionError(f"no reply from {model} after 120 s:\n{terminal.screen()}")


def test_chat_rate_train_switch_and_ask_again(bundled_home):
    terminal = Terminal("train")
    env = {"TUI_CHAT_HOME": str(bundled_home.root), "TERM": "xterm-256color", "COLORTERM": "truecolor"}
    try:
        terminal.start(str(TUI_CHAT), env)
        terminal.wait_for(r"● smollm2", timeout=120)
        # Five short chats: the trainer holds one out to measure the run (before -> after).
        for question in QUESTIONS:
            new_greedy_chat(terminal)
            ask(terminal, question, "smollm2", 0)
        terminal.type("/rate +")
        terminal.wait_for(r"Rated the reply up", timeout=10)

        started = time.monotonic()
        # One step, no replay and no evaluation: the quickest real run (~40 s here); with the defaults the first
        # run per base model also has it answer the replay and retention prompts (~3 min on this machine).
        terminal.type("/train --yes --max-steps 1 --no-replay --no-eval")
        screen = terminal.wait_for(rf"{RUN_NAME} .*Cancel", timeout=60)  # the panel's row
        name = re.search(RUN_NAME, screen).group(0)
        screen = terminal.wait_for(rf"{name} finished in", timeout=300)
        print(f"trained {name} in {time.monotonic() - started:.0f} s")
        assert "Chat with it" in screen

        terminal.type(f"/model {name}")
        terminal.wait_for(rf"● {name}", timeout=120)
        new_greedy_chat(terminal)
        screen = ask(terminal, "What is the capital of France?", name, 0)
        assert re.search(rf"{name}  ·  \d+ tokens", screen)
        terminal.keys("C-q")
    finally:
        terminal.close()

    shown = subprocess.run([str(TUI_CHAT), "--home", str(bundled_home.root), "models", "show", name],
                           capture_output=True, text=True, timeout=120, check=False)
    assert shown.returncode == 0, shown.stderr
    assert f"{name} finished in" in shown.stdout
    assert "Trained on 5 conversations:" in shown.stdout and "What is the capital of France?" in shown.stdout
    assert f"Replies written by {name}:" in shown.stdout
    listing = subprocess.run([str(TUI_CHAT), "--home", str(bundled_home.root), "models"],
                             capture_output=True, text=True, timeout=120, check=False)
    assert f"{name}  run  finished  from smollm2" in listing.stdout, listing.stdout
