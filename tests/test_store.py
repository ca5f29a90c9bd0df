"""The store: schema and migrations, the message tree, search, ratings, transactions, concurrency, damage."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading

import pytest

from sessions import NewConversation, NewMessage, NotFound, Store, StoreError, memory_database
from sessions.migrations import MIGRATIONS, migrate


@pytest.fixture
def store() -> Store:
    return Store(memory_database())


def columns(store: Store, table: str) -> set[str]:
    return {column.name for column in store.db[table].columns}


def test_migrations_create_the_schema_from_an_empty_database(store: Store) -> None:
    assert columns(store, "conversations") == {
        "id", "title", "created_at", "updated_at", "model", "system_prompt", "params",
        "exclude_from_training", "tip_id",
    }  # fmt: skip
    assert columns(store, "messages") == {
        "id", "conversation_id", "parent_id", "role", "content", "created_at", "model", "params", "status",
        "tokens_in", "tokens_out", "ttft_s", "duration_s", "rating", "correction", "error",
    }  # fmt: skip
    assert {"name", "dataset_path", "dataset_sha256", "conversation_ids", "metrics", "status"} <= columns(
        store, "training_runs"
    )
    assert "messages_fts" in store.db.table_names()
    assert {t.name for t in store.db["messages"].triggers} == {"messages_ai", "messages_ad", "messages_au"}
    assert [row["name"] for row in store.db["_migrations"].rows] == [m.__name__ for m in MIGRATIONS]


def test_rerunning_migrations_applies_nothing(store: Store) -> None:
    assert migrate(store.db) == []
    assert Store(store.db) is not None
    assert store.db["_migrations"].count == len(MIGRATIONS)


def test_messages_form_a_tree_with_branches(store: Store) -> None:
    chat = store.create_conversation("tree")
    question = store.add_message(chat.id, "user", "Name a colour")
    first = store.add_message(chat.id, "assistant", "Red")
    second = store.add_message(chat.id, "assistant", "Blue", parent_id=question.id)  # a regenerated reply
    follow_up = store.add_message(chat.id, "user", "Why blue?")

    assert [m.content for m in store.active_branch(chat.id)] == ["Name a colour", "Blue", "Why blue?"]
    assert [m.id for m in store.siblings(first.id)] == [first.id, second.id]
    assert [m.id for m in store.siblings(question.id)] == [question.id]

    branch = store.switch_branch(first.id)
    assert [m.content for m in branch] == ["Name a colour", "Red"]
    assert store.get_conversation(chat.id).tip_id == first.id

    # Switching to a message with descendants lands on its newest leaf.
    assert store.switch_branch(second.id)[-1].id == follow_up.id
    assert [m.id for m in store.path_to(second.id)] == [question.id, second.id]


def test_a_new_user_message_becomes_a_root_sibling(store: Store) -> None:
    chat = store.create_conversation()
    original = store.add_message(chat.id, "user", "first try")
    edited = store.add_message(chat.id, "user", "second try", parent_id=None)
    assert [m.id for m in store.siblings(original.id)] == [original.id, edited.id]
    assert store.active_branch(chat.id) == [edited]


def test_the_tree_stays_inside_its_conversation(store: Store) -> None:
    one, two = store.create_conversation("one"), store.create_conversation("two")
    message = store.add_message(one.id, "user", "hi")
    with pytest.raises(StoreError, match="another conversation"):
        store.add_message(two.id, "assistant", "hello", parent_id=message.id)
    with pytest.raises(StoreError, match="another conversation"):
        store.set_tip(two.id, message.id)
    assert store.messages(two.id) == []


def test_listing_is_paginated_newest_first(store: Store) -> None:
    ids = [store.create_conversation(f"chat {n}", created_at=1000.0 + n).id for n in range(5)]
    store.add_message(ids[1], "user", "bump", created_at=5000.0)  # activity moves it to the top
    assert [c.id for c in store.list_conversations(limit=2)] == [ids[1], ids[4]]
    assert [c.id for c in store.list_conversations(limit=2, offset=2)] == [ids[3], ids[2]]
    assert store.count_conversations() == 5
    assert store.message_counts([ids[1], ids[0]]) == {ids[1]: 1, ids[0]: 0}


def test_rename_update_and_missing_ids(store: Store) -> None:
    chat = store.create_conversation("old")
    assert store.rename_conversation(chat.id, "new").title == "new"
    updated = store.update_conversation(chat.id, system_prompt="Be brief.", exclude_from_training=True)
    assert (updated.system_prompt, updated.exclude_from_training) == ("Be brief.", True)
    with pytest.raises(NotFound, match="sessions list"):
        store.get_conversation(999)
    with pytest.raises(NotFound):
        store.set_rating(999, 1)


def test_search_ranks_matches_and_follows_updates(store: Store) -> None:
    chat = store.create_conversation("Geography")
    store.add_message(chat.id, "user", "What is the capital of France?")
    reply = store.add_message(chat.id, "assistant", "", status="streaming")
    store.update_message(reply.id, content="Paris is the capital of France.", status="complete")

    hits = store.search("paris")
    assert [(h.message_id, h.title, h.role) for h in hits] == [(reply.id, "Geography", "assistant")]
    assert "[Paris]" in hits[0].snippet
    assert len(store.search("capital france")) == 2
    assert store.search("capit")  # words match as prefixes

    store.update_message(reply.id, content="Lyon, actually.")
    assert store.search("paris") == []
    assert [h.message_id for h in store.search("lyon")] == [reply.id]


def test_search_ranks_among_the_most_recent_matches(store: Store, monkeypatch) -> None:
    chat = store.create_conversation()
    best = store.add_message(chat.id, "user", "kiwi kiwi kiwi kiwi")  # the best match, but the oldest
    newer = [store.add_message(chat.id, "user", f"kiwi and other fruit number {n}") for n in range(4)]
    assert store.search("kiwi")[0].message_id == best.id
    monkeypatch.setattr("sessions.search.SEARCH_CANDIDATES", 3)
    assert {hit.message_id for hit in store.search("kiwi")} == {m.id for m in newer[-3:]}


def test_search_takes_any_user_text_literally(store: Store) -> None:
    chat = store.create_conversation()
    store.add_message(chat.id, "user", 'he said "NEAR" (AND) stop*')
    for query in ['"', "NEAR(", "AND", "a OR", "stop*", "(", "-x", "col:umn"]:
        store.search(query)  # never an FTS5 syntax error
    assert len(store.search('said "near')) == 1
    assert store.search("   ") == []


def test_delete_cascades_to_messages_and_the_index(store: Store) -> None:
    keep = store.create_conversation("keep")
    store.add_message(keep.id, "user", "unrelated words")
    gone = store.create_conversation("gone")
    root = store.add_message(gone.id, "user", "zebra question")
    store.add_message(gone.id, "assistant", "zebra answer")
    store.add_message(gone.id, "assistant", "zebra again", parent_id=root.id)

    store.delete_conversation(gone.id)
    assert store.search("zebra") == []
    assert store.db.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
    assert store.db.execute("SELECT count(*) FROM messages_fts").fetchone()[0] == 1
    with pytest.raises(NotFound):
        store.delete_conversation(gone.id)
    # A reply still streaming into the deleted conversation has nowhere to go and is dropped quietly.
    store.update_message(root.id, content="late tokens")


def test_ratings_and_corrections(store: Store) -> None:
    chat = store.create_conversation()
    question = store.add_message(chat.id, "user", "2+2?")
    reply = store.add_message(chat.id, "assistant", "5")
    assert store.set_rating(reply.id, -1).rating == -1
    assert store.set_correction(reply.id, "4").correction == "4"
    assert store.set_correction(reply.id, "").correction is None
    with pytest.raises(StoreError, match="-1, 0 or"):
        store.set_rating(reply.id, 2)
    with pytest.raises(StoreError, match="only assistant"):
        store.set_correction(question.id, "x")
    with pytest.raises(StoreError, match="unknown role"):
        store.add_message(chat.id, "tool", "x")


def test_a_failed_transaction_writes_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError):
        with store.transaction():
            chat = store.create_conversation("half")
            store.add_message(chat.id, "user", "written then undone")
            raise RuntimeError("boom")
    assert store.count_conversations() == 0
    assert store.search("undone") == []

    with store.transaction():
        store.create_conversation("outer")
        with pytest.raises(RuntimeError):
            with store.transaction():  # nested: only the inner part is undone
                store.create_conversation("inner")
                raise RuntimeError("boom")
    assert [c.title for c in store.list_conversations()] == ["outer"]


def test_bulk_import_builds_trees(store: Store) -> None:
    ids = store.import_conversations(
        [
            NewConversation(
                "imported",
                [
                    NewMessage("user", "q"),
                    NewMessage("assistant", "a1", parent=0, rating=1),
                    NewMessage("assistant", "a2", parent=0),
                ],
                tip=1,
                system_prompt="sys",
                created_at=100.0,
            ),
            NewConversation("empty", []),
        ]
    )
    chat = store.get_conversation(ids[0])
    assert (chat.system_prompt, chat.created_at) == ("sys", 100.0)
    assert [(m.content, m.rating) for m in store.active_branch(chat.id)] == [("q", 0), ("a1", 1)]
    assert len(store.siblings(store.active_branch(chat.id)[1].id)) == 2
    assert store.get_conversation(ids[1]).tip_id is None
    assert [h.content for h in [store.get_message(store.search("a2")[0].message_id)]] == ["a2"]

    with pytest.raises(StoreError, match="parent must come before"):
        store.import_conversations([NewConversation("bad", [NewMessage("user", "x", parent=0)])])
    assert store.count_conversations() == 2


def test_two_writers_on_one_file_lose_nothing(tmp_path) -> None:
    path = tmp_path / "chat.db"
    stores = [Store.open(path), Store.open(path)]
    chats = [store.create_conversation(f"writer {n}") for n, store in enumerate(stores)]
    errors: list[BaseException] = []
    per_writer = 150

    def write(store: Store, chat_id: int) -> None:
        try:
            for n in range(per_writer):
                role = "user" if n % 2 == 0 else "assistant"
                if n % 10 == 0:
                    # Reads then writes as one unit: a deferred transaction here fails "database is locked".
                    with store.transaction():
                        store.add_message(chat_id, role, f"message {n}")
                else:
                    store.add_message(chat_id, role, f"message {n}")
                if n % 50 == 0:
                    store.import_conversations([NewConversation("bulk", [NewMessage("user", "bulk")])] * 20)
        except BaseException as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s, c.id)) for s, c in zip(stores, chats, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    reader = Store.open(path)
    for chat in chats:
        branch = reader.active_branch(chat.id)
        assert [m.content for m in branch] == [f"message {n}" for n in range(per_writer)]
    assert reader.count_conversations() == 2 + 2 * 3 * 20
    for store in (*stores, reader):
        store.close()


def _write_from_another_process(path: str, title: str, count: int) -> None:
    store = Store.open(path)
    chat = store.create_conversation(title)
    for n in range(count):
        with store.transaction():
            store.add_message(chat.id, "user", f"{title} {n}")
    store.close()


def test_two_app_processes_write_to_one_file(tmp_path) -> None:
    path = str(tmp_path / "chat.db")
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_from_another_process, args=(path, f"p{n}", 150)) for n in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=60)
    assert [writer.exitcode for writer in writers] == [0, 0]
    store = Store.open(path)
    for conversation in store.list_conversations():
        assert [m.content for m in store.active_branch(conversation.id)] == [
            f"{conversation.title} {n}" for n in range(150)
        ]
    assert store.count_conversations() == 2
    store.close()


def test_two_stores_opening_a_new_file_at_once_migrate_once(tmp_path) -> None:
    path = tmp_path / "new.db"
    opened: list[Store] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            opened.append(Store.open(path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert opened[0].db["_migrations"].count == len(MIGRATIONS)
    for store in opened:
        store.close()


def test_a_file_that_is_not_a_database_is_one_clear_error(tmp_path) -> None:
    path = tmp_path / "chat.db"
    path.write_bytes(b"this is not sqlite at all " * 100)
    with pytest.raises(StoreError) as raised:
        Store.open(path)
    message = str(raised.value)
    assert "\n" not in message and "not a database" in message and "move it aside" in message


def test_a_truncated_database_is_one_clear_error(tmp_path) -> None:
    good = tmp_path / "good.db"
    store = Store.open(good)
    chat = store.create_conversation("x")
    for n in range(200):
        store.add_message(chat.id, "user", f"padding message number {n} " * 20)
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    damaged = tmp_path / "damaged.db"
    data = good.read_bytes()
    damaged.write_bytes(data[:100] + b"\xff" * (len(data) - 100))  # header intact, every page garbage
    with pytest.raises(StoreError) as raised:
        Store.open(damaged)
    assert "\n" not in str(raised.value) and "move it aside" in str(raised.value)


def test_a_missing_folder_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        Store.open(tmp_path / "nope" / "chat.db")


def test_backup_is_a_working_copy(store: Store, tmp_path) -> None:
    chat = store.create_conversation("saved")
    store.add_message(chat.id, "user", "keep me")
    target = store.backup(tmp_path / "backup.db")
    copy = Store(sqlite_utils_database(target))
    assert [c.title for c in copy.list_conversations()] == ["saved"]
    assert copy.search("keep")
    with pytest.raises(StoreError, match="already exists"):
        store.backup(target)
    with pytest.raises(StoreError, match="does not exist"):
        store.backup(tmp_path / "missing" / "b.db")


def sqlite_utils_database(path):
    from sqlite_utils import Database

    return Database(sqlite3.connect(str(path)))


def test_a_deleted_run_keeps_its_record_and_a_running_one_cannot_be_deleted(store: Store) -> None:
    chat = store.create_conversation("taught")
    run = store.create_training_run("smollm2-sft-1", base_model="smollm2", conversation_ids=[chat.id])
    store.update_training_run(run.id, status="running", pid=1234)
    with pytest.raises(StoreError, match="^run smollm2-sft-1 is still running; stop it first"):
        store.mark_training_run_deleted(run.id)
    assert store.get_training_run(run.id).status == "running"
    store.update_training_run(run.id, status="finished", metrics={"steps": 6})
    deleted = store.mark_training_run_deleted(run.id)
    assert (deleted.status, deleted.pid, deleted.metrics, deleted.conversation_ids) == ("deleted", None, {"steps": 6},
                                                                                         [chat.id])
    with pytest.raises(NotFound):
        store.mark_training_run_deleted(run.id + 1)
