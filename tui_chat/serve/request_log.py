"""`tui-chat serve --log`: each answered request kept as a conversation in the chat store, so what other programs
asked the model can be read, rated, corrected, exported and trained on like the chat's own conversations."""

from __future__ import annotations

from sessions import Store, one_line

from tui_chat.inference.contract import GenerationStats
from tui_chat.serve.protocol import CompletionRequest

TITLE_CHARS = 60


class RequestLog:
    """Writes each finished reply, with the messages it answered, as a new conversation."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __call__(self, model: str, request: CompletionRequest, text: str, stats: GenerationStats) -> None:
        system = "\n\n".join(m["content"] for m in request.messages if m["role"] == "system") or None
        turns = [m for m in request.messages if m["role"] != "system"]
        first_user = next((m["content"] for m in turns if m["role"] == "user"), "request")
        conversation = self.store.create_conversation(one_line(first_user, TITLE_CHARS), model=model,
                                                      system_prompt=system, params=request.params.to_dict())
        for message in turns:
            self.store.add_message(conversation.id, message["role"], message["content"],
                                   model=model if message["role"] == "assistant" else None)
        reply = self.store.add_message(conversation.id, "assistant", text, model=model,
                                       params=request.params.to_dict(),
                                       status="stopped" if stats.finish_reason == "stopped" else "complete")
        self.store.update_message(reply.id, tokens_in=stats.prompt_tokens, tokens_out=stats.new_tokens,
                                  ttft_s=stats.ttft_s, duration_s=stats.duration_s)
