"""A fake engine with queued replies and configurable speed, standing in for a model in tests."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Iterator

from tui_chat.inference.contract import (
    Chunk,
    EngineError,
    EngineInfo,
    GenerationParams,
    GenerationStats,
    ProgressCallback,
    TextDelta,
)


class FakeEngine:
    """Streams queued replies word by word. ``delay_s`` between tokens; ``fail_with`` makes the next call raise.

    Records every call's messages and params in ``calls`` so tests can assert what the model was shown.
    """

    def __init__(
        self,
        replies: list[str] | None = None,
        *,
        name: str = "fake-model",
        delay_s: float = 0.0,
        load_error: str | None = None,
        context_limit: int = 2048,
    ) -> None:
        self.name = name
        self.replies = deque(replies or [])
        self.delay_s = delay_s
        self.load_error = load_error
        self.fail_with: str | None = None
        self.context_limit = context_limit
        self.calls: list[tuple[list[dict[str, str]], GenerationParams]] = []
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    def load(self, progress: ProgressCallback | None = None) -> EngineInfo:
        if progress:
            progress("loading fake model", 1.0)
        if self.load_error:
            raise EngineError(self.load_error)
        self._ready = True
        return self.info()

    def info(self) -> EngineInfo:
        return EngineInfo(name=self.name, device="cpu", dtype="float32", context_limit=self.context_limit)

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        if not messages:  # as real chat templates do
            raise EngineError("the chat template of fake-model rejects these messages: an empty conversation")
        return sum(len(m["content"].split()) + 4 for m in messages)

    def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, stop: threading.Event | None = None
    ) -> Iterator[Chunk]:
        self.calls.append(([dict(m) for m in messages], params))
        if self.fail_with:
            error, self.fail_with = self.fail_with, None
            raise EngineError(error)
        reply = self.replies.popleft() if self.replies else f"echo: {messages[-1]['content']}"
        start = time.perf_counter()
        first_token_at = None
        pieces = reply.split(" ")
        sent = 0
        finish = "eos"
        for index, piece in enumerate(pieces):
            if stop is not None and stop.is_set():
                finish = "stopped"
                break
            if sent >= params.max_new_tokens:
                finish = "length"
                break
            if self.delay_s:
                time.sleep(self.delay_s)
            yield TextDelta(piece if index == 0 else " " + piece)
            sent += 1
            if first_token_at is None:
                first_token_at = time.perf_counter()
        now = time.perf_counter()
        yield GenerationStats(
            prompt_tokens=self.count_tokens(messages),
            new_tokens=sent,
            ttft_s=(first_token_at or now) - start,
            duration_s=now - start,
            finish_reason=finish,
            context_limit=self.context_limit,
        )
