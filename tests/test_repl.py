"""The REPL driven through prompt-toolkit's pipe input, with the fake engine and an in-memory store."""

from __future__ import annotations

import io
import os
import select
import signal
import stat
import sys
import termios
import threading
import time
from pathlib import Path
from typing import IO, Iterator

import pytest
from click.testing import CliRunner
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from sessions import Store, memory_database
from tests.fakes import FakeEngine
from trainer.home import DataHome
from tui_chat.chat import commands
from tui_chat.repl import markdown_stream
from tui_chat.chat.session import ChatSession
from tui_chat.cli import CliContext, main
from tui_chat.repl.markdown_stream import MarkdownStream
from tui_chat.repl.app import Repl
from tui_chat.repl.commands import COPY_FILE
from tui_chat.repl.completion import ReplCompleter
from tui_chat.repl.terminal_echo import control_keys_unechoed, terminal_fd

ESC_ENTER = "\x1b\r"  # Alt+Enter as a terminal sends it


class Harness:
    """A REPL on a memory store; ``run(keys)`` types the keys and returns what was printed."""

    def __init__(self, home: DataHome, replies: list[str] | None = None, **engine_options) -> None:
        self.store = Store(memory_database())
        self.home = home
        self.engines: dict[str, FakeEngine] = {}
        self.replies = replies or []
        self.engine_options = engine_options
        self.session = ChatSession(self.store, self.open_engine)
        self.console = Console(file=io.StringIO(), width=100)

    def open_engine(self, spec: str) -> FakeEngine:
        if spec == "broken":
            return FakeEngine(name=spec, load_error="no model directory at broken; check the path")
        engine = FakeEngine(self.replies, name=spec, **self.engine_options)
        self.engines[spec] = engine
        return engine

    @property
    def engine(self) -> FakeEngine:
        return self.session.engine  # type: ignore[return-value]

    def repl(self, **options) -> Repl:
        return Repl(
            self.session, self.home, self.console, model_names=lambda: ["default", "smollm2", "my-run"], **options
        )

    def run(self, keys: str) -> str:
        start = len(self.console.file.getvalue())
        with create_pipe_input() as pipe:
            pipe.send_text(keys + "\x04")  # Ctrl+D at the end leaves
            self.repl(prompt_input=pipe, prompt_output=DummyOutput()).run()
        return self.console.file.getvalue()[start:]

    def branch(self) -> list:
        return self.store.active_branch(self.session.conversation_id)


@pytest.fixture
def home(tmp_path: Path) -> DataHome:
    return DataHome(tmp_path / "home")


@pytest.fixture
def chat(home: DataHome) -> Harness:
    return Harness(home)


def test_a_message_streams_and_is_saved(chat: Harness) -> None:
    chat.replies.append("Paris is the **capital**.")
    output = chat.run("What is the capital of France?\r")
    assert "Paris is the capital." in output  # rendered: the Markdown stars are gone
    user, reply = chat.branch()
    assert (user.role, user.content) == ("user", "What is the capital of France?")
    assert (reply.role, reply.content, reply.status) == ("assistant", "Paris is the **capital**.", "complete")
    assert reply.model == "default" and reply.tokens_out == 4
    conversation = chat.store.get_conversation(chat.session.conversation_id)
    # The conversation names the bundled model as its replies do (the real engine's name), not by the alias typed.
    assert conversation.title == "What is the capital of France?" and conversation.model == "smollm2"
    assert "4 tokens" in output


def test_the_model_loads_lazily_on_the_first_message(chat: Harness) -> None:
    chat.run("/help\r/set temperature 0\r")
    assert chat.engines == {} and chat.store.count_conversations() == 0
    chat.run("hello\r")
    assert chat.engine.ready


def test_alt_enter_makes_a_new_line_and_enter_sends(chat: Harness) -> None:
    chat.run(f"line one{ESC_ENTER}line two\r")
    assert chat.branch()[0].content == "line one\nline two"


def test_history_is_kept_privately_in_the_data_home(chat: Harness) -> None:
    chat.run("remember this\r")
    assert "remember this" in chat.home.history_path.read_text()
    assert stat.S_IMODE(chat.home.history_path.stat().st_mode) == 0o600


def test_unknown_command_is_one_line(chat: Harness) -> None:
    output = chat.run("/frobnicate now\r")
    assert output.strip().splitlines()[-1] == "error: unknown command /frobnicate; type /help for the list"
    assert chat.store.count_conversations() == 0


def test_double_slash_sends_a_message_starting_with_a_slash(chat: Harness) -> None:
    chat.run("//etc/hosts is a file\r")
    assert chat.branch()[0].content == "/etc/hosts is a file"


def test_help_lists_every_command_and_the_keys(chat: Harness) -> None:
    output = chat.run("/help\r")
    for usage, _ in commands.help_lines():
        assert usage in output
    assert "Alt+Enter" in output and "Ctrl+C" in output


def test_new_starts_another_conversation(chat: Harness) -> None:
    chat.run("first\r/new\rsecond\r")
    assert chat.store.count_conversations() == 2
    assert [m.content for m in chat.branch() if m.role == "user"] == ["second"]


def test_list_shows_conversations_newest_first_and_marks_the_current_one(chat: Harness) -> None:
    chat.run("alpha question\r/new\rbeta question\r")
    output = chat.run("/list\r")
    lines = [line for line in output.splitlines() if line.split()[:1] in (["*"], ["1"], ["2"])]
    assert "beta question" in lines[0] and lines[0].lstrip().startswith("*")
    assert "alpha question" in lines[1] and "*" not in lines[1]


def test_open_switches_conversation_and_adopts_its_settings(chat: Harness) -> None:
    first = chat.store.create_conversation(
        "Old chat", model="my-run", system_prompt="Be terse.", params={"temperature": 0.1}
    )
    chat.store.add_message(first.id, "user", "old question")
    chat.store.add_message(first.id, "assistant", "old answer")
    output = chat.run(f"/open {first.id}\rfollow-up\r")
    assert "old answer" in output and "Old chat" in output
    assert chat.session.conversation_id == first.id
    messages, params = chat.engines["my-run"].calls[-1]
    assert messages[0] == {"role": "system", "content": "Be terse."}
    assert [m["content"] for m in messages[1:]] == ["old question", "old answer", "follow-up"]
    assert params.temperature == 0.1


def test_open_rejects_a_missing_or_malformed_id(chat: Harness) -> None:
    assert "error: no conversation 42" in chat.run("/open 42\r")
    assert "error: /open ID" in chat.run("/open abc\r")


def test_rename(chat: Harness) -> None:
    chat.run("hello\r/rename Greetings\r")
    assert chat.store.get_conversation(chat.session.conversation_id).title == "Greetings"


def test_commands_on_no_conversation_say_so(chat: Harness) -> None:
    output = chat.run("/rename X\r/rate +\r")
    assert output.count("error: no conversation yet") == 2


def test_delete_asks_first(chat: Harness) -> None:
    chat.run("hello\r")
    assert "kept" in chat.run("/delete\rn\r")
    assert chat.store.count_conversations() == 1
    chat.run("/delete\ry\r")
    assert chat.store.count_conversations() == 0
    assert chat.session.conversation_id is None
    chat.run("again\r")
    assert [m.content for m in chat.branch()] == ["again", "echo: again"]


def test_model_shows_and_switches_and_the_conversation_remembers(chat: Harness) -> None:
    chat.run("hello\r")
    assert "model default on cpu (float32)" in chat.run("/model\r")
    chat.run("/model my-run\rand now?\r")
    assert chat.engines["my-run"].ready and chat.session.model == "my-run"
    assert chat.branch()[-1].model == "my-run"
    assert chat.store.get_conversation(chat.session.conversation_id).model == "my-run"


def test_a_model_that_fails_to_load_keeps_the_current_one(chat: Harness) -> None:
    chat.run("hello\r")
    output = chat.run("/model broken\r")
    assert output.strip().splitlines()[-1] == "error: no model directory at broken; check the path"
    assert chat.session.model == "default" and chat.engine.name == "default"


def test_a_model_load_error_on_the_first_message_creates_nothing(chat: Harness) -> None:
    chat.session.model = "broken"
    output = chat.run("hello\r")
    assert "error: no model directory at broken" in output
    assert chat.store.count_conversations() == 0


def test_system_sets_shows_and_clears_the_system_prompt(chat: Harness) -> None:
    chat.run("hello\r/system You are a pirate.\ragain\r")
    assert chat.store.get_conversation(chat.session.conversation_id).system_prompt == "You are a pirate."
    assert chat.engine.calls[-1][0][0] == {"role": "system", "content": "You are a pirate."}
    assert "system prompt: You are a pirate." in chat.run("/system\r")
    chat.run("/system -\r")
    assert chat.store.get_conversation(chat.session.conversation_id).system_prompt is None


def test_set_changes_a_setting_for_the_conversation(chat: Harness) -> None:
    chat.run("hello\r/set temperature 0.2\r/set max_new_tokens 3\rmore\r")
    params = chat.engine.calls[-1][1]
    assert (params.temperature, params.max_new_tokens) == (0.2, 3)
    assert chat.store.get_conversation(chat.session.conversation_id).params["temperature"] == 0.2
    assert "error: top_p must be in (0, 1]" in chat.run("/set top_p 2\r")
    assert "error: unknown setting 'warmth'" in chat.run("/set warmth 3\r")
    shown = chat.run("/set temperature\r")  # a name alone shows that setting (as in the chat window)
    assert "temperature = 0.2" in shown and "top_p" not in shown


def test_retry_adds_a_sibling_reply(chat: Harness) -> None:
    chat.replies.extend(["first version", "second version"])
    output = chat.run("question\r/retry\r")
    first, second = chat.store.siblings(chat.branch()[-1].id)
    assert (first.content, second.content) == ("first version", "second version")
    assert chat.branch()[-1].id == second.id
    assert "version 2 of 2" in output


def test_edit_rewrites_the_last_message_as_a_new_branch(chat: Harness) -> None:
    chat.run("capital of Frnace?\r/edit capital of France?\r")
    user, reply = chat.branch()
    assert user.content == "capital of France?" and reply.content == "echo: capital of France?"
    assert [m.content for m in chat.store.siblings(user.id)] == ["capital of Frnace?", "capital of France?"]


def test_rate_up_down_and_clear(chat: Harness) -> None:
    chat.run("hello\r/rate +\r")
    assert chat.branch()[-1].rating == 1
    chat.run("/rate -\r")
    assert chat.branch()[-1].rating == -1
    chat.run("/rate 0\r")
    assert chat.branch()[-1].rating == 0
    assert "error: /rate +|-|0" in chat.run("/rate great\r")


def test_correct_takes_text_or_asks_for_it_prefilled_with_the_reply(chat: Harness) -> None:
    chat.replies.append("Lyon.")
    chat.run("capital of France?\r/correct Paris.\r")
    assert chat.branch()[-1].correction == "Paris."
    # Asked: the answer starts as the current text; Ctrl+U in emacs mode would clear it, here we append.
    chat.run("/correct\r It is Paris.\r")
    assert chat.branch()[-1].correction == "Paris. It is Paris."
    chat.run("/correct -\r")
    assert chat.branch()[-1].correction is None


def test_copy_writes_the_last_reply_to_a_private_file(chat: Harness) -> None:
    chat.replies.append("copy me")
    chat.run("hello\r/copy\r")
    path = chat.home.root / COPY_FILE
    assert path.read_text() == "copy me"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_exclude_toggles_and_takes_on_off(chat: Harness) -> None:
    chat.run("hello\r/exclude\r")
    conversation_id = chat.session.conversation_id
    assert chat.store.get_conversation(conversation_id).exclude_from_training is True
    chat.run("/exclude\r")
    assert chat.store.get_conversation(conversation_id).exclude_from_training is False
    chat.run("/exclude on\r/exclude on\r")
    assert chat.store.get_conversation(conversation_id).exclude_from_training is True


def test_export_writes_a_dataset_with_the_export_commands_options(chat: Harness, tmp_path: Path) -> None:
    chat.replies.append("Paris.")
    out = tmp_path / "chats.jsonl"
    output = chat.run(f"capital of France?\r/export --out '{out}'\r")
    assert '"content": "Paris."' in out.read_text()
    assert str(out.name) in output
    assert "error: " in chat.run("/export --format bogus\r")
    assert "--val-fraction" in chat.run("/export --help\r")


def test_quit_and_its_aliases_end_the_loop(chat: Harness) -> None:
    for keys in ("/quit\r", "/exit\r", "/q\r"):
        # Nothing after the command is read: the message would otherwise be sent.
        chat.run(keys + "never sent\r")
    assert chat.store.count_conversations() == 0


def test_completion_offers_commands_models_and_settings() -> None:
    completer = ReplCompleter(lambda: ["default", "smollm2", "my-run"])

    def complete(text: str) -> list[str]:
        return [c.text for c in completer.get_completions(Document(text), CompleteEvent())]

    assert complete("/re") == ["/regenerate", "/rename ", "/retry"]
    assert "/help" in complete("/") and "/train " in complete("/") and "/runs " in complete("/")
    assert complete("/model my") == ["my-run"]
    assert complete("/model ") == ["default", "smollm2", "my-run"]
    assert complete("/set te") == ["temperature"]
    assert complete("/rate ") == ["+", "-", "0"]
    assert complete("hello /re") == []


def test_tab_completes_in_the_prompt(chat: Harness) -> None:
    chat.run("hello\r")
    with create_pipe_input() as pipe:
        # Completion runs in a thread: type like a person, giving it a moment before Tab.
        def type_slowly() -> None:
            for keys in ("/ren", "\t", "New title\r", "\x04"):
                time.sleep(0.3)
                pipe.send_text(keys)

        typist = threading.Thread(target=type_slowly)
        typist.start()
        chat.repl(prompt_input=pipe, prompt_output=DummyOutput()).run()
        typist.join()
    assert chat.store.get_conversation(chat.session.conversation_id).title == "New title"


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


def test_the_bundled_model_has_one_name_wherever_it_is_shown(home: DataHome) -> None:
    """Started with the alias `default`, the banner, the toolbar's model, /list and /model all say `smollm2`, the
    name its replies carry."""
    chat = Harness(home)
    output = chat.run("hello\r/list\r/model\r")
    assert "model smollm2 (loads with your first message)" in output
    (row,) = [line for line in output.splitlines() if line.lstrip().startswith("*")]
    assert "smollm2" in row and "default" not in row
    assert chat.store.get_conversation(chat.session.conversation_id).model == "smollm2"
