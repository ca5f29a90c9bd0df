"""The REPL at the terminal: Ctrl+C stops a reply without echoing ^C, plain lines without a terminal, the `repl`
command's options, and replies streamed as Markdown a finished line at a time."""


from __future__ import annotations

import io
import os
import select
import signal
import sys
import termios
import threading
import time
from typing import IO, Iterator

import pytest
from click.testing import CliRunner
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from sessions import Store, memory_database
from tests.fakes import FakeEngine
from trainer.home import DataHome
from tui_chat.repl import markdown_stream
from tui_chat.chat.session import ChatSession
from tui_chat.cli import CliContext, main
from tui_chat.repl.markdown_stream import MarkdownStream
from tui_chat.repl.app import Repl
from tui_chat.repl.terminal_echo import control_keys_unechoed, terminal_fd

from .repl_helpers import ESC_ENTER, Harness, chat, home  # noqa: F401  (chat, home: fixtures)


def _once_streaming(store: Store, action) -> threading.Thread:
    """A thread that runs ``action`` as soon as the first reply has text in the store (mid-stream)."""

    def watch() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            messages = store.messages(1) if store.count_conversations() else []
            if len(messages) > 1 and messages[1].content:
                action()
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    return watcher


def test_ctrl_c_stops_the_reply_keeps_it_as_stopped_and_stays_in_the_repl(home: DataHome) -> None:
    chat = Harness(home, replies=[" ".join(f"word{i}" for i in range(400)), "next reply"], delay_s=0.01)
    presser = _once_streaming(chat.store, lambda: os.kill(os.getpid(), signal.SIGINT))  # the terminal's Ctrl+C
    output = chat.run("tell me everything\rthanks\r")
    presser.join()
    stopped = chat.store.messages(1)[1]
    assert stopped.status == "stopped" and stopped.content.startswith("word0 word1")
    assert len(stopped.content.split()) < 400
    assert "stopped (the partial reply is kept)" in output
    assert chat.branch()[-1].content == "next reply"  # still in the REPL: the next message was answered
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.fixture
def terminal() -> Iterator[tuple[int, IO[str]]]:
    """A pseudo-terminal: the fd its keyboard writes to and reads echoes from, and the terminal as a file."""
    keyboard, slave = os.openpty()
    with os.fdopen(slave, "r") as tty:
        yield keyboard, tty
    os.close(keyboard)


def test_control_keys_unechoed_turns_echoctl_off_and_restores_every_setting(terminal) -> None:
    _, tty = terminal
    before = termios.tcgetattr(tty.fileno())
    assert before[3] & termios.ECHOCTL  # a new terminal echoes Ctrl+C as ^C
    with pytest.raises(KeyboardInterrupt), control_keys_unechoed(tty):
        inside = termios.tcgetattr(tty.fileno())
        raise KeyboardInterrupt
    assert not inside[3] & termios.ECHOCTL
    assert inside[3] | termios.ECHOCTL == before[3] and inside[:3] == before[:3]  # Ctrl+C still interrupts (ISIG)
    assert termios.tcgetattr(tty.fileno()) == before


def test_control_keys_unechoed_leaves_what_is_not_a_terminal_alone() -> None:
    read_end, write_end = os.pipe()  # tcgetattr on a pipe would raise: passing shows it is not touched
    with os.fdopen(read_end) as pipe, os.fdopen(write_end, "w"):
        for stream in (pipe, io.StringIO(), sys.stdin):  # sys.stdin: pytest's, which has no fileno
            with control_keys_unechoed(stream):
                assert terminal_fd(stream) is None


class CtrlCPresser(FakeEngine):
    """Presses Ctrl+C on a terminal after the first word of its reply, keeps what the terminal echoed, and stops
    (no process has that terminal, so the key sends no SIGINT: the engine does what the REPL's handler would)."""

    def __init__(self, reply: str, keyboard: int) -> None:
        super().__init__([reply])
        self.keyboard = keyboard
        self.echo = b""

    def stream(self, messages, params, stop=None):
        for index, chunk in enumerate(super().stream(messages, params, stop)):
            yield chunk
            if index == 0:
                os.write(self.keyboard, b"\x03")
                while select.select([self.keyboard], [], [], 0.5)[0]:
                    self.echo += os.read(self.keyboard, 100)
                stop.set()


def test_ctrl_c_while_a_reply_streams_is_not_echoed_as_caret_c(home: DataHome, terminal) -> None:
    keyboard, tty = terminal
    engine = CtrlCPresser(" ".join(f"word{i}" for i in range(50)), keyboard)
    session = ChatSession(Store(memory_database()), lambda spec: engine)
    console = Console(file=io.StringIO(), width=100)
    with create_pipe_input() as pipe:
        pipe.send_text("go\r\x04")
        Repl(session, home, console, input_file=tty, prompt_input=pipe, prompt_output=DummyOutput()).run()
    assert engine.echo == b"\x03"  # the key reached the terminal, which echoed it raw: nothing shows on screen
    assert b"^C" not in engine.echo
    assert termios.tcgetattr(tty.fileno())[3] & termios.ECHOCTL  # back as it was once the reply ended
    output = console.file.getvalue()
    assert "word0" in output and "stopped (the partial reply is kept)" in output


def test_setting_the_stop_event_stops_a_reply(home: DataHome) -> None:
    chat = Harness(home, replies=[" ".join(["tok"] * 500)], delay_s=0.01)
    stopper = _once_streaming(chat.store, chat.session.stop.set)
    chat.run("go\r")
    stopper.join()
    reply = chat.branch()[-1]
    assert reply.status == "stopped" and 0 < len(reply.content.split()) < 500


def test_an_engine_error_mid_reply_is_one_line_and_marks_the_reply_failed(chat: Harness) -> None:
    chat.run("hello\r")
    chat.engine.fail_with = "the model ran out of memory; use a smaller --max-tokens"
    output = chat.run("again\r")
    assert output.strip().splitlines()[-1] == "error: the model ran out of memory; use a smaller --max-tokens"
    assert chat.branch()[-1].status == "failed"


def test_without_a_terminal_it_reads_lines_and_prints_plain_text(home: DataHome) -> None:
    chat = Harness(home, replies=["Some **bold** reply"])
    chat.console = Console(file=io.StringIO(), no_color=True, soft_wrap=True, force_terminal=False)
    chat.repl(plain=True, input_file=io.StringIO("hello there\n/rate +\n/list\n")).run()
    output = chat.console.file.getvalue()
    assert output.startswith("Some **bold** reply\n")  # plain: the text exactly as the model wrote it
    assert "\x1b[" not in output
    assert "rated up" in output and "hello there" in output
    assert chat.branch()[-1].rating == 1


def test_plain_mode_delete_reads_the_answer_from_the_next_line(home: DataHome) -> None:
    chat = Harness(home)
    chat.console = Console(file=io.StringIO(), no_color=True, force_terminal=False)
    chat.repl(plain=True, input_file=io.StringIO("hello\n/delete\ny\n")).run()
    assert chat.store.count_conversations() == 0


# ---- the `repl` command itself (no terminal under CliRunner: plain mode) ------------------------------------


def test_repl_command_without_a_terminal_reads_lines_and_applies_its_options(home: DataHome) -> None:
    store = Store(memory_database())
    engine = FakeEngine(["Plain **reply**"])
    opened: list[str] = []

    def open_engine(spec: str, _home: DataHome, **options) -> FakeEngine:
        opened.append(spec)
        return engine

    context = CliContext(home, _store=store, open_engine=open_engine)
    args = ["repl", "--model", "my-run", "--temperature", "0.3", "--system", "Be brief."]
    result = CliRunner().invoke(main, args, obj=context, input="hello\n/rate +\n")
    assert result.exit_code == 0, result.output
    # Replies and command output on stdout; loading and stats lines on stderr, out of a script's way.
    assert result.stdout == "Plain **reply**\nrated up\n"
    assert "loading fake model" in result.stderr and "2 tokens" in result.stderr
    assert opened == ["my-run"]
    messages, params = engine.calls[-1]
    assert messages[0] == {"role": "system", "content": "Be brief."} and params.temperature == 0.3
    assert store.active_branch(1)[-1].rating == 1


def test_repl_command_continues_a_conversation(home: DataHome) -> None:
    store = Store(memory_database())
    old = store.create_conversation("Old", model="my-run")
    store.add_message(old.id, "user", "first question")
    store.add_message(old.id, "assistant", "first answer")
    engine = FakeEngine()
    context = CliContext(home, _store=store, open_engine=lambda spec, _home, **options: engine)
    result = CliRunner().invoke(main, ["repl", "-c"], obj=context, input="second question\n")
    assert result.exit_code == 0, result.output
    assert [m["content"] for m in engine.calls[-1][0]] == ["first question", "first answer", "second question"]
    assert (
        CliRunner()
        .invoke(main, ["repl", "--conversation", "9"], obj=context)
        .output.startswith("Error: no conversation 9")
    )


# ---- streaming Markdown -------------------------------------------------------------------------------------


def _render_streamed(reply: str, step: int = 3, width: int = 80) -> str:
    console = Console(file=io.StringIO(), width=width)
    with MarkdownStream(console) as stream:
        for start in range(0, len(reply), step):
            stream.feed(reply[start : start + step])
    return console.file.getvalue()


def test_markdown_stream_renders_each_finished_line_once(monkeypatch: pytest.MonkeyPatch) -> None:
    rendered: list[str] = []
    real_markdown = markdown_stream.Markdown

    def counting_markdown(source: str, **options):
        rendered.append(source)
        return real_markdown(source, **options)

    monkeypatch.setattr(markdown_stream, "Markdown", counting_markdown)
    lines = [f"Line {i} has **bold** words and then some more words to stream." for i in range(5)]
    output = _render_streamed("\n".join(lines), step=2)
    assert rendered == lines  # one render per line, however many deltas it arrived in
    for i in range(5):
        assert output.count(f"Line {i} has bold words") == 1


def test_markdown_stream_code_fences_keep_their_text_and_tables_render_whole() -> None:
    reply = (
        "Here:\n\n```python\n# not a heading\nx = '**not bold**'\n```\n\n"
        "| name | value |\n|------|-------|\n| a    | 1     |\n\nDone."
    )
    output = _render_streamed(reply)
    assert "# not a heading" in output and "'**not bold**'" in output
    assert "```" not in output
    assert "|---" not in output and "name" in output and "value" in output
    assert output.rstrip().endswith("Done.")


def test_markdown_stream_prints_the_last_line_without_a_newline() -> None:
    assert _render_streamed("no newline at the end").strip() == "no newline at the end"


def test_markdown_stream_on_a_terminal_ends_with_the_whole_reply_shown() -> None:
    console = Console(file=io.StringIO(), width=60, force_terminal=True, color_system=None)
    with MarkdownStream(console) as stream:
        for word in "one two three\nfour five".split(" "):
            stream.feed(word + " ")
    output = console.file.getvalue()
    assert "one two three" in output and "four five" in output


