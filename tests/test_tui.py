"""The chat app driven through Textual's Pilot, on the fake engine and an in-memory store."""

from __future__ import annotations

import asyncio

from textual.widgets import Input, Markdown

from tui_chat.tui.worker_messages import PendingText
from tui_chat.tui.screens.chat import ERROR_LOG, ChatScreen
from tui_chat.tui.screens.model_picker import ModelPickerScreen
from tui_chat.tui.widgets.chat_view import PAGE_SIZE as CHAT_PAGE
from tui_chat.tui.widgets.conversation_list import PAGE_SIZE
from tui_chat.tui.widgets.message_view import needs_full_render

from tui_chat.inference.contract import EngineError

from .fakes import FakeEngine
from .tui_helpers import home, store  # noqa: F401  (fixtures)
from .tui_helpers import (
    header,
    SIZE,
    GatedEngine,
    build_app,
    idle,
    notifications,
    SlowLoadingEngine,
    chat_screen,
    ready,
    send,
    wait_for,
)

LONG_REPLY = " ".join(f"word{i}" for i in range(200))


async def test_send_streams_the_reply_and_saves_both_messages(home, store):
    engine = FakeEngine(["Hello **there**.\n\n```python\nprint('hi')\n```"])
    async with build_app(engine, home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        assert screen.prompt.placeholder.startswith("Message")
        await pilot.press(*"Hi you", "enter")  # typed key by key, as a user would
        screen = await idle(pilot)
        conversation = store.latest_conversation()
        assert conversation.title == "Hi you"
        user, reply = store.active_branch(conversation.id)
        assert (user.content, reply.status) == ("Hi you", "complete")
        assert reply.content == "Hello **there**.\n\n```python\nprint('hi')\n```"
        assert engine.calls[0][0][-1] == {"role": "user", "content": "Hi you"}
        views = screen.chat.views()
        assert [view.message_id for view in views] == [user.id, reply.id]
        assert views[1].query_one(Markdown).source == reply.content
        assert screen.prompt.text == ""
        assert "fake-model" in str(screen.status.render_text()) and "tok/s" in str(screen.status.render_text())
        assert screen.sidebar.conversations.option_count == 1


async def test_ctrl_j_and_shift_enter_add_lines_enter_sends(home, store):
    async with build_app(home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        screen.prompt.focus()
        await pilot.press("a", "ctrl+j", "b", "shift+enter", "c")
        assert screen.prompt.text == "a\nb\nc"
        await pilot.press("enter")
        await idle(pilot)
        assert store.active_branch(store.latest_conversation().id)[0].content == "a\nb\nc"


async def test_reply_streams_into_the_view_before_it_finishes(home, store):
    engine = GatedEngine(LONG_REPLY, before=20)
    async with build_app(engine, home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "count")
        markdown = lambda: screen.chat.views()[-1].query_one(Markdown)
        await wait_for(pilot, lambda: "word19" in markdown().source, what="the first 20 words on screen")
        assert screen.generating
        assert markdown().source == " ".join(LONG_REPLY.split()[:20])
        engine.gate.set()
        await idle(pilot)
        assert markdown().source == LONG_REPLY


async def test_escape_stops_the_reply_and_keeps_the_partial_text(home, store):
    engine = GatedEngine(LONG_REPLY, before=20)
    async with build_app(engine, home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "count")
        await wait_for(pilot, lambda: "word19" in screen.chat.views()[-1].text, what="some streamed text")
        await pilot.press("escape")
        await idle(pilot)
        reply = store.active_branch(store.latest_conversation().id)[-1]
        assert reply.status == "stopped"
        assert reply.content == " ".join(LONG_REPLY.split()[:20])
        view = screen.chat.views()[-1]
        assert view.text == reply.content
        assert "stopped" in header(view)


async def test_search_shows_snippets_and_opens_the_hit(home, store):
    for title, text in [("Cooking", "a recipe for pancakes"), ("Travel", "trains across Europe")]:
        conversation = store.create_conversation(title)
        store.add_message(conversation.id, "user", text)
    travel = store.latest_conversation()
    cooking = store.list_conversations()[1]
    async with build_app(home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        assert screen.conversation.id == travel.id
        await pilot.press("ctrl+f")
        assert screen.focused is screen.query_one("#search", Input)
        await pilot.press(*"pancake")
        await wait_for(pilot, lambda: screen.sidebar.results.display, what="search results")
        results = screen.sidebar.results
        assert [hit.conversation_id for hit in results.hits] == [cooking.id]
        prompt = str(results.get_option_at_index(0).prompt)
        assert "Cooking" in prompt and "pancakes" in prompt
        await pilot.press("enter")  # search now and move to the results
        await pilot.press("enter")  # open the highlighted hit
        await pilot.pause()
        assert screen.conversation.id == cooking.id
        assert screen.chat.selected_view().text == "a recipe for pancakes"
        await pilot.press("ctrl+f", "escape")  # Escape in the search box clears the search
        await pilot.pause()
        assert screen.query_one("#search", Input).value == ""
        assert screen.sidebar.conversations.display


async def test_sidebar_loads_conversations_a_page_at_a_time(home, store):
    with store.transaction():
        for number in range(1000):
            store.create_conversation(f"chat {number}", created_at=1_700_000_000 + number)
    async with build_app(home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        conversations = screen.sidebar.conversations
        assert conversations.option_count == PAGE_SIZE
        assert len(pilot.app.screen.query("*")) < 100  # rows are drawn by the list, not one widget each
        conversations.focus()
        await pilot.press("end")
        await pilot.pause()
        assert conversations.option_count == 2 * PAGE_SIZE
        conversations.scroll_end(animate=False)
        await pilot.pause()
        assert conversations.option_count >= 3 * PAGE_SIZE
        ids = [conversations.conversation_id_at(i) for i in range(conversations.option_count)]
        assert len(ids) == len(set(ids)) and ids == sorted(ids, reverse=True)


async def test_a_reply_redraws_the_sidebar_only_when_a_row_changes(home, store):
    async with build_app(FakeEngine(["one", "two"]), home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "first")
        await idle(pilot)
        conversations = screen.sidebar.conversations
        row = conversations.get_option_at_index(0)
        await send(pilot, "second")
        await idle(pilot)
        assert conversations.get_option_at_index(0) is row  # same title, still "just now": the list is not rebuilt
        screen.rename("A new title")
        assert "A new title" in str(conversations.get_option_at_index(0).prompt)


async def test_model_switcher_loads_the_typed_spec(home, store):
    opened: list[str] = []

    def factory(spec: str) -> FakeEngine:
        opened.append(spec)
        return FakeEngine(["from the new model"], name=spec)

    async with build_app(home=home, store=store, factory=factory).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "hi")
        await idle(pilot)
        await pilot.press("alt+m")
        assert isinstance(pilot.app.screen, ModelPickerScreen)
        await pilot.press(*"my-run", "enter")
        await wait_for(pilot, lambda: screen.engine.name == "my-run", what="the new model")
        assert opened == ["my-run"]
        assert store.get_conversation(screen.conversation.id).model == "my-run"
        assert "my-run" in str(screen.status.render_text())
        await send(pilot, "again")
        await idle(pilot)
        assert store.active_branch(screen.conversation.id)[-1].model == "my-run"


async def test_a_model_that_fails_to_load_keeps_the_current_one(home, store):
    factory = lambda spec: FakeEngine(name=spec, load_error=f"no model called {spec}")
    async with build_app(home=home, store=store, factory=factory).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "/model nonsense")
        await wait_for(pilot, lambda: any("no model called nonsense" in n for n in notifications(pilot)))
        await ready(pilot)
        assert screen.engine.name == "fake-model"
        assert "failed to load" in str(screen.status.render_text())


async def test_load_failure_is_shown_and_the_app_keeps_working(home, store):
    engine = FakeEngine(load_error="the model file is damaged; reinstall it")
    async with build_app(engine, home=home, store=store).run_test(size=SIZE) as pilot:
        screen = chat_screen(pilot)
        await wait_for(pilot, lambda: screen.status.failure is not None, what="the load to fail")
        assert screen.engine is None and screen.loading_model is None
        assert "the model file is damaged" in str(screen.status.render_text())
        assert any("damaged" in n for n in notifications(pilot))
        assert "No model loaded" in screen.prompt.placeholder
        await send(pilot, "hello?")
        assert screen.prompt.text == "hello?", "the message stays in the box to send later"
        assert any("No model is loaded" in n for n in notifications(pilot))
        assert store.count_conversations() == 0


async def test_a_message_sent_while_the_model_loads_is_sent_once_it_is_ready(home, store):
    engine = SlowLoadingEngine(["hello back"])
    async with build_app(engine, home=home, store=store).run_test(size=SIZE) as pilot:
        screen = chat_screen(pilot)
        await wait_for(pilot, lambda: screen.loading_model is not None, what="the model to start loading")
        await pilot.press(*"hello", "enter")
        assert screen.prompt.text == "hello", "it waits in the box"
        assert any("sent once it is ready" in n for n in notifications(pilot))
        engine.loaded.set()
        await wait_for(pilot, lambda: store.count_conversations() == 1, what="the message to be sent")
        await idle(pilot)
        assert screen.prompt.text == ""
        assert [m.content for m in store.active_branch(screen.conversation.id)] == ["hello", "hello back"]


async def test_a_waiting_message_changed_before_the_model_is_ready_is_not_sent(home, store):
    engine = SlowLoadingEngine(["hello back"])
    async with build_app(engine, home=home, store=store).run_test(size=SIZE) as pilot:
        screen = chat_screen(pilot)
        await wait_for(pilot, lambda: screen.loading_model is not None, what="the model to start loading")
        await pilot.press(*"hello", "enter", *" there")
        engine.loaded.set()
        await ready(pilot)
        await pilot.pause(0.1)
        assert screen.prompt.text == "hello there", "still being written: Enter sends it"
        assert store.count_conversations() == 0


async def test_a_chat_with_no_messages_yet_is_counted_as_empty(home, store):
    """/set before the first message saves the chat; opened again (here at start-up), the model must not be asked
    to count no messages (chat templates reject them: the app crashed on every start)."""
    empty = store.create_conversation()
    async with build_app(home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await wait_for(pilot, lambda: "context 0/" in str(screen.status.render_text()), what="the context count")
        assert screen.conversation.id == empty.id


async def test_generation_failure_marks_the_reply_failed(home, store):
    engine = FakeEngine()
    engine.fail_with = "out of memory; try a smaller max_new_tokens"
    async with build_app(engine, home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "hi")
        await idle(pilot)
        reply = store.active_branch(screen.conversation.id)[-1]
        assert (reply.role, reply.status) == ("assistant", "failed")
        assert reply.error == "out of memory; try a smaller max_new_tokens"
        view = screen.chat.views()[-1]
        assert "failed" in header(view) and "out of memory" in str(view.query_one(".message-note").render())
        assert any("out of memory" in n for n in notifications(pilot))
        await pilot.press("ctrl+r")  # and it can be retried
        await idle(pilot)
        assert store.active_branch(screen.conversation.id)[-1].status == "complete"


async def test_unexpected_errors_go_to_the_log_not_the_screen(home, store):
    class BrokenEngine(FakeEngine):
        def stream(self, messages, params, stop=None):
            raise RuntimeError("tensor shapes do not match")

    async with build_app(BrokenEngine(), home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "hi")
        await idle(pilot)
        assert pilot.app.is_running
        assert "failed" in header(screen.chat.views()[-1])
        message = next(n for n in notifications(pilot) if "tensor shapes" in n)
        assert str(home.root / ERROR_LOG) in message
        assert "Traceback" in (home.root / ERROR_LOG).read_text()


async def test_reopening_resumes_the_last_conversation(home, store):
    first = store.create_conversation("first")
    store.add_message(first.id, "user", "first question")
    second = store.create_conversation("second")
    store.add_message(second.id, "user", "second question")
    async with build_app(home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        assert screen.conversation.id == second.id  # nothing remembered yet: the newest
        await send(pilot, f"/open {first.id}")
    async with build_app(home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        assert screen.conversation.id == first.id
        assert [view.text for view in screen.chat.views()] == ["first question"]


async def test_theme_is_remembered(home, store):
    async with build_app(home=home, store=store).run_test(size=SIZE) as pilot:
        await ready(pilot)
        pilot.app.theme = "gruvbox"
        await pilot.pause()
    async with build_app(home=home, store=store).run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert pilot.app.theme == "gruvbox"


async def test_keys_typed_right_after_enter_are_kept(home, store, monkeypatch):
    slow_slash = ChatScreen.run_slash

    async def run_slash(self, text):
        await asyncio.sleep(0.3)  # the screen is busy while the user goes on typing (or pasting)
        return await slow_slash(self, text)

    monkeypatch.setattr(ChatScreen, "run_slash", run_slash)
    async with build_app(home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        screen.prompt.focus()
        await pilot.press(*"/set temperature 0", "enter", *"next message")
        await wait_for(pilot, lambda: screen.params.temperature == 0, what="the command")
        await pilot.pause()
        assert screen.prompt.text == "next message"


async def test_long_conversations_mount_a_page_and_load_earlier_on_scroll(home, store):
    conversation = store.create_conversation("long")
    with store.transaction():
        for number in range(60):
            text = f"message {number}" + "\n\nmore" * 5  # a page of these is taller than the window
            store.add_message(conversation.id, "user" if number % 2 == 0 else "assistant", text)
    async with build_app(home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        chat = screen.chat
        first = lambda: chat.views()[0].text.split("\n")[0]
        assert len(chat.views()) == CHAT_PAGE and len(chat.hidden) == 60 - CHAT_PAGE
        assert first() == f"message {60 - CHAT_PAGE}"
        chat.scroll_home(animate=False)  # reaching the top mounts the page before
        await wait_for(pilot, lambda: len(chat.views()) == 2 * CHAT_PAGE, what="the earlier page")
        assert first() == f"message {60 - 2 * CHAT_PAGE}"
        chat.focus()
        await pilot.press("home")  # the whole conversation, its first message selected
        await pilot.pause()
        assert len(chat.views()) == 60 and chat.selected_view().text.startswith("message 0\n")


async def test_short_messages_fill_the_window_from_earlier_pages(home, store):
    conversation = store.create_conversation("short lines")
    with store.transaction():
        for number in range(100):
            store.add_message(conversation.id, "user" if number % 2 == 0 else "assistant", f"line {number}")
    async with build_app(home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        chat = screen.chat
        await wait_for(pilot, lambda: chat.virtual_size.height > chat.scrollable_content_region.height)
        assert CHAT_PAGE < len(chat.views()) < 100


async def test_a_search_hit_far_back_is_shown(home, store):
    conversation = store.create_conversation("long")
    with store.transaction():
        for number in range(40):
            text = "the needle" if number == 3 else f"message {number}"
            store.add_message(conversation.id, "user" if number % 2 == 0 else "assistant", text)
    async with build_app(home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await pilot.press("ctrl+f", *"needle", "enter", "enter")
        await pilot.pause()
        assert screen.chat.selected_view().text == "the needle"


def test_full_render_only_when_the_streamed_render_may_differ():
    assert not needs_full_render("Some **bold** text\n\n- a list", "Some **bold** text\n\n- a list")
    assert needs_full_render("partial", "partial and more")
    assert needs_full_render("See [the docs][1].\n\n[1]: https://example.com", "See [the docs][1].\n\n[1]: https://example.com")


def test_pending_text_asks_for_one_message_until_taken():
    pending = PendingText()
    assert pending.add("a") is True  # the first text of a batch: post a message
    assert pending.add("b") is False  # one is already on its way
    assert pending.take() == "ab"
    assert pending.take() == ""
    assert pending.add("c") is True


async def test_a_context_count_the_model_refuses_leaves_the_window_running(home, store):
    """Counting the context is a nicety: an engine that cannot count (its template refuses the messages, its process
    went away) must not end the app, as a failed worker would."""

    class RefusingToCount(FakeEngine):
        def count_tokens(self, messages):
            raise EngineError("the chat template refuses these messages")

    engine = RefusingToCount(["fine"])
    async with build_app(engine, home=home, store=store).run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "hello")
        screen = await idle(pilot)
        await send(pilot, "/system Be brief.")  # the context is counted again
        await pilot.pause(0.2)
        assert pilot.app.is_running and screen.branch[-1].content == "fine"
