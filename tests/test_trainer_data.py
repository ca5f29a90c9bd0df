"""Reading and validating `messages` JSONL, and the train / validation split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.data import DataError, read_jsonl, split_conversations

from .tiny_datasets import chat_lines, write_jsonl

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.mark.parametrize(
    "line, reason",
    [
        ("{not json", "bad JSON"),
        (json.dumps({"messages": [{"role": "robot", "content": "x"}]}), "unknown role 'robot'"),
        (json.dumps({"messages": [{"role": "user", "content": "  "}]}), "message 0 (user) has empty content"),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}]}), "no assistant turn"),
        (json.dumps({"text": "hi"}), '"messages" list'),
        (json.dumps({**GOOD, "split": "later"}), "unknown split"),
    ],
)
def test_bad_line_names_file_line_and_reason(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + line + "\n")
    with pytest.raises(DataError) as info:
        read_jsonl(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: ")  # the blank line 2 still counts
    assert reason in message
    assert "--skip-invalid" in message
    assert "\n" not in message


def test_skip_invalid_drops_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join([json.dumps(GOOD), "{oops", json.dumps({"messages": []}), json.dumps(GOOD)]) + "\n")
    result = read_jsonl(path, skip_invalid=True)
    assert len(result.conversations) == 2
    assert [s.split(": ", 1)[0] for s in result.skipped] == [f"{path}:2", f"{path}:3"]
    assert result.conversations[1].source == "data.jsonl:4"


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        read_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no usable conversations"):
        read_jsonl(tmp_path / "empty.jsonl")


def test_split_field_wins(tmp_path: Path) -> None:
    records = chat_lines(6)
    records[0]["split"] = "val"
    records[1]["split"] = "train"
    conversations = read_jsonl(write_jsonl(tmp_path / "d.jsonl", records)).conversations
    train, val = split_conversations(conversations, 0.5)
    assert [c.source for c in val] == ["d.jsonl:1"]
    assert len(train) == 5


def test_hash_split_is_deterministic_and_order_free(tmp_path: Path) -> None:
    records = chat_lines(40)
    forward = read_jsonl(write_jsonl(tmp_path / "a.jsonl", records)).conversations
    backward = read_jsonl(write_jsonl(tmp_path / "b.jsonl", records[::-1])).conversations
    train_a, val_a = split_conversations(forward, 0.1)
    train_b, val_b = split_conversations(backward, 0.1)
    assert len(val_a) == 4 and len(train_a) == 36
    assert sorted(json.dumps(c.messages) for c in val_a) == sorted(json.dumps(c.messages) for c in val_b)
    assert split_conversations(forward, 0.1)[1] == val_a
