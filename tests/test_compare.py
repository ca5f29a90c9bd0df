"""/compare in the chat core: two answers to the last prompt, the pick stored as rated siblings and a comparison,
blind labels, no pick, the win rate, and the pairs the export makes of it."""

from __future__ import annotations

import json

import pytest

from sessions import Store, memory_database
from sessions.export import export_preference_pairs
from tests.fakes import FakeEngine
from tui_chat.chat import commands
from tui_chat.chat.compare import SAMPLE_TEMPERATURE, CompareError, plan_sides
from tui_chat.chat.session import ChatSession
from tui_chat.inference.contract import GenerationParams


class Engines:
    """An engine factory that remembers what it opened; each model answers with its name and a count."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def __call__(self, spec: str) -> FakeEngine:
        self.opened.append(spec)
        return FakeEngine([f"{spec} says {n}" for n in range(1, 20)], name=spec)


@pytest.fixture
def session() -> ChatSession:
    chat = ChatSession(Store(memory_database()), Engines(), model="base", params=GenerationParams(temperature=0))
    chat.send("What is 2+2?", lambda chunk: None)
    return chat


def answer_both(comparison) -> None:
    for index in (0, 1):
        comparison.answer(index)


def pairs(store: Store, tmp_path) -> list[dict]:
    result = export_preference_pairs(store, tmp_path / "pairs.jsonl")
    return [json.loads(line) for line in result.paths["all"].read_text().splitlines()]


def test_parse_takes_a_spec_and_blind() -> None:
    assert commands.parse("/compare") == commands.Compare(None, False)
    assert commands.parse("/compare my-run --blind") == commands.Compare("my-run", True)
    with pytest.raises(commands.CommandError, match="SPEC is one model"):
        commands.parse("/compare a b")


def test_without_a_spec_two_samples_are_sampled_with_different_seeds_even_when_greedy(session) -> None:
    comparison = session.compare(seed=7)
    answer_both(comparison)
    (_, first), (_, second) = session.engine.calls[-2:]
    assert first.temperature == second.temperature == SAMPLE_TEMPERATURE
    assert {first.seed, second.seed} == {7, 8}
    original, *compared = session.store.siblings(comparison.replies[0].id)
    assert [m.id for m in compared] == [r.id for r in comparison.replies]  # versions of the reply it had
    assert session.params.temperature == 0  # the chat's own settings are untouched


def test_a_pick_rates_both_continues_with_the_chosen_and_is_stored(session, tmp_path) -> None:
    comparison = session.compare(seed=1)
    with pytest.raises(CompareError, match="wait for both answers"):
        comparison.pick("1")
    answer_both(comparison)
    a, b = comparison.replies
    chosen = comparison.pick("2")
    store = session.store
    assert chosen.id == b.id and chosen.rating == 1 and store.get_message(a.id).rating == -1
    assert store.active_branch(session.conversation_id)[-1].id == b.id
    (record,) = store.comparisons(session.conversation_id)
    assert (record.a_id, record.b_id, record.choice, record.seed, record.blind) == (a.id, b.id, "b", 1, False)
    assert {"chosen": b.content, "rejected": a.content} in [
        {"chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs(store, tmp_path)
    ]
    assert "You picked B" in comparison.outcome()
    with pytest.raises(CompareError, match="already ended"):
        comparison.pick("a")


def test_against_another_model_each_writes_one_answer_through_the_factory(session) -> None:
    comparison = session.compare("my-run", seed=3)
    answer_both(comparison)
    assert sorted(reply.model for reply in comparison.replies) == ["base", "my-run"]
    assert session.engine_factory.opened.count("my-run") == 1
    session.compare("my-run", seed=4).answer(0)
    session.compare("my-run", seed=4).answer(1)
    assert session.engine_factory.opened.count("my-run") == 1  # kept open for the next comparison
    assert session.model == "base" and session.engine.name == "base"  # the chat goes on with its own model


def test_blind_hides_the_models_until_the_pick_in_an_order_the_seed_decides(session) -> None:
    orders = {tuple(side.model for side in plan_sides("base", "run", GenerationParams(), seed)) for seed in range(8)}
    assert orders == {("base", "run"), ("run", "base")}  # shuffled, not always the current model first
    comparison = session.compare("my-run", blind=True, seed=5)
    assert [comparison.label(0), comparison.label(1)] == ["A", "B"]
    answer_both(comparison)
    comparison.pick("a")
    assert comparison.label(0) == f"A · {comparison.sides[0].model}"  # revealed
    assert comparison.sides[0].model in comparison.outcome() and comparison.sides[1].model in comparison.outcome()
    assert session.store.comparisons(session.conversation_id)[0].blind


def test_showing_the_models_before_the_pick_makes_it_not_blind(session) -> None:
    comparison = session.compare("my-run", blind=True, seed=5)
    answer_both(comparison)
    comparison.toggle_blind()
    comparison.toggle_blind()
    comparison.pick("b")
    assert not session.store.comparisons(session.conversation_id)[0].blind


def test_neither_rates_both_down_and_the_ideal_answer_beats_each(session, tmp_path) -> None:
    comparison = session.compare(seed=2)
    answer_both(comparison)
    continued = comparison.pick("n", "4")
    a, b = (session.store.get_message(reply.id) for reply in comparison.replies)
    assert (a.rating, b.rating, a.correction, b.correction) == (-1, -1, "4", "4")
    assert continued.id == a.id
    found = {(p["chosen"], p["rejected"]) for p in pairs(session.store, tmp_path)}
    assert {("4", a.content), ("4", b.content)} <= found


def test_no_pick_rates_nothing_and_goes_on_from_the_reply_it_had(session) -> None:
    before = session.branch()[-1]
    comparison = session.compare(seed=2)
    answer_both(comparison)
    comparison.skip()
    assert session.branch()[-1].id == before.id
    assert all(session.store.get_message(reply.id).rating == 0 for reply in comparison.replies)
    assert session.store.comparisons(session.conversation_id)[0].choice is None


def test_the_win_rate_counts_picks_between_a_run_and_its_base(session) -> None:
    for seed, run_wins, blind in [(1, True, True), (2, True, False), (3, False, True), (4, True, True)]:
        comparison = session.compare("my-run", blind=blind, seed=seed)
        answer_both(comparison)
        run_side = [side.model for side in comparison.sides].index("my-run")
        comparison.pick("ab"[run_side if run_wins else 1 - run_side])
    neither = session.compare("my-run", seed=9)
    answer_both(neither)
    neither.pick("n")
    rate = session.store.win_rate("my-run", "base")
    assert (rate.wins, rate.picks, rate.blind_wins, rate.blind_picks) == (3, 4, 2, 3)
    assert session.store.win_rate("base", "my-run").wins == 1


def test_the_migration_makes_the_comparisons_table() -> None:
    store = Store(memory_database())
    assert {column.name for column in store.db["comparisons"].columns} == {
        "id", "conversation_id", "prompt_id", "a_id", "b_id", "created_at", "seed", "blind", "choice"
    }
    assert "m002_comparisons" in {row["name"] for row in store.db["_migrations"].rows}


def picks(store: Store, run: str, base: str, outcomes: list[tuple[bool, bool]]) -> None:
    """Comparisons of ``run`` against ``base``, one per (run won, blind)."""
    conversation = store.create_conversation("compared")
    for run_won, blind in outcomes:
        prompt = store.add_message(conversation.id, "user", "q")
        a = store.add_message(conversation.id, "assistant", "from the run", model=run)
        b = store.add_message(conversation.id, "assistant", "from the base", model=base, parent_id=prompt.id)
        store.record_comparison(prompt.id, a.id, b.id, seed=0, blind=blind, choice="a" if run_won else "b")


def test_models_show_and_the_run_summary_give_the_win_rate_over_the_base(tmp_path) -> None:
    from click.testing import CliRunner

    from trainer.home import DataHome
    from tui_chat.cli import CliContext, main
    from tui_chat.training.summary import finish_summary

    home, store = DataHome(tmp_path / "home").ensure(), Store(memory_database())
    run = store.create_training_run("smollm2-sft-1", base_model="smollm2")
    run = store.update_training_run(run.id, status="finished", metrics={"steps": 6})

    def show() -> str:
        result = CliRunner(env={"COLUMNS": "200"}).invoke(
            main, ["models", "show", "smollm2-sft-1"], obj=CliContext(home, _store=store)
        )
        assert result.exit_code == 0, result.output
        return result.output

    assert "not compared yet: in the chat on smollm2, /compare smollm2-sft-1 --blind" in show()
    picks(store, "smollm2-sft-1", "smollm2", [(True, True), (False, True), (True, False), (True, True)])
    said = "preferred over smollm2 in 3 of 4 comparisons (2 of 3 blind)"
    assert said in show()
    assert said in finish_summary(run, store.win_rate(run.name, run.base_model))


def test_both_models_load_before_the_first_answer_and_blind_loads_show_no_progress() -> None:
    shown: list[str] = []

    def load_showing(engine):
        shown.append(engine.name)  # a front end's progress names the model
        return engine.load()

    session = ChatSession(Store(memory_database()), Engines(), model="base", load_engine=load_showing)
    session.send("q", lambda chunk: None)
    blind = session.compare("my-run", blind=True, seed=0)
    blind.prepare()
    assert shown == ["base"] and session._compared[1].ready  # loaded, without naming it
    session._compared = None
    session.compare("my-run", seed=0).prepare()
    assert shown == ["base", "my-run"]
