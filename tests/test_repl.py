"""The REPL driven through prompt-toolkit's pipe input, with the fake engine and an in-memory store."""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path

from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from trainer.home import DataHome
from tui_chat.chat import commands
from tui_chat.repl.commands import COPY_FILE
from tui_chat.repl.completion import ReplCompleter

from .repl_helpers import ESC_ENTER, Harness, chat, home  # noqa: F401  (chat, home: fixtures)


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


def test_the_bundled_model_has_one_name_wherever_it_is_shown(home: DataHome) -> None:
    """Started with the alias `default`, the banner, the toolbar's model, /list and /model all say `smollm2`, the
    name its replies carry."""
    chat = Harness(home)
    output = chat.run("hello\r/list\r/model\r")
    assert "model smollm2 (loads with your first message)" in output
    (row,) = [line for line in output.splitlines() if line.lstrip().startswith("*")]
    assert "smollm2" in row and "default" not in row
    assert chat.store.get_conversation(chat.session.conversation_id).model == "smollm2"
