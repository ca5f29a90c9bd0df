"""The store's records (conversations, messages, search hits, training runs, comparisons, bulk-import shapes), its
errors and the row-to-record conversions every part of the Store shares."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

ROLES = ("system", "user", "assistant")
STATUSES = ("complete", "streaming", "stopped", "failed")


class StoreError(Exception):
    """A problem with the store the user can act on; the message is one line naming the fix."""


class NotFound(StoreError):
    """No conversation, message or training run with that id."""


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    created_at: float
    updated_at: float
    model: str | None = None
    system_prompt: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    exclude_from_training: bool = False
    tip_id: int | None = None


@dataclass(frozen=True)
class Message:
    id: int
    conversation_id: int
    parent_id: int | None
    role: str
    content: str
    created_at: float
    model: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    status: str = "complete"
    tokens_in: int | None = None
    tokens_out: int | None = None
    ttft_s: float | None = None
    duration_s: float | None = None
    rating: int = 0
    correction: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class SearchHit:
    conversation_id: int
    message_id: int
    title: str
    role: str
    snippet: str
    rank: float


@dataclass(frozen=True)
class TrainingRun:
    id: int
    name: str
    created_at: float
    status: str  # pending | running | finished | failed | cancelled | deleted (its model folder; the record stays)
    finished_at: float | None = None
    base_model: str | None = None
    dataset_path: str | None = None
    dataset_sha256: str | None = None
    conversation_ids: list[int] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    output_dir: str | None = None
    log_path: str | None = None
    pid: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class Comparison:
    """One /compare: ``prompt_id`` answered twice, ``a_id`` and ``b_id`` in the order shown, and the pick
    (``"a"``, ``"b"``, ``"neither"``; None: none was made). ``blind``: the models stayed hidden until the pick."""

    id: int
    conversation_id: int
    prompt_id: int
    a_id: int
    b_id: int
    created_at: float
    seed: int
    blind: bool = False
    choice: str | None = None


@dataclass(frozen=True)
class WinRate:
    """How often ``model``'s reply was picked over ``against``'s in comparisons between the two (``blind_*``: of
    those, the blind ones)."""

    model: str
    against: str
    wins: int = 0
    picks: int = 0
    blind_wins: int = 0
    blind_picks: int = 0


@dataclass(frozen=True)
class NewMessage:
    """A message to bulk-insert with ``Store.import_conversations``.

    ``parent`` is the index of an earlier message in the same ``NewConversation.messages`` (``None``: a root).
    """

    role: str
    content: str
    parent: int | None = None
    created_at: float | None = None
    model: str | None = None
    params: dict[str, Any] | None = None
    status: str = "complete"
    rating: int = 0
    correction: str | None = None


@dataclass(frozen=True)
class NewConversation:
    """A whole conversation tree to bulk-insert; ``tip`` is the index of the tip message (default: the last)."""

    title: str
    messages: Sequence[NewMessage]
    tip: int | None = None
    created_at: float | None = None
    updated_at: float | None = None
    model: str | None = None
    system_prompt: str | None = None
    params: dict[str, Any] | None = None
    exclude_from_training: bool = False


UNSET: Any = object()  # an update method's default for "leave this column alone" (None writes NULL)


def _loads(text: str | None, default: Any) -> Any:
    return json.loads(text) if text else default


def conversation_from_row(row: dict[str, Any]) -> Conversation:
    return Conversation(
        id=row["id"],
        title=row["title"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        model=row["model"],
        system_prompt=row["system_prompt"],
        params=_loads(row["params"], {}),
        exclude_from_training=bool(row["exclude_from_training"]),
        tip_id=row["tip_id"],
    )


def message_from_row(row: dict[str, Any]) -> Message:
    values = dict(row)
    values["params"] = _loads(values.get("params"), {})
    return Message(**values)


def training_run_from_row(row: dict[str, Any]) -> TrainingRun:
    values = dict(row)
    values["conversation_ids"] = _loads(values.get("conversation_ids"), [])
    values["params"] = _loads(values.get("params"), {})
    values["metrics"] = _loads(values.get("metrics"), {})
    return TrainingRun(**values)


def comparison_from_row(row: dict[str, Any]) -> Comparison:
    values = dict(row)
    values["blind"] = bool(values["blind"])
    return Comparison(**values)


def check_message(role: str, status: str, rating: int) -> None:
    if role not in ROLES:
        raise StoreError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    if status not in STATUSES:
        raise StoreError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
    if rating not in (-1, 0, 1):
        raise StoreError(f"a rating is -1, 0 or +1, not {rating!r}")
