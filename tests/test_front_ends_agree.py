"""The chat window and the REPL carry out the same commands the same way: one script, two stores, the same rows.

Both front ends drive the one chat core, so a rule cannot differ between them. This test is the proof: it types
the same messages and slash commands into the window (Pilot) and into the REPL (pipe input), each on its own
in-memory store and fake model, and compares what the two databases hold afterwards. (Before the core, the window
saved `/correct -` as the ideal answer "-" while the REPL cleared it, and the next export trained on "-".)
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from sessions import Store, memory_database
from trainer.home import DataHome
from tui_chat.chat.session import ChatSession
from tui_chat.repl.app import Repl

from .fakes import FakeEngine
from .tui_helpers import SIZE, build_app, idle, ready, send

REPLIES = ["Paris.", "It is Paris.", "Madrid.", "Lisbon.", "Rome."]
SCRIPT = [
    "What is the capital of France?",
    "/rate +",
    "/correct Paris is the capital of France.",
    "/retry",
    "/rate down",
    "/correct A wrong answer, kept for a moment.",
    "/correct -",
    "/system You are terse.",
    "/set temperature 0.3",
    "/set top_k 7",
    "/edit What is the capital of Spain?",
    "/rate 0",
    "And of Portugal?",
    "/correct Lisbon is the capital of Portugal.",
    "/exclude on",
    "/exclude",
    "/exclude on",
]
MODEL = "default"  # both front ends open the bundled model's alias; the fake engine stands in for it


def rows(store: Store) -> dict:
    """Everything a user taught or said, without ids and timings (which differ run to run)."""
    (conversation,) = store.list_conversations()
    messages = store.messages(conversation.id)
    place = {message.id: index for index, message in enumerate(messages)}
    return {
        "conversation": (conversation.title, conversation.model, conversation.system_prompt, conversation.params,
                         conversation.exclude_from_training, place.get(conversation.tip_id)),
        "messages": [
            (m.role, m.content, place.get(m.parent_id), m.model, m.params, m.status, m.tokens_out, m.rating,
             m.correction)
            for m in messages
        ],
    }


def run_in_the_repl(home: DataHome) -> Store:
    store = Store(memory_database())
    session = ChatSession(store, lambda spec: FakeEngine(list(REPLIES), name=spec), model=MODEL)
    console = Console(file=io.StringIO(), width=100)
    with create_pipe_input() as pipe:
        pipe.send_text("".join(line + "\r" for line in SCRIPT) + "\x04")
        Repl(session, home, console, prompt_input=pipe, prompt_output=DummyOutput()).run()
    assert "error" not in console.file.getvalue(), console.file.getvalue()
    return store


async def run_in_the_window(home: DataHome) -> Store:
    store = Store(memory_database())
    app = build_app(FakeEngine(list(REPLIES), name=MODEL), home=home, store=store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        for line in SCRIPT:
            await send(pilot, line)
            await idle(pilot)
            assert screen.prompt.text == "", f"the window refused {line!r}"
    return store


async def test_the_window_and_the_repl_leave_the_same_rows(tmp_path: Path):
    window = rows(await run_in_the_window(DataHome(tmp_path / "window")))
    # prompt-toolkit runs its own event loop: the REPL gets a thread of its own, as it would a process.
    repl = rows(await asyncio.to_thread(run_in_the_repl, DataHome(tmp_path / "repl")))
    assert window == repl
    # And the rows are the ones the script means (so two identical mistakes would not pass either).
    conversation, messages = repl["conversation"], repl["messages"]
    assert conversation[1:5] == ("smollm2", "You are terse.", {**conversation[3], "temperature": 0.3, "top_k": 7},
                                 True)
    replies = [m for m in messages if m[0] == "assistant"]
    assert [(content, rating, correction) for _, content, _, _, _, _, _, rating, correction in replies] == [
        ("Paris.", 1, "Paris is the capital of France."),
        ("It is Paris.", -1, None),  # corrected, then `/correct -` cleared it
        ("Madrid.", 0, None),
        ("Lisbon.", 0, "Lisbon is the capital of Portugal."),
    ]
    assert [m[1] for m in messages if m[0] == "user"] == [
        "What is the capital of France?", "What is the capital of Spain?", "And of Portugal?"
    ]


def test_every_action_has_a_handler_in_both_front_ends():
    from typing import get_args

    from tui_chat.chat.commands import COMMANDS, Action
    from tui_chat.repl.commands import ReplCommands
    from tui_chat.tui.screens.chat_commands import ChatCommands

    for front_end in (ReplCommands, ChatCommands):
        dispatcher = front_end.__dict__["run"].dispatcher
        fallback = dispatcher.dispatch(object)
        missing = [action.__name__ for action in get_args(Action) if dispatcher.dispatch(action) is fallback]
        assert missing == [], f"{front_end.__name__} cannot carry out {missing}"
    assert len(get_args(Action)) == len(COMMANDS)  # one action a command
