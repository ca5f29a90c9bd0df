"""Read `messages` JSONL (the store's export, TRL's and OpenAI's fine-tuning format) into validated conversations.

One line is one conversation: ``{"messages": [{"role": ..., "content": ...}, ...]}``, optionally with
``"split": "train" | "val"``. Every line is checked; a bad one is a ``DataError`` naming the file, the line and the
reason, or (``skip_invalid``) is dropped and counted. The train/validation split comes from the file's ``split``
fields, else from a separate validation file, else from a deterministic hash of each conversation's content (so the
same data always splits the same way, whatever its order).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

ROLES = ("system", "user", "assistant")
TRAIN_SPLITS = ("train",)
VAL_SPLITS = ("val", "valid", "validation", "test", "eval")


class DataError(ValueError):
    """A dataset file the user gave cannot be used; the message names the file, the line and the reason."""


@dataclass(frozen=True)
class Conversation:
    """One training example: chat messages as the chat template takes them."""

    messages: tuple[dict[str, str], ...]
    source: str  # "file:line", for error messages and reports
    split: str | None = None  # "train", "val" or None when the file does not say

    def as_messages(self) -> list[dict[str, str]]:
        return [dict(m) for m in self.messages]


@dataclass
class DatasetFile:
    """The conversations of one JSONL file, the lines that were skipped (with reasons) and the file's sha256."""

    path: Path
    conversations: list[Conversation]
    skipped: list[str] = field(default_factory=list)
    sha256: str = ""


def check_messages(raw_messages: list) -> tuple[dict[str, str], ...]:
    """Validate chat messages (roles, non-empty contents); return them, or raise ValueError with the reason."""
    messages = []
    for i, message in enumerate(raw_messages):
        if not isinstance(message, dict):
            raise ValueError(f"message {i} is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"message {i} has unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"message {i} ({role}) has empty content")
        messages.append({"role": role, "content": content})
    return tuple(messages)


def _check_conversation(record: Any) -> tuple[dict[str, str], ...]:
    """Validate one conversation record; return its messages or raise ValueError with the reason."""
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        raise ValueError('expected an object with a "messages" list')
    messages = check_messages(record["messages"])
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("no assistant turn to learn from")
    return messages


def _split_of(record: Any) -> str | None:
    split = record.get("split") if isinstance(record, dict) else None
    if split is not None and split not in TRAIN_SPLITS + VAL_SPLITS:
        raise ValueError(f"unknown split {split!r} (expected train or val)")
    return "val" if split in VAL_SPLITS else split


def read_records(
    path: str | Path,
    accept: Callable[[Any, int, str | None, "DatasetFile"], None],
    *,
    skip_invalid: bool = False,
    what: str = "conversations",
) -> DatasetFile:
    """Read a JSONL file line by line: each parsed line goes to ``accept(record, line_number, split, file)``, which
    keeps it or raises ValueError with the reason (a DataError naming file and line, or with ``skip_invalid`` a
    skipped line). Blank lines are ignored; a file with nothing accepted is a DataError naming ``what`` it lacks."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the dataset ({exc.strerror or exc})") from None
    result = DatasetFile(path=path, conversations=[], sha256=hashlib.sha256(data).hexdigest())
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    accepted = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"bad JSON ({exc.msg} at column {exc.colno})") from None
            accept(record, number, _split_of(record), result)
            accepted += 1
        except ValueError as exc:
            problem = f"{path}:{number}: {exc}"
            if not skip_invalid:
                raise DataError(f"{problem} (fix the line, or pass --skip-invalid to drop bad lines)") from None
            result.skipped.append(problem)
    if not accepted:
        raise DataError(f"{path}: no usable {what}")
    return result


def read_jsonl(path: str | Path, *, skip_invalid: bool = False) -> DatasetFile:
    """Read and validate a `messages` JSONL file. Blank lines are ignored."""

    def accept(record: Any, number: int, split: str | None, file: DatasetFile) -> None:
        file.conversations.append(Conversation(_check_conversation(record), f"{file.path.name}:{number}", split))

    return read_records(path, accept, skip_invalid=skip_invalid)


def _fingerprint(conversation: Conversation) -> int:
    text = json.dumps(conversation.messages, ensure_ascii=False, sort_keys=True)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def split_conversations(
    conversations: Iterable[Conversation], val_fraction: float, *, max_val: int = 200
) -> tuple[list[Conversation], list[Conversation]]:
    """Split into (train, val). The file's own ``split`` fields win; unlabelled conversations are split by a hash of
    their content: about ``val_fraction`` of them (at most ``max_val``, at least one when there are >= 5) go to val.
    """
    conversations = list(conversations)
    train = [c for c in conversations if c.split == "train"]
    val = [c for c in conversations if c.split == "val"]
    unlabelled = [c for c in conversations if c.split is None]
    if val or not unlabelled or val_fraction <= 0:
        return train + unlabelled, val
    # Sort by hash and take the first n: deterministic, independent of line order, and exactly n items.
    n_val = min(max_val, round(len(unlabelled) * val_fraction))
    if n_val == 0 and len(unlabelled) >= 5:
        n_val = 1
    ranked = sorted(unlabelled, key=_fingerprint)
    chosen = {id(c) for c in ranked[:n_val]}
    return train + [c for c in unlabelled if id(c) not in chosen], [c for c in unlabelled if id(c) in chosen]
