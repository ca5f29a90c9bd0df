"""The chat window's actions (keys, slash commands, the palette and dialogs) through Pilot, on the fake engine and an
in-memory store. The window itself (sending, streaming, models, the sidebar) is in test_tui.py."""

from __future__ import annotations

import io

from rich.console import Console
from textual.widgets import Input, Static

from tui_chat.chat import commands
from tui_chat.tui.keys import CHAT_ACTIONS
from tui_chat.tui.screens.chat_actions import CLIPBOARD_FILE
from tui_chat.tui.screens.confirm import ConfirmScreen
from tui_chat.tui.screens.help import HelpScreen
from tui_chat.tui.screens.params_editor import ParamsEditorScreen
from tui_chat.tui.screens.text_editor import TextEditorScreen


from .fakes import FakeEngine
from .tui_helpers import home, store  # noqa: F401  (fixtures)
from .tui_helpers import (
    header,
    SIZE,
    GatedEngine,
    build_app,
    idle,
    notifications,
    ready,
    send,
    wait_for,
)

LONG_REPLY = " ".join(f"word{i}" for i in range(200))


async def test_regenerate_makes_a_sibling_and_versions_flip(home, store):
    engine = FakeEngine(["first answer", "second answer"])
    async with build_app(engine, home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "question")
        await idle(pilot)
        await pilot.press("ctrl+r")
        await idle(pilot)
        conversation_id = store.latest_conversation().id
        first, second = store.siblings(store.active_branch(conversation_id)[-1].id)
        assert (first.content, second.content) == ("first answer", "second answer")
        assert screen.chat.views()[-1].text == "second answer" and "2/2" in header(screen.chat.views()[-1])
        assert len(screen.chat.views()) == 2

        await pilot.press("alt+left")
        await pilot.pause()
        assert screen.chat.views()[-1].text == "first answer" and "1/2" in header(screen.chat.views()[-1])
        assert store.get_conversation(conversation_id).tip_id == first.id
        await pilot.press("alt+right")
        await pilot.pause()
        assert screen.chat.views()[-1].text == "second answer"
        assert store.get_conversation(conversation_id).tip_id == second.id


async def test_edit_last_message_starts_a_new_branch(home, store):
    engine = FakeEngine(["about cats", "about dogs"])
    async with build_app(engine, home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "tell me about cats")
        await idle(pilot)
        await pilot.press("alt+e")
        editor = pilot.app.screen
        assert isinstance(editor, TextEditorScreen)
        editor.query_one("#editor").load_text("tell me about dogs")
        await pilot.press("ctrl+s")
        await idle(pilot)
        branch = store.active_branch(store.latest_conversation().id)
        assert [m.content for m in branch] == ["tell me about dogs", "about dogs"]
        assert len(store.siblings(branch[0].id)) == 2
        assert [view.text for view in screen.chat.views()] == ["tell me about dogs", "about dogs"]
        assert "2/2" in header(screen.chat.views()[0])
        await pilot.press("alt+left")  # the newest message with versions: the edited one
        await pilot.pause()
        assert [view.text for view in screen.chat.views()] == ["tell me about cats", "about cats"]


async def test_rate_toggles_and_correct_saves_the_ideal_answer(home, store):
    async with build_app(FakeEngine(["meh"]), home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "hi")
        await idle(pilot)
        reply_id = store.active_branch(store.latest_conversation().id)[-1].id
        await pilot.press("alt+up")
        assert store.get_message(reply_id).rating == 1
        assert "rated up" in header(screen.chat.views()[-1])
        await pilot.press("alt+up")
        assert store.get_message(reply_id).rating == 0
        await pilot.press("alt+down")
        assert store.get_message(reply_id).rating == -1

        await pilot.press("alt+c")
        editor = pilot.app.screen
        assert isinstance(editor, TextEditorScreen)
        assert editor.query_one("#editor").text == "meh"
        editor.query_one("#editor").load_text("Hello! How can I help?")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert store.get_message(reply_id).correction == "Hello! How can I help?"
        assert "corrected" in header(screen.chat.views()[-1])


async def test_selected_message_is_the_target_of_rating(home, store):
    async with build_app(FakeEngine(["one", "two"]), home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "a")
        await idle(pilot)
        await send(pilot, "b")
        await idle(pilot)
        first_reply = store.active_branch(store.latest_conversation().id)[1]
        screen.chat.focus()
        await pilot.pause()
        await pilot.press("up", "up")  # from the last message (selected on focus) up to the first reply
        assert screen.chat.selected_view().message_id == first_reply.id
        await pilot.press("alt+up")
        assert store.get_message(first_reply.id).rating == 1
        assert store.active_branch(store.latest_conversation().id)[-1].rating == 0


async def test_while_a_reply_streams_the_reply_actions_wait_unless_a_finished_reply_is_selected(home, store):
    engine = GatedEngine("first answer", before=1)
    engine.gate.set()
    async with build_app(engine, home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "a")
        await idle(pilot)
        first_reply = store.active_branch(store.latest_conversation().id)[-1]
        engine.gate.clear()
        engine.replies.append(LONG_REPLY)
        await send(pilot, "b")
        await wait_for(pilot, lambda: "word0" in screen.chat.views()[-1].text, what="the second reply streaming")
        wait = "Wait for the reply to finish (or stop it), then"

        # No message selected: "the reply" is the one streaming, so nothing is rated, corrected or copied.
        await pilot.press("alt+up")
        await pilot.press("alt+c")
        await pilot.press("alt+y")
        await pilot.pause()
        assert [n for n in notifications(pilot) if n.startswith(wait)] == [
            f"{wait} rate it.", f"{wait} correct it.", f"{wait} copy it."
        ]
        assert not isinstance(pilot.app.screen, TextEditorScreen)
        assert pilot.app.clipboard == ""
        await send(pilot, "/correct Better.")
        assert screen.prompt.text == "/correct Better."  # kept in the box to send once the reply is done
        assert (store.get_message(first_reply.id).rating, store.get_message(first_reply.id).correction) == (0, None)

        # The streaming reply selected: the same.
        screen.chat.focus()
        await pilot.pause()
        assert screen.chat.selected_view() is screen.chat.views()[-1]
        await pilot.press("alt+down")
        assert notifications(pilot)[-1] == f"{wait} rate it."
        assert store.get_message(first_reply.id).rating == 0

        # A finished reply selected: the action is meant for it, streaming or not.
        await pilot.press("up", "up")
        assert screen.chat.selected_view().message_id == first_reply.id
        await pilot.press("alt+up")
        assert store.get_message(first_reply.id).rating == 1
        assert screen.generating

        engine.gate.set()
        await idle(pilot)
        second_reply = store.active_branch(store.latest_conversation().id)[-1]
        assert second_reply.content == LONG_REPLY and second_reply.rating == 0


async def test_delete_asks_first(home, store):
    older = store.create_conversation("older")
    store.add_message(older.id, "user", "old question")
    async with build_app(home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        assert screen.conversation.id == older.id
        await pilot.press("ctrl+n")
        await send(pilot, "doomed")
        await idle(pilot)
        doomed = screen.conversation.id
        assert doomed != older.id
        await pilot.press("f8")
        assert isinstance(pilot.app.screen, ConfirmScreen)
        await pilot.press("n")
        await pilot.pause()
        assert store.get_conversation(doomed)
        await pilot.press("f8")
        await pilot.press("y")
        await pilot.pause()
        assert [c.id for c in store.list_conversations()] == [older.id]
        assert screen.conversation.id == older.id
        assert [view.text for view in screen.chat.views()] == ["old question"]


async def test_slash_commands(home, store):
    async with build_app(FakeEngine(["ok", "ok"]), home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "hi")
        await idle(pilot)
        conversation_id = screen.conversation.id
        await send(pilot, "/rename [draft] ideas")  # brackets: Rich markup must not eat them
        assert "[draft] ideas" in str(screen.sidebar.conversations.get_option_at_index(0).prompt)
        await send(pilot, "/rename Greetings")
        await send(pilot, "/system Answer in French.")
        await send(pilot, "/set temperature 0.2")
        await send(pilot, "/rate +")
        await send(pilot, "/correct Bonjour !")
        await send(pilot, "/exclude on")
        conversation = store.get_conversation(conversation_id)
        assert conversation.title == "Greetings"
        assert conversation.system_prompt == "Answer in French."
        assert conversation.params["temperature"] == 0.2
        assert conversation.exclude_from_training
        reply = store.active_branch(conversation_id)[-1]
        assert (reply.rating, reply.correction) == (1, "Bonjour !")
        assert "Greetings" in screen.sub_title and "not used for training" in screen.sub_title

        await send(pilot, "/retry")
        await idle(pilot)
        engine_messages, params = pilot.app.screen.engine.calls[-1]
        assert engine_messages[0] == {"role": "system", "content": "Answer in French."}
        assert params.temperature == 0.2

        await send(pilot, "/nonsense")
        assert screen.prompt.text == "/nonsense", "a command that failed stays in the box to fix"
        assert any("unknown command /nonsense" in n for n in notifications(pilot))
        await send(pilot, "/set temperature hot")
        assert "temperature takes a number, not 'hot'" in notifications(pilot)
        assert screen.prompt.text == "/set temperature hot"
        assert store.get_conversation(conversation_id).params["temperature"] == 0.2

        await send(pilot, "//etc/hosts is a file")
        await idle(pilot)
        assert store.active_branch(conversation_id)[-2].content == "/etc/hosts is a file"

        await send(pilot, "/new")
        assert screen.conversation is None and screen.chat.views() == []
        await send(pilot, f"/open {conversation_id}")
        assert screen.conversation.id == conversation_id
        await send(pilot, "/help")
        assert isinstance(pilot.app.screen, HelpScreen)
        await pilot.press("escape")
        await send(pilot, "/quit")
        await pilot.pause()
        assert not pilot.app.is_running


async def test_copy_uses_the_clipboard_and_a_file(home, store):
    async with build_app(FakeEngine(["copy me"]), home=home, store=store).run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        await idle(pilot)
        await pilot.press("alt+y")
        assert pilot.app.clipboard == "copy me"
        path = home.root / CLIPBOARD_FILE
        assert path.read_text() == "copy me"
        assert any(str(path) in n for n in notifications(pilot))


async def test_params_editor_saves_per_conversation(home, store):
    engine = FakeEngine(["a", "b"])
    async with build_app(engine, home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "hi")
        await idle(pilot)
        await pilot.press("alt+p")
        editor = pilot.app.screen
        assert isinstance(editor, ParamsEditorScreen)
        editor.query_one("#param-top_k", Input).value = "-3"
        await pilot.press("ctrl+s")
        assert "top_k" in str(editor.query_one("#params-error").render())
        editor.query_one("#param-top_k", Input).value = "7"
        editor.query_one("#param-max_new_tokens", Input).value = "64"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert store.get_conversation(screen.conversation.id).params["top_k"] == 7
        await send(pilot, "again")
        await idle(pilot)
        assert (engine.calls[-1][1].top_k, engine.calls[-1][1].max_new_tokens) == (7, 64)
        await send(pilot, "/new")
        assert screen.params.top_k == 50  # a new conversation starts from the defaults


async def test_system_prompt_editor(home, store):
    engine = FakeEngine(["sure"])
    async with build_app(engine, home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await pilot.press("alt+s")
        assert isinstance(pilot.app.screen, TextEditorScreen)
        pilot.app.screen.query_one("#editor").load_text("You are terse.")
        await pilot.press("ctrl+s")
        await pilot.pause()
        # A new chat keeps it until its first message creates the conversation (no empty rows before that).
        assert screen.session.system_prompt == "You are terse." and screen.conversation is None
        assert "You are terse." in str(screen.chat.query_one(".system-prompt").render())
        await send(pilot, "hi")
        await idle(pilot)
        assert engine.calls[-1][0][0] == {"role": "system", "content": "You are terse."}
        assert screen.conversation.system_prompt == "You are terse."


async def test_export_runs_the_cli_export(home, store, tmp_path):
    out = tmp_path / "chats.jsonl"
    async with build_app(FakeEngine(["fine"]), home=home, store=store).run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        await idle(pilot)
        await send(pilot, f"/export --format messages --out {out}")
        await wait_for(pilot, out.exists, what="the export file")
        assert '"content": "fine"' in out.read_text()
        await send(pilot, "/export --format nonsense")
        await wait_for(pilot, lambda: any("nonsense" in n for n in notifications(pilot)), what="the export error")


async def test_help_lists_every_key_and_command(home, store):
    async with build_app(home=home, store=store).run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("f1")
        help_screen = pilot.app.screen
        assert isinstance(help_screen, HelpScreen)
        console = Console(width=200, record=True, file=io.StringIO())
        for static in help_screen.query(Static):
            console.print(static.content)
        text = console.export_text()
        for action in CHAT_ACTIONS:
            assert action.help in text
        for command in commands.COMMANDS:
            assert command.usage in text


async def test_palette_offers_every_action(home, store):
    async with build_app(home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        titles = {command.title for command in pilot.app.get_system_commands(screen)}
        assert {action.title for action in CHAT_ACTIONS if action.action != "stop"} <= titles
        assert "Theme" in titles


async def test_slash_commands_are_hinted_and_tab_completes(home, store):
    async with build_app(home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        hints = screen.query_one("#command-hints")
        screen.prompt.focus()
        await pilot.press("/", "r", "e")
        assert hints.display
        shown = str(hints.render())
        assert "/rename TITLE" in shown and "/retry" in shown and "/rate" not in shown
        await pilot.press("n", "tab")
        assert screen.prompt.text == "/rename "
        assert not hints.display  # an argument is being typed
        assert screen.prompt.has_focus, "Tab completed instead of moving the focus"
        screen.prompt.load_text("hello")
        await pilot.press("tab")
        assert not screen.prompt.has_focus  # outside a command, Tab moves on as usual


