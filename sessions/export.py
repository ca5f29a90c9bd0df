"""Export conversations as training data (messages or preference-pair JSONL) or as Markdown transcripts.

Formats
-------
``messages``: JSON Lines, one conversation a line, the format TRL's SFTTrainer, OpenAI fine-tuning and our trainer
read::

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}, ...]}

- The messages follow the conversation's active branch (root to tip). The conversation's system prompt, when set,
  comes first as a ``system`` message (and replaces any system message stored in the branch).
- A reply with a correction is exported with the correction as its content (the user's ideal answer).
- The branch is cut before the first reply that is rated thumbs-down, unfinished (``streaming``, ``stopped`` or
  ``failed``), or rated below ``min_rating``, unless that reply is corrected; what follows a cut is left out.
- Trailing non-assistant messages are dropped, so every line ends with an assistant turn; a conversation left with
  no assistant turn is dropped. Conversations marked ``exclude_from_training`` are left out. Exact duplicate lines
  are written once.

``preference``: JSON Lines, one pair a line: ``{"prompt": [messages...], "chosen": str, "rejected": str}``. The
prompt is the conversation up to the replies compared (system prompt first, corrections applied). Pairs come from
sibling replies (regenerations of one turn) with different ratings, and from corrections (chosen = correction,
rejected = the original reply). A /compare pick rates the chosen answer up and the other down, so each pick is a
pair of rated siblings; "neither" with an ideal answer corrects both, so it makes two correction pairs. Only complete
replies take part; ``min_rating`` does not apply. The manifest counts the pairs by source (``ratings``,
``corrections``, ``compare``: rated siblings that were a comparison's pick).

``markdown``: one ``.md`` file with a transcript of each conversation's active branch, ratings, corrections and
unfinished replies marked. Transcripts are for reading, so excluded conversations are included (and marked).

Train/validation split
----------------------
With ``val_fraction > 0`` a JSONL export writes two files next to each other instead of the one asked for:
``NAME.train.jsonl`` and ``NAME.val.jsonl`` (for ``--out NAME.jsonl``). A record goes to validation when the
SHA-256 of its line, read as a number in [0, 1), is below ``val_fraction``: the split depends only on the record
itself, so re-exporting after more chats were added never moves an old record across. Preference pairs are split
by conversation instead (the same hash of the conversation's id), because the pairs of one conversation share their
prompts: all of a conversation's pairs are on one side, so validation never holds a prompt that training saw, and
a conversation never moves. Small datasets may get an empty validation file; the manifest gives the counts. Without
a split the file is exactly the path asked for.

Manifest
--------
``NAME.manifest.json`` lies next to the data: format, filters, each file's name (relative to the manifest),
record count and sha256, the conversation ids used, and ``left_out`` counts:

- ``excluded``, ``no_assistant_turn``: conversations; ``duplicates``: records (conversations or pairs).
- ``thumbs_down``, ``unfinished``, ``below_min_rating``: the replies a branch was cut at. In preference exports
  ``unfinished`` counts replies kept out of pairs, and ``unfinished_prompt`` the pairs dropped because their
  prompt holds an unfinished reply.
- ``corrected``: original replies replaced by their correction.

Every file is written to a temporary file in the same folder, synced, and renamed over the destination, data
files first and the manifest last: an interrupted export (Ctrl+C, a full disk) leaves the old files or the new
complete ones, never a partial file. Files are created readable by their owner only (0600).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from .records import Conversation, Message, StoreError
from .store import Store
from .text import counted, minute_text

FORMATS = ("messages", "preference", "markdown")
PAIR_SOURCES = ("ratings", "corrections", "compare")  # where preference pairs come from, counted in the manifest
SOURCE_NAMES = {"ratings": "rated versions", "corrections": "corrections", "compare": "compare picks"}
MANIFEST_VERSION = 1
# Every reason a messages export can leave material out; all appear in its manifest, zeros included.
LEFT_OUT_MESSAGES = (
    "excluded",
    "thumbs_down",
    "corrected",
    "unfinished",
    "below_min_rating",
    "duplicates",
    "no_assistant_turn",
)


class ExportError(StoreError):
    """An export that cannot be written as asked (nothing left to export, a bad path, a full disk)."""


@dataclass(frozen=True)
class ExportFilters:
    """Which conversations and replies an export takes.

    ``min_rating``: cut each branch before the first reply rated below it (corrected replies count as +1); thumbs-down
    replies are always cut, so only ``1`` (keep replies rated up) narrows further. ``since``: conversations updated at
    or after this time (unix seconds). ``conversation_ids``: only these (empty: all). ``val_fraction``: share of
    records written to the validation file, in [0, 1).
    """

    min_rating: int | None = None
    since: float | None = None
    conversation_ids: tuple[int, ...] = ()
    val_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ExportError(f"--val-fraction must be at least 0 and below 1, not {self.val_fraction:g}")
        if self.min_rating is not None and self.min_rating not in (-1, 0, 1):
            raise ExportError(f"--min-rating is -1, 0 or 1, not {self.min_rating}")

    def to_manifest(self) -> dict:
        values = asdict(self)
        values["conversation_ids"] = list(self.conversation_ids)
        if self.since is not None:
            values["since"] = datetime.fromtimestamp(self.since, timezone.utc).isoformat()
        return values


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote. ``paths`` maps ``"all"`` (no split) or ``"train"`` / ``"val"`` to files."""

    format: str
    paths: dict[str, Path]
    manifest_path: Path
    records: dict[str, int]
    sha256: dict[str, str]
    conversation_ids: list[int]
    left_out: dict[str, int] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)  # preference pairs by source (PAIR_SOURCES)

    @property
    def total(self) -> int:
        return sum(self.records.values())

    def summary(self) -> str:
        """One line for the CLI and the chat: what was written where, and what was left out."""
        noun = {"messages": "conversation", "preference": "preference pair", "markdown": "transcript"}[self.format]
        split = f" ({self.records['train']} train, {self.records['val']} val)" if "train" in self.records else ""
        files = ", ".join(str(path) for path in self.paths.values())
        line = f"exported {counted(self.total, noun)}{split} to {files}"
        if any(self.sources.values()):
            line += " (from " + ", ".join(f"{count} {SOURCE_NAMES[source]}" for source, count in self.sources.items()
                                          if count) + ")"
        dropped = [f"{count} {reason.replace('_', '-')}" for reason, count in self.left_out.items() if count]
        if dropped:
            line += f"; left out: {', '.join(dropped)}"
        return line + f"; manifest {self.manifest_path.name}"


@dataclass
class _Records:
    """Lines to write, the conversation each came from, and why other material was left out."""

    lines: list[str] = field(default_factory=list)
    owners: list[int] = field(default_factory=list)  # the conversation each line came from
    conversation_ids: list[int] = field(default_factory=list)
    sources: Counter = field(default_factory=Counter)  # preference pairs by where they came from
    left_out: Counter = field(default_factory=Counter)
    considered: int = 0
    _seen: set[str] = field(default_factory=set)
    _used: set[int] = field(default_factory=set)

    def add(self, record: dict, conversation_id: int, source: str | None = None) -> None:
        line = json.dumps(record, ensure_ascii=False)
        if line in self._seen:
            self.left_out["duplicates"] += 1
            return
        self._seen.add(line)
        self.lines.append(line + "\n")
        self.owners.append(conversation_id)
        if source is not None:
            self.sources[source] += 1
        if conversation_id not in self._used:
            self._used.add(conversation_id)
            self.conversation_ids.append(conversation_id)


def export_messages(store: Store, path: str | Path, filters: ExportFilters = ExportFilters()) -> ExportResult:
    """Write the chosen conversations as ``messages`` JSONL (see the module docstring for the exact rules)."""
    records = _Records()
    for conversation in _selected(store, filters, records, include_excluded=False):
        messages = _training_messages(conversation, store.active_branch(conversation.id), filters, records.left_out)
        if any(m["role"] == "assistant" for m in messages):
            records.add({"messages": messages}, conversation.id)
        else:
            records.left_out["no_assistant_turn"] += 1
    for reason in LEFT_OUT_MESSAGES:
        records.left_out.setdefault(reason, 0)
    return _write_jsonl("messages", Path(path), filters, records)


def export_preference_pairs(store: Store, path: str | Path, filters: ExportFilters = ExportFilters()) -> ExportResult:
    """Write ``{"prompt", "chosen", "rejected"}`` JSONL from rated sibling replies (compare picks among them) and
    from corrections."""
    records = _Records()
    for conversation in _selected(store, filters, records, include_excluded=False):
        picked = {
            frozenset((c.a_id, c.b_id)) for c in store.comparisons(conversation.id) if c.choice in ("a", "b")
        }
        for pair, source in _preference_pairs(conversation, store.messages(conversation.id), picked, records.left_out):
            records.add(pair, conversation.id, source)
    for reason in ("excluded", "unfinished", "duplicates"):
        records.left_out.setdefault(reason, 0)
    for source in PAIR_SOURCES:
        records.sources.setdefault(source, 0)
    return _write_jsonl("preference", Path(path), filters, records, split_by_conversation=True)


def export_markdown(store: Store, path: str | Path, filters: ExportFilters = ExportFilters()) -> ExportResult:
    """Write one Markdown file with a transcript of each chosen conversation's active branch."""
    path = Path(path)
    records = _Records()
    transcripts = []
    for conversation in _selected(store, filters, records, include_excluded=True):
        transcripts.append(_transcript(conversation, store.active_branch(conversation.id)))
        records.conversation_ids.append(conversation.id)
    if not transcripts:
        raise ExportError(_nothing_to_export(records))
    text = "\n---\n\n".join(transcripts)
    (digest,) = _write_atomically(path.parent, [(path, [text])]).values()
    return _finish("markdown", path, filters, records, {"all": (path, len(transcripts), digest)})


EXPORTERS: dict[str, Callable[[Store, str | Path, ExportFilters], ExportResult]] = {
    "messages": export_messages,
    "preference": export_preference_pairs,
    "markdown": export_markdown,
}


def export(store: Store, format: str, path: str | Path, filters: ExportFilters = ExportFilters()) -> ExportResult:
    """Run the exporter for ``format`` (one of ``FORMATS``)."""
    if format not in EXPORTERS:
        raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    return EXPORTERS[format](store, path, filters)


def manifest_path_for(path: Path) -> Path:
    """``NAME.manifest.json`` next to an export written to ``NAME.jsonl`` / ``NAME.md``."""
    return path.with_name(_stem(path) + ".manifest.json")


# ---- selecting and shaping ----------------------------------------------------------------------------------


def _selected(
    store: Store, filters: ExportFilters, records: _Records, *, include_excluded: bool
) -> Iterable[Conversation]:
    ids = list(filters.conversation_ids) or None
    if ids:
        for conversation_id in ids:
            store.get_conversation(conversation_id)  # an unknown id is an error, not an empty export
    for conversation in store.iter_conversations(since=filters.since, ids=ids):
        records.considered += 1
        if conversation.exclude_from_training and not include_excluded:
            records.left_out["excluded"] += 1
            continue
        yield conversation


def _training_messages(
    conversation: Conversation, branch: list[Message], filters: ExportFilters, left_out: Counter
) -> list[dict[str, str]]:
    """The branch as chat messages, cut before the first unusable reply and ending on an assistant turn."""
    messages = []
    if conversation.system_prompt:
        messages.append({"role": "system", "content": conversation.system_prompt})
    for message in branch:
        if message.role == "system" and conversation.system_prompt:
            continue
        content = message.content
        if message.role == "assistant":
            if message.correction:
                content = message.correction
                left_out["corrected"] += 1
            elif message.status != "complete":
                left_out["unfinished"] += 1
                break
            elif message.rating < 0:
                left_out["thumbs_down"] += 1
                break
            elif filters.min_rating is not None and message.rating < filters.min_rating:
                left_out["below_min_rating"] += 1
                break
        messages.append({"role": message.role, "content": content})
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()
    return messages


def _preference_pairs(
    conversation: Conversation, messages: list[Message], picked: set[frozenset[int]], left_out: Counter
) -> Iterable[tuple[dict, str]]:
    """Each pair with its source; ``picked``: the reply pairs a comparison's pick decided."""
    by_id = {message.id: message for message in messages}
    replies_to: dict[int | None, list[Message]] = defaultdict(list)
    for message in messages:
        if message.role == "assistant":
            replies_to[message.parent_id].append(message)

    def prompt(parent_id: int | None) -> list[dict[str, str]] | None:
        chain = []
        while parent_id is not None:
            chain.append(by_id[parent_id])
            parent_id = by_id[parent_id].parent_id
        shaped = [{"role": "system", "content": conversation.system_prompt}] if conversation.system_prompt else []
        for message in reversed(chain):
            if message.role == "system" and conversation.system_prompt:
                continue
            if message.role == "assistant" and not message.correction and message.status != "complete":
                return None
            shaped.append({"role": message.role, "content": message.correction or message.content})
        return shaped

    for parent_id, replies in replies_to.items():
        complete = [reply for reply in replies if reply.status == "complete"]
        left_out["unfinished"] += len(replies) - len(complete)
        candidates = [
            (reply.correction, reply.content, "corrections")
            for reply in complete
            if reply.correction and reply.content.strip()
        ]
        candidates += [
            (better.content, worse.content, "compare" if {better.id, worse.id} in picked else "ratings")
            for better, worse in itertools.permutations(complete, 2)
            if better.rating > worse.rating
        ]
        candidates = [c for c in candidates if c[0].strip() != c[1].strip()]
        if not candidates:
            continue
        context = prompt(parent_id)
        if context is None:
            left_out["unfinished_prompt"] += len(candidates)
            continue
        for chosen, rejected, source in candidates:
            yield {"prompt": context, "chosen": chosen, "rejected": rejected}, source


def _transcript(conversation: Conversation, branch: list[Message]) -> str:
    created = minute_text(conversation.created_at)
    details = [f"conversation {conversation.id}", created]
    if conversation.model:
        details.append(f"model {conversation.model}")
    if conversation.exclude_from_training:
        details.append("excluded from training")
    parts = [f"# {conversation.title}\n", f"*{' · '.join(details)}*\n"]
    if conversation.system_prompt:
        parts.append(f"**System prompt:** {conversation.system_prompt}\n")
    for message in branch:
        heading = message.role.capitalize()
        marks = {1: "👍", -1: "👎"}.get(message.rating)
        if marks:
            heading += f" · {marks}"
        if message.status != "complete":
            heading += f" · {message.status}" + (f" ({message.error})" if message.error else "")
        parts.append(f"### {heading}\n\n{message.content}\n")
        if message.correction:
            quoted = "\n".join(f"> {line}" for line in message.correction.splitlines())
            parts.append(f"> **Correction:**\n>\n{quoted}\n")
    return "\n".join(parts)


# ---- writing ------------------------------------------------------------------------------------------------


def _stem(path: Path) -> str:
    return path.name[: -len(path.suffix)] if path.suffix in (".jsonl", ".md", ".json") else path.name


def _split(key: str, val_fraction: float) -> str:
    # The first 8 bytes of the key's SHA-256 as a fraction of 2**64: uniform, and fixed for a given record.
    position = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    return "val" if position < val_fraction else "train"


def _write_jsonl(
    format: str, path: Path, filters: ExportFilters, records: _Records, *, split_by_conversation: bool = False
) -> ExportResult:
    if not records.lines:
        raise ExportError(_nothing_to_export(records))
    if filters.val_fraction > 0:
        groups: dict[str, list[str]] = {"train": [], "val": []}
        for line, owner in zip(records.lines, records.owners):
            key = f"conversation {owner}" if split_by_conversation else line
            groups[_split(key, filters.val_fraction)].append(line)
        targets = {name: path.with_name(f"{_stem(path)}.{name}.jsonl") for name in groups}
    else:
        groups = {"all": records.lines}
        targets = {"all": path}
    digests = _write_atomically(path.parent, [(targets[name], groups[name]) for name in groups])
    files = {name: (targets[name], len(groups[name]), digests[targets[name]]) for name in groups}
    return _finish(format, path, filters, records, files)


def _finish(
    format: str,
    path: Path,
    filters: ExportFilters,
    records: _Records,
    files: dict[str, tuple[Path, int, str]],
) -> ExportResult:
    """Write the manifest describing ``files`` (already in place) and return the result."""
    left_out = dict(records.left_out)
    manifest = {
        "version": MANIFEST_VERSION,
        "format": format,
        "created_at": datetime.fromtimestamp(time.time(), timezone.utc).isoformat(),
        "filters": filters.to_manifest(),
        "files": {
            name: {"path": target.name, "records": count, "sha256": digest}
            for name, (target, count, digest) in files.items()
        },
        "counts": {
            "conversations_considered": records.considered,
            "conversations_used": len(records.conversation_ids),
            "records": sum(count for _, count, _ in files.values()),
        },
        "left_out": left_out,
        "conversation_ids": records.conversation_ids,
    }
    if records.sources:
        manifest["counts"]["sources"] = dict(records.sources)
    manifest_path = manifest_path_for(path)
    _write_atomically(path.parent, [(manifest_path, [json.dumps(manifest, indent=2) + "\n"])])
    return ExportResult(
        format=format,
        paths={name: target for name, (target, _, _) in files.items()},
        manifest_path=manifest_path,
        records={name: count for name, (_, count, _) in files.items()},
        sha256={name: digest for name, (_, _, digest) in files.items()},
        conversation_ids=list(records.conversation_ids),
        left_out=left_out,
        sources=dict(records.sources),
    )


def _nothing_to_export(records: _Records) -> str:
    reasons = ", ".join(f"{count} {reason.replace('_', '-')}" for reason, count in records.left_out.items() if count)
    if not records.considered:
        return "nothing to export: no conversations match the filters; `tui-chat sessions list` shows what there is"
    return (
        f"nothing to export: {counted(records.considered, 'conversation')} considered, none usable"
        + (f" (left out: {reasons})" if reasons else "")
        + "; loosen the filters or rate/correct some replies"
    )


def _write_atomically(folder: Path, files: list[tuple[Path, list[str]]]) -> dict[Path, str]:
    """Write each file to a temp file in ``folder``, then rename them all into place; return each sha256.

    Nothing is renamed until every temp file is complete and synced, and the temp files are removed on any
    failure, so the destinations hold either their old contents or the new complete ones.
    """
    if not folder.is_dir():
        raise ExportError(f"the folder {folder} does not exist; create it or choose another --out")
    written: list[tuple[str, Path]] = []
    digests: dict[Path, str] = {}
    try:
        for target, chunks in files:
            # mkstemp creates the file 0600: exports hold private chats.
            handle, temp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
            written.append((temp, target))
            digest = hashlib.sha256()
            with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
                for chunk in chunks:
                    out.write(chunk)
                    digest.update(chunk.encode("utf-8"))
                out.flush()
                os.fsync(out.fileno())
            digests[target] = digest.hexdigest()
        for temp, target in written:
            os.replace(temp, target)
    except OSError as exc:
        _remove(written)
        raise ExportError(
            f"cannot write {target}: {exc.strerror or exc}; free some space or choose another --out"
        ) from exc
    except BaseException:
        _remove(written)
        raise
    return digests


def _remove(written: list[tuple[str, Path]]) -> None:
    for temp, _ in written:
        Path(temp).unlink(missing_ok=True)
