"""/compare in the chat window through Pilot: two answers side by side, the pick by key, blind labels revealed at the
pick, the pair it makes in the export, and Esc leaving without a pick (also mid-answer) with the window still taking
messages."""

from __future__ import annotations

import json

from sessions.export import export_preference_pairs
from tui_chat.tui.screens.compare import CompareScreen
from tui_chat.tui.screens.text_editor import TextEditorScreen
from tui_chat.tui.widgets.compare_column import CompareColumn

from .fakes import FakeEngine
from .tui_helpers import home, store  # noqa: F401  (fixtures)
from .tui_helpers import SIZE, GatedEngine, build_app, chat_screen, header, idle, notifications, ready, send, wait_for


def compare_screen(pilot) -> CompareScreen:
    screen = pilot.app.screen
    assert isinstance(screen, CompareScreen), f"the compare screen is not on top: {screen!r}"
    return screen


async def answered(pilot) -> CompareScreen:
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, CompareScreen) and pilot.app.screen.comparison.answered,
                   what="both answers")
    await pilot.pause()
    return compare_screen(pilot)


async def ended(pilot) -> None:
    screen = chat_screen(pilot)
    await wait_for(pilot, lambda: screen._comparing is None and not screen.generating, what="the comparison to end")
    await pilot.pause()


def column_headers(view: CompareScreen) -> list[str]:
    return [str(column.query_one(".compare-header").render()) for column in view.query(CompareColumn)]


async def test_two_answers_side_by_side_a_pick_by_key_continues_with_it(home, store, tmp_path):
    engine = FakeEngine(["the first reply", "answer one", "answer two"])
    async with build_app(engine, home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "question")
        await idle(pilot)
        await pilot.press("alt+v")
        view = await answered(pilot)
        a, b = view.column(0), view.column(1)
        assert {a.streamed, b.streamed} == {"answer one", "answer two"}
        assert a.region.y == b.region.y and a.region.right <= b.region.x  # two columns, side by side
        assert all("smollm2" not in text for text in column_headers(view))  # the fake's name is fake-model
        assert all("fake-model" in text for text in column_headers(view))  # not blind: which is which is shown

        await pilot.press("1")
        await ended(pilot)
        chosen, rejected = (store.get_message(reply.id) for reply in view.comparison.replies)
        assert (chosen.rating, rejected.rating) == (1, -1)
        last = screen.chat.views()[-1]
        assert last.text == chosen.content and "rated up" in header(last) and "2/3" in header(last)
        assert any("You picked A" in note for note in notifications(pilot))
        result = export_preference_pairs(store, tmp_path / "pairs.jsonl")
        pairs = [json.loads(line) for line in result.paths["all"].read_text().splitlines()]
        assert {"prompt": [{"role": "user", "content": "question"}], "chosen": chosen.content,
                "rejected": rejected.content} in pairs

        await send(pilot, "and then?")  # the chosen answer goes on
        await idle(pilot)
        assert store.active_branch(store.latest_conversation().id)[1].id == chosen.id


async def test_blind_hides_the_models_until_the_pick_then_tells_them(home, store):
    engine = FakeEngine(["the first reply", "from the base"], name="base")
    factory = lambda spec: FakeEngine(["from the run"], name=spec)  # noqa: E731
    async with build_app(engine, home=home, store=store, factory=factory).run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "question")
        await idle(pilot)
        await send(pilot, "/compare my-run --blind")
        view = await answered(pilot)
        headers = column_headers(view)
        assert [text.split("  ·  ")[0] for text in headers] == ["A", "B"]
        assert not any("base" in text or "my-run" in text for text in headers)
        await pilot.press("b")  # the toggle shows them...
        await pilot.pause()
        assert any("my-run" in text for text in column_headers(view))
        await pilot.press("b")  # ...and hides them again, but this comparison no longer counts as blind
        await pilot.pause()
        await pilot.press("2")
        await ended(pilot)
        (told,) = [note for note in notifications(pilot) if "You picked B" in note]
        assert "base" in told and "my-run" in told
        (record,) = store.comparisons(store.latest_conversation().id)
        assert record.choice == "b" and not record.blind
        run_won = store.get_message(record.b_id).model == "my-run"  # B was picked
        win = store.win_rate("my-run", "base")
        assert (win.wins, win.picks, win.blind_picks) == (int(run_won), 1, 0)


async def test_neither_opens_the_editor_and_esc_there_goes_back_to_the_answers(home, store):
    engine = FakeEngine(["the first reply", "answer one", "answer two"])
    async with build_app(engine, home=home, store=store).run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "question")
        await idle(pilot)
        await send(pilot, "/compare")
        view = await answered(pilot)
        await pilot.press("n")
        await pilot.pause()
        assert isinstance(pilot.app.screen, TextEditorScreen)
        await pilot.press("escape")
        await pilot.pause()
        assert pilot.app.screen is view
        await pilot.press("n")
        await pilot.pause()
        pilot.app.screen.query_one("#editor").load_text("the ideal answer")
        await pilot.press("ctrl+s")
        await ended(pilot)
        a, b = (store.get_message(reply.id) for reply in view.comparison.replies)
        assert (a.rating, b.rating, a.correction, b.correction) == (-1, -1, "the ideal answer", "the ideal answer")


async def test_esc_while_an_answer_is_written_leaves_with_no_pick_and_the_window_goes_on(home, store):
    engine = GatedEngine("one two three four", before=2)
    engine.replies.appendleft("the first reply")
    engine.gate.set()  # the first reply streams through; the comparison's first answer is held mid-way
    async with build_app(engine, home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "question")
        await idle(pilot)
        engine.gate.clear()
        first = store.active_branch(store.latest_conversation().id)[-1]
        await pilot.press("alt+v")
        view = compare_screen(pilot)
        await wait_for(pilot, lambda: view.column(0).streamed, what="the first answer to start")
        await pilot.press("escape")
        await ended(pilot)
        assert pilot.app.screen is screen
        assert store.get_conversation(first.conversation_id).tip_id == first.id
        assert screen.chat.views()[-1].text == "the first reply"
        assert all(store.get_message(m.id).rating == 0 for m in store.siblings(first.id))
        assert any("No pick" in note for note in notifications(pilot))
        await pilot.press("h", "i")
        assert screen.prompt.text == "hi"  # typed text reaches the message box
        engine.gate.set()
        await send(pilot, "next")
        await idle(pilot)
        assert store.active_branch(first.conversation_id)[-1].role == "assistant"


async def test_compare_before_any_message_says_what_to_do(home, store):
    async with build_app(FakeEngine(), home=home, store=store).run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("alt+v")
        await pilot.pause()
        assert not isinstance(pilot.app.screen, CompareScreen)
        assert any("send a message first" in note.lower() for note in notifications(pilot))


async def test_a_model_that_fails_to_load_says_why_and_esc_leaves_the_chat_as_it_was(home, store):
    engine = FakeEngine(["the first reply"], name="base")
    factory = lambda spec: FakeEngine(name=spec, load_error=f"no model called {spec}; `tui-chat models` lists them")  # noqa: E731
    async with build_app(engine, home=home, store=store, factory=factory).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "question")
        await idle(pilot)
        await send(pilot, "/compare nosuch")
        view = compare_screen(pilot)
        keys = view.query_one("#compare-keys")
        await wait_for(pilot, lambda: "no model called nosuch" in str(keys.render()), what="the load error")
        await pilot.press("escape")
        await ended(pilot)
        branch = store.active_branch(store.latest_conversation().id)
        assert [m.content for m in branch] == ["question", "the first reply"] and len(store.messages(branch[0].conversation_id)) == 2
        assert screen.prompt.has_focus
        assert any("nothing was written" in note for note in notifications(pilot))
