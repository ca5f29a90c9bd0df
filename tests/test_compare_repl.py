"""/compare in the REPL: the two answers one after the other, then the pick at a prompt (1, 2, n, Enter)."""

from __future__ import annotations

from .repl_helpers import Harness, chat, home  # noqa: F401  (chat, home: fixtures)


def test_two_answers_then_a_pick_rates_them_and_goes_on_with_the_chosen(chat: Harness) -> None:
    chat.replies.extend(["the first reply", "answer one", "answer two"])
    output = chat.run("question\r/compare\r2\r")
    comparison_replies = chat.store.siblings(chat.branch()[-1].id)[1:]
    a, b = comparison_replies
    assert output.index("answer one") < output.index("answer two")  # one after the other
    assert "answer A · smollm2" in output and "answer B · smollm2" in output
    assert "You picked B" in output
    assert (a.rating, b.rating) == (-1, 1) and chat.branch()[-1].id == b.id


def test_blind_shows_only_a_and_b_until_the_pick(home) -> None:
    harness = Harness(home, ["the first reply", "answer one", "answer two"])
    output = harness.run("question\r/compare other --blind\r1\r")
    before_pick, _, after_pick = output.partition("You picked A")
    assert "other" not in before_pick.replace("/compare other", "")  # neither the headings nor the stats name it
    assert "other" in after_pick or "other" in output[output.index("You picked A"):]
    (record,) = harness.store.comparisons(harness.session.conversation_id)
    assert record.blind and record.choice == "a"


def test_enter_leaves_without_a_pick_and_n_asks_for_the_ideal_answer(chat: Harness) -> None:
    chat.replies.extend(["the first reply", "one", "two", "three", "four"])
    output = chat.run("question\r/compare\r\r")
    assert "No pick" in output and chat.branch()[-1].content == "the first reply"
    chat.run("/compare\rn\r\x15the ideal answer\r")  # Ctrl+U clears the answer prefilled with A
    replies = chat.store.siblings(chat.branch()[-1].id)
    assert [r.correction for r in replies[-2:]] == ["the ideal answer"] * 2
    assert [r.rating for r in replies[-2:]] == [-1, -1]


def test_a_bad_pick_asks_again(chat: Harness) -> None:
    chat.replies.extend(["the first reply", "one", "two"])
    output = chat.run("question\r/compare\rx\r1\r")
    assert "error: pick 1 (A), 2 (B) or n (neither), not 'x'" in output and "You picked A" in output


def test_tab_after_compare_offers_blind_and_the_models(chat: Harness) -> None:
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document

    from tui_chat.repl.completion import ReplCompleter

    completer = ReplCompleter(lambda: ["default", "my-run"])
    offered = [c.text for c in completer.get_completions(Document("/compare "), CompleteEvent())]
    assert offered == ["--blind", "default", "my-run"]
