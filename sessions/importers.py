"""Import conversations: ``messages`` JSONL (what `tui-chat export` writes) and a ChatGPT data export.

``import_file(store, path)`` tells the formats apart by name (``.jsonl``; ``.json`` or ``.zip``), else by content:
JSON Lines objects (``{"messages": [...]}`` per line), or a JSON list of ChatGPT conversations
(``conversations.json``, or the export's ``.zip`` holding it).

The whole file is read and checked before anything is written, then written in one store transaction: a malformed
file is refused with one line naming the file, the line (or conversation number and title) and the reason, and
imports nothing.

- JSONL: each line becomes one conversation, its messages a single branch. A leading system message becomes the
  conversation's system prompt (so export -> import -> export gives the same lines).
- ChatGPT: each conversation's ``mapping`` tree becomes our tree (regenerated replies and edited questions stay
  siblings) and the tip is ``current_node``. Nodes that are not conversation text are skipped and their children
  attach to the nearest kept ancestor: the empty root, tool messages and tool calls (``recipient`` not ``all``),
  hidden system messages, and non-text content (code runs, browsing, images without text, reasoning).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .records import ROLES, NewConversation, NewMessage, StoreError
from .store import Store
from .text import counted, title_from

CHATGPT_TEXT_TYPES = ("text", "multimodal_text")  # content types whose string parts are conversation text
CHATGPT_ROLES = ("system", "user", "assistant")  # "tool" messages are skipped


class MalformedImport(StoreError):
    """The file is not a valid import; the message names the file, where, and what is wrong."""


@dataclass(frozen=True)
class ImportResult:
    path: Path
    format: str  # "messages" or "chatgpt"
    conversation_ids: list[int]
    messages: int
    skipped_nodes: int = 0  # ChatGPT nodes that were not conversation text
    skipped_conversations: int = 0  # ChatGPT conversations with no text at all

    @property
    def conversations(self) -> int:
        return len(self.conversation_ids)

    def summary(self) -> str:
        """One line: what was imported from where, and what was skipped."""
        line = (
            f"imported {counted(self.conversations, 'conversation')} ({counted(self.messages, 'message')}) "
            f"from {self.path}"
        )
        if self.skipped_nodes:
            line += f"; skipped {counted(self.skipped_nodes, 'tool, hidden or non-text message')}"
        if self.skipped_conversations:
            line += f"; skipped {counted(self.skipped_conversations, 'conversation')} with no text"
        return line


@dataclass
class _Parsed:
    format: str
    conversations: list[NewConversation] = field(default_factory=list)
    skipped_nodes: int = 0
    skipped_conversations: int = 0


def import_file(store: Store, path: str | Path) -> ImportResult:
    """Import every conversation in ``path`` (all or nothing); raises MalformedImport for a bad file."""
    path = Path(path)
    parsed = parse_file(path)
    with store.transaction():
        ids = store.import_conversations(parsed.conversations)
    return ImportResult(
        path=path,
        format=parsed.format,
        conversation_ids=ids,
        messages=sum(len(c.messages) for c in parsed.conversations),
        skipped_nodes=parsed.skipped_nodes,
        skipped_conversations=parsed.skipped_conversations,
    )


def parse_file(path: Path) -> _Parsed:
    """Read and check ``path`` without touching the store."""
    text = _read_text(path)
    start = text.lstrip()[:1]
    if not start:
        raise MalformedImport(f"{path}: the file is empty; nothing to import")
    # The name decides when it can (so a stray object in conversations.json is reported as a ChatGPT problem),
    # else the first character does.
    if zipfile.is_zipfile(path) or path.suffix == ".json" or (path.suffix != ".jsonl" and start == "["):
        return _parse_chatgpt(path, text)
    if path.suffix == ".jsonl" or start == "{":
        return _parse_messages_jsonl(path, text)
    raise MalformedImport(
        f'{path}: neither messages JSONL (lines of {{"messages": [...]}}) nor a ChatGPT conversations.json'
    )


def _read_text(path: Path) -> str:
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "conversations.json"]
                if not names:
                    raise MalformedImport(f"{path}: the zip holds no conversations.json; is it a ChatGPT export?")
                data = archive.read(names[0])
        else:
            data = path.read_bytes()
    except OSError as exc:
        raise MalformedImport(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    except zipfile.BadZipFile as exc:
        raise MalformedImport(f"{path}: a damaged zip file ({exc})") from exc
    try:
        return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig").read()
    except UnicodeDecodeError as exc:
        raise MalformedImport(f"{path}: not UTF-8 text (byte {exc.start}); export it again as UTF-8") from exc


def _with_system_prompt(title: str, messages: list[NewMessage], tip: int | None, **details: Any) -> NewConversation:
    """A conversation whose single root, when a system message, becomes the system prompt."""
    roots = [index for index, message in enumerate(messages) if message.parent is None]
    if roots == [0] and messages[0].role == "system" and len(messages) > 1:
        system_prompt = messages[0].content
        messages = [
            replace(message, parent=None if message.parent == 0 else message.parent - 1) for message in messages[1:]
        ]
        tip = None if tip in (None, 0) else tip - 1
        return NewConversation(title, messages, tip=tip, system_prompt=system_prompt, **details)
    return NewConversation(title, messages, tip=tip, **details)


# ---- messages JSONL -----------------------------------------------------------------------------------------


def _parse_messages_jsonl(path: Path, text: str) -> _Parsed:
    parsed = _Parsed("messages")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MalformedImport(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
            raise MalformedImport(f'{where}: expected an object with a "messages" list')
        messages = []
        for index, message in enumerate(record["messages"], start=1):
            if not isinstance(message, dict):
                raise MalformedImport(f"{where}, message {index}: expected an object with role and content")
            role, content = message.get("role"), message.get("content")
            if role not in ROLES:
                raise MalformedImport(f"{where}, message {index}: role {role!r} is not one of {', '.join(ROLES)}")
            if not isinstance(content, str):
                raise MalformedImport(f"{where}, message {index}: content must be a string")
            messages.append(NewMessage(role, content, parent=len(messages) - 1 if messages else None))
        if not any(message.role != "system" for message in messages):
            raise MalformedImport(f"{where}: no user or assistant message")
        first_user = next((m.content for m in messages if m.role == "user"), messages[-1].content)
        parsed.conversations.append(_with_system_prompt(title_from(first_user), messages, None))
    if not parsed.conversations:
        raise MalformedImport(f"{path}: no conversations in it")
    return parsed


# ---- ChatGPT export -----------------------------------------------------------------------------------------


def _parse_chatgpt(path: Path, text: str) -> _Parsed:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedImport(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc
    if not isinstance(data, list):
        raise MalformedImport(f"{path}: expected a list of conversations")
    parsed = _Parsed("chatgpt")
    for number, conversation in enumerate(data, start=1):
        title = conversation.get("title") if isinstance(conversation, dict) else None
        where = f"{path} conversation {number}" + (f" ({title!r})" if title else "")
        try:
            imported, skipped = _chatgpt_conversation(conversation)
        except _Bad as exc:
            raise MalformedImport(f"{where}: {exc}") from None
        parsed.skipped_nodes += skipped
        if imported is None:
            parsed.skipped_conversations += 1
        else:
            parsed.conversations.append(imported)
    if not parsed.conversations:
        raise MalformedImport(f"{path}: no conversation in it has any text to import")
    return parsed


class _Bad(Exception):
    """A malformed ChatGPT conversation; the caller adds which one."""


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _chatgpt_text(message: dict, node_id: str) -> tuple[str, str | None]:
    """The role and text of a message, or a role and None when it is not conversation text."""
    author = message.get("author")
    if not isinstance(author, dict) or not isinstance(author.get("role"), str):
        raise _Bad(f"node {node_id}: message has no author role")
    role = author["role"]
    metadata = message.get("metadata") if isinstance(message.get("metadata"), dict) else {}
    if role not in CHATGPT_ROLES or metadata.get("is_visually_hidden_from_conversation"):
        return role, None
    if role == "assistant" and message.get("recipient", "all") != "all":
        return role, None  # a tool call, not a reply
    content = message.get("content")
    if not isinstance(content, dict):
        raise _Bad(f"node {node_id}: message has no content object")
    if content.get("content_type") not in CHATGPT_TEXT_TYPES:
        return role, None
    parts = content.get("parts")
    if not isinstance(parts, list):
        raise _Bad(f"node {node_id}: text content has no parts list")
    text = "\n".join(part for part in parts if isinstance(part, str))
    return role, text if text.strip() else None


def _chatgpt_conversation(conversation: Any) -> tuple[NewConversation | None, int]:
    """Our tree for one ChatGPT conversation (None when it has no text) and the number of nodes skipped."""
    if not isinstance(conversation, dict):
        raise _Bad("expected an object")
    mapping = conversation.get("mapping")
    if not isinstance(mapping, dict) or not mapping:
        raise _Bad('no "mapping" of messages')
    children: dict[str | None, list[str]] = {}
    for node_id, node in mapping.items():
        if not isinstance(node, dict):
            raise _Bad(f"node {node_id}: expected an object")
        parent = node.get("parent")
        if parent is not None and parent not in mapping:
            raise _Bad(f"node {node_id}: its parent {parent} is not in the mapping")
        children.setdefault(parent, []).append(node_id)
    current = conversation.get("current_node")
    if current is not None and current not in mapping:
        raise _Bad(f"current_node {current} is not in the mapping")

    messages: list[NewMessage] = []
    kept_index: dict[str, int | None] = {}  # node id -> index of the nearest kept ancestor-or-self
    skipped = 0
    # Breadth first from the roots: every parent is placed before its children, as import_conversations needs.
    queue: list[tuple[str, int | None]] = [(root, None) for root in children.get(None, [])]
    for node_id, parent_index in queue:
        message = mapping[node_id].get("message")
        index = parent_index
        if message is None:
            pass  # the empty root every ChatGPT tree starts with
        elif not isinstance(message, dict):
            raise _Bad(f"node {node_id}: message is not an object")
        else:
            role, text = _chatgpt_text(message, node_id)
            if text is None:
                skipped += 1
            else:
                metadata = message.get("metadata") if isinstance(message.get("metadata"), dict) else {}
                model = metadata.get("model_slug")
                messages.append(
                    NewMessage(
                        role,
                        text,
                        parent=parent_index,
                        created_at=_number(message.get("create_time")),
                        model=model if isinstance(model, str) else None,
                    )
                )
                index = len(messages) - 1
        kept_index[node_id] = index
        queue.extend((child, index) for child in children.get(node_id, []))
    if len(kept_index) < len(mapping):
        unreached = sorted(set(mapping) - set(kept_index))
        raise _Bad(f"nodes {', '.join(unreached[:3])} have no path to the root (a cycle)")
    if not any(message.role != "system" for message in messages):
        return None, skipped

    tip = kept_index.get(current) if current is not None else None
    title = conversation.get("title")
    first_user = next((m.content for m in messages if m.role == "user"), messages[0].content)
    model = conversation.get("default_model_slug")
    return (
        _with_system_prompt(
            title if isinstance(title, str) and title.strip() else title_from(first_user),
            messages,
            tip,
            created_at=_number(conversation.get("create_time")),
            updated_at=_number(conversation.get("update_time")),
            model=model if isinstance(model, str) else None,
        ),
        skipped,
    )
