"""`tui-chat ask`: options, saving, continuing, errors (fake engine via the CliContext seam), and the real model."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from sessions import Store, memory_database
from tests.fakes import FakeEngine
from trainer.home import DataHome
from tui_chat.cli import CliContext, main


class FakeCli:
    """Runs `tui-chat` in-process with a memory store and fake engines (one per model spec, opened on demand)."""

    def __init__(self, home: DataHome) -> None:
        self.home = home
        self.store = Store(memory_database())
        self.replies: list[str] = []
        self.engines: dict[str, FakeEngine] = {}
        self.opened: list[tuple[str, dict]] = []
        self.load_error: str | None = None
        self.delay_s = 0.0

    def open_engine(self, spec: str, home: DataHome, **options) -> FakeEngine:
        self.opened.append((spec, options))
        engine = FakeEngine(self.replies, name=spec, load_error=self.load_error, delay_s=self.delay_s)
        self.engines[spec] = engine
        return engine

    def __call__(self, *args: str, input: str | None = None):
        context = CliContext(self.home, _store=self.store, open_engine=self.open_engine)
        return CliRunner().invoke(main, list(args), obj=context, input=input)

    def last_call(self):
        (engine,) = self.engines.values()
        return engine.calls[-1]


@pytest.fixture
def cli(tmp_path: Path) -> FakeCli:
    return FakeCli(DataHome(tmp_path / "home"))


def test_ask_streams_the_reply_to_stdout_and_saves_the_exchange(cli: FakeCli) -> None:
    cli.replies.append("The capital of France is Paris.")
    result = cli("ask", "What is the capital of France?")
    assert result.exit_code == 0, result.output
    assert result.stdout == "The capital of France is Paris.\n"
    (conversation,) = cli.store.list_conversations()
    user, reply = cli.store.active_branch(conversation.id)
    assert user.content == "What is the capital of France?"
    assert (reply.content, reply.status, reply.model) == ("The capital of France is Paris.", "complete", "default")
    assert conversation.model == "smollm2"  # the bundled model's one name, whichever alias was typed


def test_model_sampling_and_device_options_reach_the_engine_and_the_store(cli: FakeCli) -> None:
    result = cli(
        "ask", "hi", "--model", "my-run", "--temperature", "0", "--top-k", "5", "--top-p", "0.5", "--max-tokens", "7",
        "--seed", "3", "--repetition-penalty", "1.2", "--device", "cpu", "--dtype", "float32", "--trust-remote-code",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # No compile=False for `ask` any more: the home's server compiles in the background and keeps it for the next.
    assert cli.opened == [("my-run", {"device": "cpu", "dtype": "float32", "trust_remote_code": True})]
    _, params = cli.last_call()
    expected = {"temperature": 0.0, "top_k": 5, "top_p": 0.5, "max_new_tokens": 7, "seed": 3, "repetition_penalty": 1.2}
    assert params.to_dict() == expected
    conversation = cli.store.latest_conversation()
    assert conversation.params == expected and conversation.model == "my-run"
    assert cli.store.active_branch(conversation.id)[-1].params == expected


def test_system_prompt_is_sent_first_and_kept(cli: FakeCli) -> None:
    cli("ask", "hi", "--system", "Answer in French.")
    messages, _ = cli.last_call()
    assert messages == [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "hi"}]
    assert cli.store.latest_conversation().system_prompt == "Answer in French."


def test_question_from_stdin_when_missing_or_dash(cli: FakeCli) -> None:
    cli("ask", input="piped question\n")
    cli("ask", "-", input="dash question")
    assert [c.title for c in cli.store.list_conversations()] == ["dash question", "piped question"]


def test_no_save_writes_nothing(cli: FakeCli) -> None:
    cli.replies.append("ephemeral")
    result = cli("ask", "--no-save", "hi")
    assert result.exit_code == 0 and result.stdout == "ephemeral\n"
    assert cli.store.count_conversations() == 0


def test_conversation_continues_with_its_model_system_prompt_and_settings(cli: FakeCli) -> None:
    old = cli.store.create_conversation("Old", model="my-run", system_prompt="Be terse.", params={"temperature": 0.1})
    cli.store.add_message(old.id, "user", "capital of France?")
    cli.store.add_message(old.id, "assistant", "Paris.")
    result = cli("ask", "--conversation", str(old.id), "and Spain?")
    assert result.exit_code == 0, result.output
    assert [spec for spec, _ in cli.opened] == ["my-run"]
    messages, params = cli.last_call()
    assert [m["content"] for m in messages] == ["Be terse.", "capital of France?", "Paris.", "and Spain?"]
    assert params.temperature == 0.1
    assert len(cli.store.active_branch(old.id)) == 4


def test_options_override_a_continued_conversation_and_stick(cli: FakeCli) -> None:
    old = cli.store.create_conversation("Old", model="my-run", params={"temperature": 0.1, "top_k": 7})
    cli("ask", "--conversation", str(old.id), "--temperature", "0.9", "--model", "other", "--system", "Hi.", "next")
    assert [spec for spec, _ in cli.opened] == ["other"]
    _, params = cli.last_call()
    assert (params.temperature, params.top_k) == (0.9, 7)
    conversation = cli.store.get_conversation(old.id)
    assert (conversation.model, conversation.system_prompt, conversation.params["temperature"]) == ("other", "Hi.", 0.9)


def test_continue_takes_the_newest_conversation(cli: FakeCli) -> None:
    cli("ask", "first")
    cli("ask", "second")
    cli("ask", "-c", "follow-up")
    newest = cli.store.latest_conversation()
    assert [m.content for m in cli.store.active_branch(newest.id) if m.role == "user"] == ["second", "follow-up"]
    assert cli.store.count_conversations() == 2


def test_no_save_can_continue_a_conversation_without_changing_it(cli: FakeCli) -> None:
    old = cli.store.create_conversation("Old")
    cli.store.add_message(old.id, "user", "capital of France?")
    cli.store.add_message(old.id, "assistant", "Paris.")
    result = cli("ask", "--no-save", "--conversation", str(old.id), "what if?")
    assert result.exit_code == 0
    messages, _ = cli.last_call()
    assert [m["content"] for m in messages] == ["capital of France?", "Paris.", "what if?"]
    assert len(cli.store.messages(old.id)) == 2 and cli.store.count_conversations() == 1


@pytest.mark.parametrize(
    "args, code, line",
    [
        (["--conversation", "42", "hi"], 1, "Error: no conversation 42"),
        (["-c", "hi"], 1, "Error: no conversation to continue yet"),
        (["--top-p", "2", "hi"], 2, "Error: top_p must be in (0, 1]"),
        (["--max-tokens", "0", "hi"], 2, "Error: max_new_tokens must be >= 1"),
        (["   "], 2, "Error: the question is empty"),
        (["--conversation", "1", "-c", "hi"], 2, "Error: use --conversation ID or --continue, not both"),
    ],
)
def test_user_errors_are_one_line(cli: FakeCli, args: list[str], code: int, line: str) -> None:
    result = cli("ask", *args)
    assert result.exit_code == code
    assert result.output.strip().splitlines()[-1].startswith(line)
    assert "Traceback" not in result.output


def test_a_model_that_fails_to_load_is_one_line_and_saves_nothing(cli: FakeCli) -> None:
    cli.load_error = "no model directory at ./nope; check the path, or run `tui-chat models` for the list"
    result = cli("ask", "--model", "./nope", "hi")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == f"Error: {cli.load_error}"
    assert cli.store.count_conversations() == 0


def test_a_generation_error_is_one_line_and_the_reply_is_marked_failed(cli: FakeCli) -> None:
    error = "the prompt does not fit the model's context; shorten it"
    engine = FakeEngine(name="default")
    engine.fail_with = error
    cli.open_engine = lambda spec, home, **options: engine  # type: ignore[method-assign]
    result = cli("ask", "hi")
    assert result.exit_code == 1 and result.stderr.strip().splitlines()[-1] == f"Error: {error}"
    reply = cli.store.active_branch(cli.store.latest_conversation().id)[-1]
    assert (reply.status, reply.error) == ("failed", error)


def test_ctrl_c_keeps_the_partial_reply_as_stopped_and_exits_130(cli: FakeCli) -> None:
    cli.replies.append(" ".join(f"word{i}" for i in range(500)))
    cli.delay_s = 0.01

    def press_ctrl_c_once_streaming() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            conversation = cli.store.latest_conversation()
            branch = cli.store.active_branch(conversation.id) if conversation else []
            if len(branch) == 2 and branch[-1].content:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.02)

    presser = threading.Thread(target=press_ctrl_c_once_streaming)
    presser.start()
    result = cli("ask", "tell me everything")
    presser.join()
    assert result.exit_code == 130
    reply = cli.store.active_branch(cli.store.latest_conversation().id)[-1]
    assert reply.status == "stopped" and reply.content.startswith("word0") and len(reply.content.split()) < 500
    assert result.stdout.startswith("word0 word1")
    assert "stopped: the partial reply is kept in conversation" in result.stderr


def test_every_command_option_has_help_text() -> None:
    for name in ("ask", "repl"):
        command = main.get_command(None, name)  # type: ignore[arg-type]
        assert command.help
        for parameter in command.params:
            if parameter.param_type_name == "option":
                assert parameter.help, f"{name} {parameter.name} has no help"


# ---- the real bundled model, in a subprocess as a user runs it -----------------------------------------------


def _tui_chat(home: DataHome, *args: str) -> list[str]:
    return [sys.executable, "-m", "tui_chat", "--home", str(home.root), *args]


def _subprocess_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_ask_with_the_real_bundled_model_answers_and_saves(bundled_home: DataHome) -> None:
    question = "What is the capital of France?"
    result = subprocess.run(
        _tui_chat(bundled_home, "ask", question, "--temperature", "0"),
        capture_output=True,
        text=True,
        timeout=120,
        env=_subprocess_env(),
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    store = Store.open(bundled_home.db_path)
    (conversation,) = store.list_conversations()
    user, reply = store.active_branch(conversation.id)
    assert user.content == question
    assert reply.content.strip() == result.stdout.strip() and reply.status == "complete"
    assert reply.model == "smollm2" and reply.tokens_out > 0


@pytest.mark.slow
def test_a_reply_killed_mid_stream_leaves_its_partial_text_in_the_db(bundled_home: DataHome) -> None:
    process = subprocess.Popen(
        _tui_chat(bundled_home, "ask", "Write a long story about a dragon.", "--max-tokens", "2000"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=_subprocess_env(),
    )
    try:
        partial = _wait_for_partial_reply(bundled_home.db_path, timeout_s=90)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert partial
    rows = _assistant_rows(bundled_home.db_path)
    assert len(rows) == 1
    content, status = rows[0]
    assert status == "streaming"  # never finalised: the process died mid-reply
    assert content.startswith(partial)


def _assistant_rows(db_path: Path) -> list[tuple[str, str]]:
    if not db_path.exists():
        return []
    connection = sqlite3.connect(db_path, timeout=5)
    try:
        return connection.execute("SELECT content, status FROM messages WHERE role = 'assistant'").fetchall()
    except sqlite3.OperationalError:  # the schema is being created
        return []
    finally:
        connection.close()


def _wait_for_partial_reply(db_path: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = _assistant_rows(db_path)
        if rows and rows[0][0].strip() and rows[0][1] == "streaming":
            return rows[0][0]
        time.sleep(0.1)
    raise AssertionError("no partial reply reached the database in time")
