"""Read preference-pair JSONL (the store's preference export, TRL's DPO format) into validated, rendered pairs.

One line is one pair: ``{"prompt": [messages...], "chosen": str, "rejected": str}``, optionally with ``"split":
"train" | "val"``. The prompt is the conversation up to the reply being judged, so it ends with a user turn; a
prompt given as a plain string is one user message. Every line is checked (data.py's rules for the messages, plus the
pair's own); a bad one is a ``DataError`` naming the file, the line and the reason, or (``skip_invalid``) is dropped
and counted. The split is data.py's: the file's ``split`` fields, else a deterministic hash of each pair's content.

Rendering: prompt + chosen and prompt + rejected each go through the model's chat template (render.py); only the
last reply's tokens (and its end-of-turn token) carry loss, so earlier assistant turns of the prompt are context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .data import Conversation, DatasetFile, check_messages, read_records, split_conversations
from .render import RenderedExample, render_last_reply


@dataclass(frozen=True)
class Pair:
    """One judged reply: the prompt and the two answers to it."""

    prompt: tuple[dict[str, str], ...]
    chosen: str
    rejected: str
    source: str  # "file:line"
    split: str | None = None

    @property
    def messages(self) -> tuple[dict[str, str], ...]:
        """Everything the pair holds, as messages: what the hash split of data.py fingerprints."""
        return self.prompt + ({"role": "assistant", "content": self.chosen},
                              {"role": "assistant", "content": self.rejected})

    def conversation(self, reply: str) -> list[dict[str, str]]:
        return [dict(m) for m in self.prompt] + [{"role": "assistant", "content": reply}]

    def taught(self) -> Conversation:
        """The prompt and the chosen reply: what the pair teaches, as a training conversation (what replay is
        chosen near, replay.replay_order)."""
        return Conversation(tuple(self.conversation(self.chosen)), self.source, "train")


def check_pair(record: Any) -> tuple[tuple[dict[str, str], ...], str, str]:
    """(prompt, chosen, rejected) of one parsed line, or ValueError naming what is wrong."""
    if not isinstance(record, dict):
        raise ValueError('expected an object with "prompt", "chosen" and "rejected"')
    missing = [key for key in ("prompt", "chosen", "rejected") if key not in record]
    if missing:
        raise ValueError(f"missing {', '.join(repr(k) for k in missing)} (a pair is prompt, chosen and rejected)")
    prompt = record["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise ValueError('"prompt" must be a non-empty list of messages (or a string: one user message)')
    messages = check_messages(prompt)
    if messages[-1]["role"] != "user":
        raise ValueError(f'the prompt ends with a {messages[-1]["role"]} turn; it must end with the user turn '
                         "that chosen and rejected answer")
    for key in ("chosen", "rejected"):
        if not isinstance(record[key], str) or not record[key].strip():
            raise ValueError(f'"{key}" is empty (expected the reply text)')
    if record["chosen"].strip() == record["rejected"].strip():
        raise ValueError('"chosen" and "rejected" are the same reply: nothing to prefer')
    return messages, record["chosen"], record["rejected"]


@dataclass
class PairFile:
    """The pairs of one JSONL file, the lines skipped (with reasons) and the file's sha256."""

    path: Path
    pairs: list[Pair]
    skipped: list[str]
    sha256: str


def read_pairs(path: str | Path, *, skip_invalid: bool = False) -> PairFile:
    """Read and validate a preference JSONL file. Blank lines are ignored."""
    pairs: list[Pair] = []

    def accept(record: Any, number: int, split: str | None, file: DatasetFile) -> None:
        prompt, chosen, rejected = check_pair(record)
        pairs.append(Pair(prompt, chosen, rejected, f"{file.path.name}:{number}", split))

    file = read_records(path, accept, skip_invalid=skip_invalid, what="preference pairs")
    return PairFile(file.path, pairs, file.skipped, file.sha256)


def split_pairs(pairs: Sequence[Pair], val_fraction: float) -> tuple[list[Pair], list[Pair]]:
    """(train, val) as data.py splits conversations: the ``split`` fields, else a hash of each pair's content."""
    return split_conversations(pairs, val_fraction)  # type: ignore[arg-type]  # it reads .messages and .split


@dataclass(frozen=True)
class RenderedPair:
    """A pair as token ids: prompt + chosen and prompt + rejected, the last reply of each carrying the loss."""

    chosen: RenderedExample
    rejected: RenderedExample
    pair: Pair
    # The reference model's (chosen, rejected) reply log-probabilities: computed once, before training.
    reference: tuple[float, float] | None = None

    def __len__(self) -> int:
        return max(len(self.chosen), len(self.rejected))


@dataclass
class RenderedPairs:
    pairs: list[RenderedPair] = field(default_factory=list)
    dropped: int = 0  # a side over --max-length (a reply cut short would teach a cut reply) or hidden by the template

    @property
    def n_tokens(self) -> int:
        return sum(len(p.chosen) + len(p.rejected) for p in self.pairs)

    @property
    def n_reply_tokens(self) -> int:
        return sum(p.chosen.n_assistant + p.rejected.n_assistant for p in self.pairs)


def render_pairs(tokenizer: Any, pairs: Sequence[Pair], max_length: int | None) -> RenderedPairs:
    """Render both sides of every pair; a pair either side of which cannot be rendered whole is dropped (counted)."""
    result = RenderedPairs()
    for pair in pairs:
        chosen = render_last_reply(tokenizer, pair.conversation(pair.chosen), max_length)
        rejected = render_last_reply(tokenizer, pair.conversation(pair.rejected), max_length)
        if chosen is None or rejected is None:
            result.dropped += 1
        else:
            result.pairs.append(RenderedPair(chosen, rejected, pair))
    return result

