"""Conversation -> ``input_ids`` + assistant mask, through the model's own chat template.

The text is rendered with ``apply_chat_template`` on exactly the messages the chat sends (so a template that adds a
default system prompt does so here too) and tokenized in one piece, as the chat's prompt is. Each assistant turn is
located by rendering the conversation up to that turn with the generation prompt: what follows that prefix, up to
and including the turn's end-of-turn token, is what the model generated in chat and is what the loss learns. The
mask is by position, so a tokenizer whose pad token is its eos token still learns to stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from .chat_template import ensure_chat_template
from .data import Conversation

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TeacherTargets:
    """The base model's distribution at each assistant position of one example (in order): what a replayed example
    learns instead of its text's tokens (made by distill.py, read by the loss)."""

    ids: torch.Tensor  # [positions, k] int64: the k likeliest next tokens
    logprobs: torch.Tensor  # [positions, k + 1] float32: their log-probabilities, then the log of the rest's mass


@dataclass(frozen=True)
class RenderedExample:
    input_ids: list[int]
    assistant_mask: list[bool]  # True where the token is part of an assistant reply (incl. its end-of-turn token)
    truncated: bool = False
    # Replay answered by the base model: its assistant tokens learn the base model's next-token distribution
    # (self-distillation, distill.py) instead of the text's tokens.
    teacher: TeacherTargets | None = None

    @property
    def n_assistant(self) -> int:
        return sum(self.assistant_mask)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class RenderedSet:
    """Examples ready for batching, and what was lost on the way (counts, for the logs and the report)."""

    examples: list[RenderedExample] = field(default_factory=list)
    truncated: int = 0  # conversations cut after their last assistant turn that fits in max_length
    dropped_too_long: int = 0  # conversations whose first assistant turn does not fit
    dropped_unrenderable: int = 0  # no assistant turn could be located in the template's output

    def extend(self, other: "RenderedSet") -> None:
        """Append ``other``'s examples and add up what each lost."""
        self.examples += other.examples
        self.truncated += other.truncated
        self.dropped_too_long += other.dropped_too_long
        self.dropped_unrenderable += other.dropped_unrenderable

    @property
    def n_tokens(self) -> int:
        return sum(len(e) for e in self.examples)

    @property
    def n_assistant_tokens(self) -> int:
        return sum(e.n_assistant for e in self.examples)


def _render(tokenizer: Any, messages: Sequence[dict], *, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer: Any, messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character span of every assistant reply in it, end-of-turn marker included.

    A turn whose generation prompt is not a prefix of the full rendering (templates that rewrite history) is left
    out: training on it would teach a prompt the chat never shows.
    """
    full = _render(tokenizer, messages)
    special = sorted({t for t in tokenizer.all_special_tokens if t}, key=len, reverse=True)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i == 0:
            continue
        prompt = _render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = _render(tokenizer, messages[: i + 1])
        if not (full.startswith(prompt) and full.startswith(upto) and len(upto) > len(prompt)):
            continue
        start, end = len(prompt), len(upto)
        # The end-of-turn marker is the first special token after the reply's text (<|im_end|>, <|eot_id|>, eos).
        content_at = full.find(message["content"].strip(), start, end)
        search_from = start if content_at < 0 else content_at + len(message["content"].strip())
        hits = [(full.find(t, search_from, end), t) for t in special]
        hits = [(pos, t) for pos, t in hits if pos >= 0]
        if hits:
            pos, token = min(hits)
            end = pos + len(token)
        else:
            end = start + len(full[start:end].rstrip())
        spans.append((start, end))
    return full, spans


def _encode(tokenizer: Any, full: str, spans: list[tuple[int, int]], max_length: int | None) -> RenderedExample | None:
    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    mask = [any(start <= tok_start < end for start, end in spans) for tok_start, _ in offsets]
    if max_length is None or len(ids) <= max_length:
        return RenderedExample(list(ids), mask)
    # Token index just past each assistant turn: the only places a conversation may be cut.
    turn_ends = [max(j for j, (tok_start, _) in enumerate(offsets) if tok_start < end) + 1 for _, end in spans]
    fitting = [cut for cut in turn_ends if cut <= max_length]
    if not fitting:
        return None
    cut = max(fitting)
    return RenderedExample(list(ids[:cut]), mask[:cut], truncated=True)


def render_conversation(
    tokenizer: Any, messages: Sequence[dict], max_length: int | None = None
) -> RenderedExample | None:
    """Tokenize one conversation with its assistant mask. Over ``max_length`` tokens it is cut after the last
    assistant turn that fits; ``None`` when no assistant turn fits (or none can be located)."""
    full, spans = assistant_spans(tokenizer, messages)
    return _encode(tokenizer, full, spans, max_length) if spans else None


def render_last_reply(
    tokenizer: Any, messages: Sequence[dict], max_length: int | None = None
) -> RenderedExample | None:
    """Tokenize a conversation whose last message is the assistant reply being judged (a preference pair's side):
    only that reply carries loss, the turns before it are context. ``None`` when the reply cannot be located in the
    template's output or does not fit whole in ``max_length`` (a reply cut short would teach a cut reply)."""
    ensure_chat_template(tokenizer)
    full, spans = assistant_spans(tokenizer, messages)
    reply_starts = len(_render(tokenizer, messages[:-1], add_generation_prompt=True))
    if not spans or spans[-1][0] != reply_starts:
        return None
    return _encode(tokenizer, full, spans[-1:], max_length)


def render_conversations(tokenizer: Any, conversations: Sequence[Conversation], max_length: int | None) -> RenderedSet:
    """Render every conversation, counting the ones truncated or dropped."""
    ensure_chat_template(tokenizer)
    result = RenderedSet()
    for conversation in conversations:
        full, spans = assistant_spans(tokenizer, conversation.as_messages())
        if not spans:
            result.dropped_unrenderable += 1
            continue
        example = _encode(tokenizer, full, spans, max_length)
        if example is None:
            result.dropped_too_long += 1
            continue
        result.truncated += example.truncated
        result.examples.append(example)
    return result
