"""Generate one assistant reply into the store while it streams.

The one place that joins the engine and the store, shared by the TUI worker, the REPL and `ask`: the reply row is
created before the first token with status ``streaming``, its content is written as it grows (throttled), and it
is finalised with its stats and status ``complete`` / ``stopped`` / ``failed``. A crash mid-reply leaves the text
the user already saw in the database.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from sessions import Message, Store, title_from

from tui_chat.inference.contract import Engine, EngineError, GenerationParams, GenerationStats, TextDelta

SAVE_EVERY_S = 0.5  # how often a streaming reply is written to the DB


def conversation_messages(store: Store, conversation_id: int, upto: list[Message] | None = None) -> list[dict]:
    """The chat-template messages for the active branch (or ``upto``), with the system prompt first."""
    conversation = store.get_conversation(conversation_id)
    branch = upto if upto is not None else store.active_branch(conversation_id)
    messages = []
    if conversation.system_prompt:
        # The conversation's system prompt wins over any system message stored in the branch (e.g. imported).
        messages.append({"role": "system", "content": conversation.system_prompt})
        branch = [m for m in branch if m.role != "system"]
    messages.extend({"role": m.role, "content": m.content} for m in branch)
    return messages


def add_user_message(store: Store, conversation_id: int, text: str, *, edit_of: Message | None = None) -> Message:
    """Append the user's turn; with ``edit_of`` it becomes a sibling of that message (a new branch). Titles a new
    chat from its first message."""
    conversation = store.get_conversation(conversation_id)
    if edit_of is not None:
        message = store.add_message(conversation_id, "user", text, parent_id=edit_of.parent_id)
    else:
        message = store.add_message(conversation_id, "user", text)
    if conversation.title == "New chat":
        store.rename_conversation(conversation_id, title_from(text))
    return message


def generate_reply(
    store: Store,
    engine: Engine,
    conversation_id: int,
    params: GenerationParams,
    *,
    parent_id: int | None = None,
    stop: threading.Event | None = None,
    on_chunk: Callable[[TextDelta | GenerationStats], None] | None = None,
    save_every_s: float = SAVE_EVERY_S,
) -> Message:
    """Stream the engine's reply to the branch ending at ``parent_id`` (default: the tip) into the store.

    A reply under a message that already has replies becomes a sibling (``/retry``). ``on_chunk`` sees every
    chunk as it arrives (front ends print from it). Returns the finalised message: ``complete`` for eos/length,
    ``stopped`` when ``stop`` was set. An error marks it ``failed`` (with the error) and is re-raised; an interrupt
    (Ctrl+C in `ask`) keeps the partial text as ``stopped`` and is re-raised.
    """
    if parent_id is None:
        parent_id = store.get_conversation(conversation_id).tip_id
    messages = conversation_messages(store, conversation_id, upto=store.path_to(parent_id))
    reply = store.add_message(
        conversation_id,
        "assistant",
        "",
        parent_id=parent_id,
        model=engine.name,
        params=params.to_dict(),
        status="streaming",
    )
    text: list[str] = []
    saved_at = time.monotonic()
    stats: GenerationStats | None = None
    try:
        for chunk in engine.stream(messages, params, stop):
            if isinstance(chunk, TextDelta):
                text.append(chunk.text)
                if time.monotonic() - saved_at >= save_every_s:
                    store.update_message(reply.id, content="".join(text))
                    saved_at = time.monotonic()
            else:
                stats = chunk
            if on_chunk is not None:
                on_chunk(chunk)
    except EngineError as exc:
        store.update_message(reply.id, content="".join(text), status="failed", error=str(exc))
        raise
    except Exception as exc:
        # A bug, not the user's doing: the reply failed (the caller reports it); keep what the user already saw.
        store.update_message(reply.id, content="".join(text), status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    except BaseException:
        # KeyboardInterrupt (Ctrl+C in `ask`): keep what the user already saw as stopped, then let it propagate.
        store.update_message(reply.id, content="".join(text), status="stopped")
        raise
    if stats is None:
        store.update_message(reply.id, content="".join(text), status="failed", error="the engine sent no stats")
        raise EngineError("the model stopped without finishing its reply; try again")
    store.update_message(
        reply.id,
        content="".join(text),
        status="stopped" if stats.finish_reason == "stopped" else "complete",
        tokens_in=stats.prompt_tokens,
        tokens_out=stats.new_tokens,
        ttft_s=stats.ttft_s,
        duration_s=stats.duration_s,
    )
    return store.get_message(reply.id)
