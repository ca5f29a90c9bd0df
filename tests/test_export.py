"""Exports: how ratings, corrections, branches and filters shape the dataset; the split; pairs; atomic writes."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest

from sessions import NotFound, Store, memory_database
from sessions.export import (
    ExportError,
    ExportFilters,
    export_markdown,
    export_messages,
    export_preference_pairs,
    manifest_path_for,
)


@pytest.fixture
def store() -> Store:
    return Store(memory_database())


def chat(store: Store, *turns: str, system: str | None = None, title: str = "chat", created_at: float | None = None):
    """A conversation of alternating user/assistant turns; returns (conversation, messages)."""
    conversation = store.create_conversation(title, system_prompt=system, created_at=created_at)
    messages = [
        store.add_message(conversation.id, "user" if n % 2 == 0 else "assistant", text, created_at=created_at)
        for n, text in enumerate(turns)
    ]
    return conversation, messages


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def pairs(record: dict) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in record["messages"]]


def test_messages_follow_the_active_branch_with_the_system_prompt_first(store: Store, tmp_path: Path) -> None:
    conversation, (question, first, *_rest) = chat(store, "Hi", "Hello", "Bye", "See you", system="Be kind.")
    store.add_message(conversation.id, "assistant", "Hey there", parent_id=question.id)  # the active branch now

    result = export_messages(store, tmp_path / "data.jsonl")
    assert [pairs(r) for r in lines(tmp_path / "data.jsonl")] == [
        [("system", "Be kind."), ("user", "Hi"), ("assistant", "Hey there")]
    ]
    store.switch_branch(first.id)
    export_messages(store, tmp_path / "data.jsonl")
    assert pairs(lines(tmp_path / "data.jsonl")[0])[-1] == ("assistant", "See you")
    assert result.paths == {"all": tmp_path / "data.jsonl"}
    assert result.conversation_ids == [conversation.id]


def test_corrections_replace_and_thumbs_down_cut_the_branch(store: Store, tmp_path: Path) -> None:
    corrected, corrected_messages = chat(store, "2+2?", "5", "and 3+3?", "6")
    store.set_rating(corrected_messages[1].id, -1)
    store.set_correction(corrected_messages[1].id, "4")
    cut, cut_messages = chat(store, "Name a fruit", "Apple", "Another", "A rock", "Why?", "Because")
    store.set_rating(cut_messages[3].id, -1)
    only_bad, bad_messages = chat(store, "Hello?", "Go away")
    store.set_rating(bad_messages[1].id, -1)

    result = export_messages(store, tmp_path / "d.jsonl")
    records = [pairs(r) for r in lines(tmp_path / "d.jsonl")]
    assert records == [
        [("user", "2+2?"), ("assistant", "4"), ("user", "and 3+3?"), ("assistant", "6")],
        [("user", "Name a fruit"), ("assistant", "Apple")],  # the bad reply, its question and what follows: gone
    ]
    assert result.conversation_ids == [corrected.id, cut.id]
    assert result.left_out["corrected"] == 1
    assert result.left_out["thumbs_down"] == 2
    assert result.left_out["no_assistant_turn"] == 1
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["left_out"] == result.left_out
    assert manifest["conversation_ids"] == [corrected.id, cut.id]


@pytest.mark.parametrize("status", ["streaming", "stopped", "failed"])
def test_unfinished_replies_are_cut(store: Store, tmp_path: Path, status: str) -> None:
    conversation, _ = chat(store, "One", "First answer", "Two")
    store.add_message(conversation.id, "assistant", "half an ans", status=status)
    store.add_message(conversation.id, "user", "Three")
    result = export_messages(store, tmp_path / "d.jsonl")
    assert pairs(lines(tmp_path / "d.jsonl")[0]) == [("user", "One"), ("assistant", "First answer")]
    assert result.left_out["unfinished"] == 1


def test_excluded_conversations_are_left_out(store: Store, tmp_path: Path) -> None:
    kept, _ = chat(store, "keep", "yes")
    private, _ = chat(store, "private", "shh")
    store.update_conversation(private.id, exclude_from_training=True)
    result = export_messages(store, tmp_path / "d.jsonl")
    assert result.conversation_ids == [kept.id]
    assert result.left_out["excluded"] == 1


def test_min_rating_keeps_only_replies_rated_up_or_corrected(store: Store, tmp_path: Path) -> None:
    conversation, messages = chat(store, "a", "A", "b", "B", "c", "C")
    store.set_rating(messages[1].id, 1)
    store.set_correction(messages[3].id, "B!")
    result = export_messages(store, tmp_path / "d.jsonl", ExportFilters(min_rating=1))
    assert pairs(lines(tmp_path / "d.jsonl")[0]) == [
        ("user", "a"),
        ("assistant", "A"),
        ("user", "b"),
        ("assistant", "B!"),
    ]
    assert result.left_out["below_min_rating"] == 1


def test_since_and_conversation_filters(store: Store, tmp_path: Path) -> None:
    old, _ = chat(store, "old", "reply", created_at=1_000.0)
    new, _ = chat(store, "new", "reply", created_at=2_000.0)
    other, _ = chat(store, "other", "reply", created_at=3_000.0)
    assert export_messages(store, tmp_path / "a.jsonl", ExportFilters(since=1_500.0)).conversation_ids == [
        new.id,
        other.id,
    ]
    assert export_messages(
        store, tmp_path / "b.jsonl", ExportFilters(conversation_ids=(other.id, old.id))
    ).conversation_ids == [
        old.id,
        other.id,
    ]
    with pytest.raises(NotFound):
        export_messages(store, tmp_path / "c.jsonl", ExportFilters(conversation_ids=(999,)))
    with pytest.raises(ExportError, match="no conversations match"):
        export_messages(store, tmp_path / "c.jsonl", ExportFilters(since=9_999.0))
    assert not (tmp_path / "c.jsonl").exists()


def test_exact_duplicates_are_written_once(store: Store, tmp_path: Path) -> None:
    first, _ = chat(store, "same", "answer")
    chat(store, "same", "answer")
    chat(store, "same", "different answer")
    result = export_messages(store, tmp_path / "d.jsonl")
    assert len(lines(tmp_path / "d.jsonl")) == 2
    assert result.left_out["duplicates"] == 1
    assert result.conversation_ids[0] == first.id


def test_nothing_usable_is_an_error_naming_why(store: Store, tmp_path: Path) -> None:
    _, messages = chat(store, "q", "bad")
    store.set_rating(messages[1].id, -1)
    with pytest.raises(ExportError, match=r"1 conversation considered.*1 thumbs-down"):
        export_messages(store, tmp_path / "d.jsonl")


def test_the_split_is_deterministic_disjoint_and_stable(store: Store, tmp_path: Path) -> None:
    for n in range(200):
        chat(store, f"question {n}", f"answer {n}")
    whole = export_messages(store, tmp_path / "all.jsonl")
    split = export_messages(store, tmp_path / "d.jsonl", ExportFilters(val_fraction=0.25))
    assert split.paths == {"train": tmp_path / "d.train.jsonl", "val": tmp_path / "d.val.jsonl"}
    train, val = (split.paths["train"].read_text().splitlines(), split.paths["val"].read_text().splitlines())
    assert 30 <= len(val) <= 70  # ~50 expected
    assert sorted(train + val) == sorted((tmp_path / "all.jsonl").read_text().splitlines())
    assert split.records == {"train": len(train), "val": len(val)} and whole.total == 200

    again = export_messages(store, tmp_path / "e.jsonl", ExportFilters(val_fraction=0.25))
    assert again.sha256 == split.sha256
    # More conversations later never move an old record to the other side.
    for n in range(200, 260):
        chat(store, f"question {n}", f"answer {n}")
    later = export_messages(store, tmp_path / "f.jsonl", ExportFilters(val_fraction=0.25))
    assert set(val) <= set(later.paths["val"].read_text().splitlines())
    assert set(train) <= set(later.paths["train"].read_text().splitlines())

    manifest = json.loads(manifest_path_for(tmp_path / "d.jsonl").read_text())
    assert manifest["files"]["val"] == {
        "path": "d.val.jsonl",
        "records": len(val),
        "sha256": hashlib.sha256(split.paths["val"].read_bytes()).hexdigest(),
    }
    assert manifest["filters"]["val_fraction"] == 0.25


def test_files_are_private_and_hashed_in_the_manifest(store: Store, tmp_path: Path) -> None:
    chat(store, "q", "a")
    result = export_messages(store, tmp_path / "d.jsonl")
    for path in (result.paths["all"], result.manifest_path):
        assert os.stat(path).st_mode & 0o777 == 0o600
    assert result.sha256["all"] == hashlib.sha256(result.paths["all"].read_bytes()).hexdigest()
    assert result.manifest_path == tmp_path / "d.manifest.json"
    assert "exported 1 conversation to" in result.summary()


def test_preference_pairs_from_rated_siblings_and_corrections(store: Store, tmp_path: Path) -> None:
    conversation, (question, good) = chat(store, "Capital of France?", "Paris.", system="Answer briefly.")
    bad = store.add_message(conversation.id, "assistant", "Lyon.", parent_id=question.id)
    neutral = store.add_message(conversation.id, "assistant", "France's capital is Paris.", parent_id=question.id)
    store.add_message(conversation.id, "assistant", "Par", parent_id=question.id, status="stopped")
    store.set_rating(good.id, 1)
    store.set_rating(bad.id, -1)
    follow_up = store.add_message(conversation.id, "user", "And Spain?", parent_id=good.id)
    wrong = store.add_message(conversation.id, "assistant", "Barcelona.")
    store.set_correction(wrong.id, "Madrid.")
    store.set_rating(neutral.id, 0)

    result = export_preference_pairs(store, tmp_path / "p.jsonl")
    records = lines(tmp_path / "p.jsonl")
    prompt = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Capital of France?"}]
    as_tuples = {(json.dumps(r["prompt"]), r["chosen"], r["rejected"]) for r in records}
    assert as_tuples == {
        (json.dumps(prompt), "Paris.", "Lyon."),
        (json.dumps(prompt), "Paris.", "France's capital is Paris."),
        (json.dumps(prompt), "France's capital is Paris.", "Lyon."),
        (
            json.dumps(
                prompt + [{"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And Spain?"}]
            ),
            "Madrid.",
            "Barcelona.",
        ),
    }
    assert len(records) == 4
    assert result.left_out["unfinished"] == 1
    assert result.conversation_ids == [conversation.id]
    assert follow_up.id


def test_unrated_siblings_make_no_pairs(store: Store, tmp_path: Path) -> None:
    conversation, (question, _) = chat(store, "q", "one")
    store.add_message(conversation.id, "assistant", "two", parent_id=question.id)
    with pytest.raises(ExportError, match="nothing to export"):
        export_preference_pairs(store, tmp_path / "p.jsonl")


def test_markdown_transcripts(store: Store, tmp_path: Path) -> None:
    conversation, (_, reply) = chat(store, "What is 2+2?", "5", system="Be exact.", title="Maths")
    store.set_rating(reply.id, -1)
    store.set_correction(reply.id, "4")
    private, _ = chat(store, "secret", "ok", title="Private")
    store.update_conversation(private.id, exclude_from_training=True)

    result = export_markdown(store, tmp_path / "chats.md")
    text = (tmp_path / "chats.md").read_text()
    assert "# Maths" in text and "**System prompt:** Be exact." in text
    assert "### Assistant · 👎\n\n5\n" in text and "> **Correction:**\n>\n> 4" in text
    assert "# Private" in text and "excluded from training" in text
    assert result.conversation_ids == [conversation.id, private.id]
    assert result.manifest_path == tmp_path / "chats.manifest.json"


class _FailingFile:
    """Wraps a real file; raises ``error`` on the second write (the export dies halfway through)."""

    def __init__(self, real, error: BaseException) -> None:
        self.real, self.error, self.writes = real, error, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.real.close()

    def write(self, text: str) -> int:
        self.writes += 1
        if self.writes == 2:
            raise self.error
        return self.real.write(text)

    def __getattr__(self, name):
        return getattr(self.real, name)


@pytest.mark.parametrize(
    "error, raised",
    [(KeyboardInterrupt(), KeyboardInterrupt), (OSError(errno.ENOSPC, "No space left on device"), ExportError)],
)
def test_an_interrupted_export_leaves_the_old_file(store, tmp_path, monkeypatch, error, raised) -> None:
    for n in range(5):
        chat(store, f"q{n}", f"a{n}")
    target = tmp_path / "d.jsonl"
    target.write_text("old contents\n")
    real_fdopen = os.fdopen
    monkeypatch.setattr("sessions.export.os.fdopen", lambda *a, **k: _FailingFile(real_fdopen(*a, **k), error))

    with pytest.raises(raised):
        export_messages(store, target)
    assert target.read_text() == "old contents\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]  # no temp file, no manifest

    monkeypatch.undo()
    export_messages(store, target)
    assert len(lines(target)) == 5


def test_a_missing_folder_and_bad_filters_are_clear_errors(store: Store, tmp_path: Path) -> None:
    chat(store, "q", "a")
    with pytest.raises(ExportError, match="does not exist"):
        export_messages(store, tmp_path / "nope" / "d.jsonl")
    with pytest.raises(ExportError, match="val-fraction"):
        ExportFilters(val_fraction=1.0)
    with pytest.raises(ExportError, match="min-rating"):
        ExportFilters(min_rating=3)


def test_preference_pairs_are_counted_by_source_ratings_corrections_and_compare_picks(store, tmp_path) -> None:
    conversation, (question, rated_up) = chat(store, "q1", "good")
    rated_down = store.add_message(conversation.id, "assistant", "bad", parent_id=question.id)
    store.set_rating(rated_up.id, 1)
    store.set_rating(rated_down.id, -1)
    follow_up = store.add_message(conversation.id, "user", "q2", parent_id=rated_up.id)
    wrong = store.add_message(conversation.id, "assistant", "wrong")
    store.set_correction(wrong.id, "right")
    store.add_message(conversation.id, "user", "q3", parent_id=wrong.id)
    a = store.add_message(conversation.id, "assistant", "picked")
    b = store.add_message(conversation.id, "assistant", "passed over", parent_id=a.parent_id)
    store.record_comparison(a.parent_id, a.id, b.id, seed=1, blind=True, choice="a", ratings={a.id: 1, b.id: -1})

    result = export_preference_pairs(store, tmp_path / "p.jsonl")
    found = {(r["chosen"], r["rejected"]) for r in lines(tmp_path / "p.jsonl")}
    assert found == {("good", "bad"), ("right", "wrong"), ("picked", "passed over")}
    assert result.sources == {"ratings": 1, "corrections": 1, "compare": 1}
    assert "(from 1 rated versions, 1 corrections, 1 compare picks)" in result.summary()
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["counts"]["sources"] == {"ratings": 1, "corrections": 1, "compare": 1}
    assert follow_up.id


def test_preference_pairs_split_by_conversation_never_straddle(store: Store, tmp_path: Path) -> None:
    for n in range(60):
        conversation, (question, first) = chat(store, f"question {n}", f"one {n}")
        for text, rating in ((f"two {n}", -1), (f"three {n}", -1)):
            store.set_rating(store.add_message(conversation.id, "assistant", text, parent_id=question.id).id, rating)
        store.set_rating(first.id, 1)
    result = export_preference_pairs(store, tmp_path / "p.jsonl", ExportFilters(val_fraction=0.3))
    sides = {name: {r["prompt"][0]["content"] for r in lines(path)} for name, path in result.paths.items()}
    assert sides["train"] and sides["val"] and not sides["train"] & sides["val"]  # a prompt is on one side only
    assert result.records["train"] + result.records["val"] == 120 and result.records["val"] % 2 == 0
    again = export_preference_pairs(store, tmp_path / "q.jsonl", ExportFilters(val_fraction=0.3))
    assert again.sha256 == result.sha256
