"""Imports: messages JSONL and ChatGPT exports become trees; malformed files are refused and import nothing."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from sessions import Store, memory_database
from sessions.export import export_messages
from sessions.importers import MalformedImport, import_file

JSONL_RECORDS = [
    {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Italy?"},
            {"role": "assistant", "content": "Rome."},
        ]
    },
    {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]},
]


@pytest.fixture
def store() -> Store:
    return Store(memory_database())


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def node(node_id, parent, children, role=None, text=None, *, content_type="text", t=0.0, **extra):
    message = None
    if role is not None:
        parts = text if isinstance(text, list) else [text]
        message = {
            "id": node_id,
            "author": {"role": role},
            "content": {"content_type": content_type, "parts": parts},
            "create_time": t,
            "metadata": extra.pop("metadata", {}),
            **extra,
        }
    return {"id": node_id, "message": message, "parent": parent, "children": children}


def chatgpt_conversations() -> list[dict]:
    """A realistic tree: hidden system root, a regenerated reply, a tool call and its output, an image message."""
    mapping = {
        "root": node("root", None, ["sys"]),
        "sys": node("sys", "root", ["u1"], "system", "", metadata={"is_visually_hidden_from_conversation": True}),
        "u1": node("u1", "sys", ["a1", "a2"], "user", "What is 2+2?", t=100.0),
        "a1": node("a1", "u1", [], "assistant", "Five.", t=101.0, metadata={"model_slug": "gpt-4o"}),
        "a2": node("a2", "u1", ["u2"], "assistant", "Four.", t=102.0, metadata={"model_slug": "gpt-4o"}),
        "u2": node("u2", "a2", ["call"], "user", "Check it in Python", t=103.0),
        "call": node("call", "u2", ["out"], "assistant", "print(2+2)", content_type="code", recipient="python"),
        "out": node("out", "call", ["a3"], "tool", "4", content_type="execution_output"),
        "a3": node("a3", "out", ["u3"], "assistant", "Python says 4.", t=106.0),
        "u3": node(
            "u3",
            "a3",
            ["a4"],
            "user",
            [{"asset_pointer": "file-1"}, "What is in this image?"],
            content_type="multimodal_text",
            t=107.0,
        ),  # fmt: skip
        "a4": node("a4", "u3", [], "assistant", "A cat.", t=108.0),
    }
    return [
        {
            "title": "Arithmetic",
            "create_time": 100.0,
            "update_time": 200.0,
            "mapping": mapping,
            "current_node": "a4",
            "default_model_slug": "gpt-4o",
        },
        {
            "title": "Only a tool",
            "mapping": {
                "r": node("r", None, ["t"]),
                "t": node("t", "r", [], "tool", "output", content_type="execution_output"),
            },
            "current_node": "t",
        },
    ]


def test_jsonl_import_makes_one_branch_per_line(store: Store, tmp_path: Path) -> None:
    result = import_file(store, write_jsonl(tmp_path / "in.jsonl", JSONL_RECORDS))
    assert (result.format, result.conversations, result.messages) == ("messages", 2, 6)
    first = store.get_conversation(result.conversation_ids[0])
    assert (first.title, first.system_prompt) == ("Capital of France?", "You are terse.")
    assert [(m.role, m.content) for m in store.active_branch(first.id)] == [
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
        ("user", "And of Italy?"),
        ("assistant", "Rome."),
    ]
    assert result.summary().startswith("imported 2 conversations (6 messages) from")


def test_import_then_export_gives_back_the_same_conversations(store: Store, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", JSONL_RECORDS)
    import_file(store, source)
    export_messages(store, tmp_path / "out.jsonl")
    exported = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert exported == JSONL_RECORDS


def test_chatgpt_export_becomes_our_tree(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps(chatgpt_conversations()))
    result = import_file(store, path)
    assert (result.format, result.conversations, result.skipped_conversations) == ("chatgpt", 1, 1)
    assert result.skipped_nodes == 4  # the hidden system message, the tool call, its output, the lone tool node

    conversation = store.get_conversation(result.conversation_ids[0])
    assert (conversation.title, conversation.created_at, conversation.updated_at) == ("Arithmetic", 100.0, 200.0)
    assert conversation.model == "gpt-4o" and conversation.system_prompt is None
    branch = store.active_branch(conversation.id)
    assert [(m.role, m.content) for m in branch] == [
        ("user", "What is 2+2?"),
        ("assistant", "Four."),
        ("user", "Check it in Python"),
        ("assistant", "Python says 4."),  # hangs under the user turn: the tool call and output are skipped
        ("user", "What is in this image?"),
        ("assistant", "A cat."),
    ]
    assert [m.content for m in store.siblings(branch[1].id)] == ["Five.", "Four."]
    assert branch[1].model == "gpt-4o" and branch[1].created_at == 102.0
    assert store.search("cat")[0].conversation_id == conversation.id


def test_chatgpt_current_node_picks_the_tip(store: Store, tmp_path: Path) -> None:
    conversations = chatgpt_conversations()[:1]
    conversations[0]["current_node"] = "a1"
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps(conversations))
    conversation_id = import_file(store, path).conversation_ids[0]
    assert [m.content for m in store.active_branch(conversation_id)] == ["What is 2+2?", "Five."]


def test_a_visible_root_system_message_becomes_the_system_prompt(store: Store, tmp_path: Path) -> None:
    mapping = {
        "s": node("s", None, ["u"], "system", "Talk like a pirate."),
        "u": node("u", "s", ["a"], "user", "Hello"),
        "a": node("a", "u", [], "assistant", "Ahoy!"),
    }
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps([{"title": "Pirate", "mapping": mapping, "current_node": "a"}]))
    conversation = store.get_conversation(import_file(store, path).conversation_ids[0])
    assert conversation.system_prompt == "Talk like a pirate."
    assert [m.content for m in store.active_branch(conversation.id)] == ["Hello", "Ahoy!"]


def test_the_chatgpt_zip_is_read_directly(store: Store, tmp_path: Path) -> None:
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("chat.html", "<html></html>")
        zipped.writestr("conversations.json", json.dumps(chatgpt_conversations()))
    assert import_file(store, archive).conversations == 1


GOOD = json.dumps(JSONL_RECORDS[1])


@pytest.mark.parametrize(
    "text, where, reason",
    [
        (f'{GOOD}\n{GOOD}\n{{"messages": [}}\n', "line 3", "not valid JSON"),
        (f"{GOOD}\n\n[1, 2]\n", "line 3", 'object with a "messages" list'),
        (f'{GOOD}\n{{"messages": [{{"role": "bot", "content": "x"}}]}}\n', "line 2, message 1", "role 'bot'"),
        ('{"messages": [{"role": "user", "content": ["x"]}]}\n', "line 1, message 1", "content must be a string"),
        ('{"messages": [{"role": "system", "content": "x"}]}\n', "line 1", "no user or assistant"),
        ("", "in.jsonl", "empty"),
        ("hello there", "line 1", "not valid JSON"),
    ],
)
def test_malformed_jsonl_is_refused_and_imports_nothing(store, tmp_path, text, where, reason) -> None:
    existing = store.create_conversation("already here")
    path = tmp_path / "in.jsonl"
    path.write_text(text)
    with pytest.raises(MalformedImport) as refused:
        import_file(store, path)
    message = str(refused.value)
    assert "\n" not in message and str(path) in message and where in message and reason in message
    assert [c.id for c in store.list_conversations()] == [existing.id]
    assert store.db.execute("SELECT count(*) FROM messages").fetchone()[0] == 0


def _broken(change) -> list:
    conversations = chatgpt_conversations()
    change(conversations)
    return conversations


@pytest.mark.parametrize(
    "data, where, reason",
    [
        ({"not": "a list"}, "conversations.json", "expected a list of conversations"),
        (
            _broken(lambda c: c[0]["mapping"]["a2"].update(parent="ghost")),
            "conversation 1 ('Arithmetic')",
            "its parent ghost is not in the mapping",
        ),  # fmt: skip
        (_broken(lambda c: c[0].update(current_node="ghost")), "conversation 1", "current_node ghost"),
        (_broken(lambda c: c[1].pop("mapping")), "conversation 2 ('Only a tool')", 'no "mapping"'),
        (
            _broken(lambda c: c[0]["mapping"]["u1"]["message"].update(content="x")),
            "conversation 1",
            "node u1: message has no content object",
        ),  # fmt: skip
        (_broken(lambda c: c[0]["mapping"]["root"].update(parent="a4")), "conversation 1", "no path to the root"),
    ],
)
def test_malformed_chatgpt_export_is_refused_and_imports_nothing(store, tmp_path, data, where, reason) -> None:
    import_file(store, write_jsonl(tmp_path / "first.jsonl", JSONL_RECORDS))
    before = store.db.execute("SELECT count(*) FROM messages").fetchone()[0]
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps(data))
    with pytest.raises(MalformedImport) as refused:
        import_file(store, path)
    message = str(refused.value)
    assert "\n" not in message and str(path) in message and where in message and reason in message
    assert store.count_conversations() == 2
    assert store.db.execute("SELECT count(*) FROM messages").fetchone()[0] == before


def test_a_file_of_neither_format_is_refused(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("just some notes")
    with pytest.raises(MalformedImport, match="neither messages JSONL"):
        import_file(store, path)


def test_invalid_json_in_a_chatgpt_export_names_the_place(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "conversations.json"
    path.write_text('[{"title": "x",\n "mapping": }]')
    with pytest.raises(MalformedImport, match=r"not valid JSON \(Expecting value at line 2 column 13\)"):
        import_file(store, path)
    assert store.count_conversations() == 0
