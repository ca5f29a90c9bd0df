"""How the chat window keeps up with a fast model: a fake engine streams 500 tokens/s into a 200-message chat.

Measured in one run, side by side:
- the app as built (text appended through Textual's Markdown stream, one full render at the end), and
- a naive baseline that posts a message per token and re-renders the whole reply for each (what the house style
  forbids),
each reporting the event loop's lag (p50/p99: how late a 5 ms timer fires; the UI's responsiveness), how far the
text on screen trails the engine (p50/p99: the age of the oldest token sent but not yet mounted in the Markdown
widget), the delay from the last token to the final render, the UI thread's CPU share while streaming, and the
screen updates while streaming (how many, and how long one takes: layout and paint, during which nothing else runs).
Targets: p99 lag < 50 ms, final render < 100 ms after the last token.

The app runs headless (Textual's test driver): layout and rendering happen, only the terminal write is skipped.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from textual.await_complete import AwaitComplete
from textual.screen import Screen
from textual.widgets import Markdown

from sessions import Store, memory_database
from trainer.home import DataHome
from tui_chat.tui.app import make_app
from tui_chat.tui.worker_messages import PendingText
from tui_chat.inference.contract import (
    Chunk,
    EngineInfo,
    GenerationParams,
    GenerationStats,
    TextDelta,
)
from tui_chat.tui.widgets.message_view import MessageView

TOKENS_PER_S = 500
REPLY_TOKENS = 600  # 1.2 s of streaming, about 2,400 characters
HISTORY_MESSAGES = 200
TICK_S = 0.005  # the lag probe's timer period
SAMPLE_S = 0.02  # how often the text on screen is compared with what the engine has sent

INTRO = (
    "Streaming keeps the **interface** responsive: each `token` is appended to the document, and only the "
    "last block is parsed again, so the cost of a new token does not grow with the length of the reply.\n\n"
)
POINTS = (
    "1. The worker thread posts text deltas as messages.\n"
    "2. The screen appends them to a Markdown stream.\n"
    "3. The stream batches what arrives while it renders.\n"
    "4. The stored reply is final once the stats arrive.\n\n"
)
CODE = (
    "```python\ndef fib(n: int) -> int:\n    \"\"\"The n-th Fibonacci number.\"\"\"\n"
    "    return n if n < 2 else fib(n - 1) + fib(n - 2)\n```\n\n"
)
OUTRO = "In short: *measure*, then keep the work per token constant. Ask if you want the details.\n\n"
REPLY = INTRO + POINTS + INTRO + CODE + INTRO + OUTRO  # one reply of the kind a chat model writes


def reply_pieces(count: int) -> list[str]:
    """``count`` tokens (about 4 characters each) of a realistic Markdown reply, repeated as needed."""
    text = REPLY * (count * 4 // len(REPLY) + 1)
    return [text[i : i + 4] for i in range(0, count * 4, 4)]


def history_reply() -> str:
    return INTRO + POINTS + CODE


class PacedEngine:
    """Emits ``pieces`` at a fixed rate and records when each one was sent (perf_counter seconds)."""

    name = "paced-fake"

    def __init__(self, pieces: list[str], tokens_per_s: float) -> None:
        self.pieces = pieces
        self.interval = 1.0 / tokens_per_s
        self.sent_at: list[float] = []
        self.sent_chars: list[int] = []  # cumulative characters sent, parallel to sent_at
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    def load(self, progress=None) -> EngineInfo:
        self._ready = True
        return self.info()

    def info(self) -> EngineInfo:
        return EngineInfo(self.name, "cpu", "none", 8192)

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return sum(len(m["content"]) // 4 for m in messages)

    def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, stop: threading.Event | None = None
    ) -> Iterator[Chunk]:
        start = time.perf_counter()
        chars = 0
        for index, piece in enumerate(self.pieces):
            # Sleep to the schedule rather than a fixed gap, so the rate holds even when a sleep overshoots.
            delay = start + index * self.interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            chars += len(piece)
            self.sent_at.append(time.perf_counter())
            self.sent_chars.append(chars)
            yield TextDelta(piece)
        now = time.perf_counter()
        yield GenerationStats(len(messages), len(self.pieces), self.sent_at[0] - start, now - start, "eos")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def history_store() -> tuple[Store, int]:
    store = Store(memory_database())
    conversation = store.create_conversation("benchmark")
    with store.transaction():
        for index in range(HISTORY_MESSAGES // 2):
            store.add_message(conversation.id, "user", f"Question {index}: how does streaming work?")
            store.add_message(conversation.id, "assistant", history_reply())
    return store, conversation.id


async def measure(naive: bool) -> dict[str, float]:
    store, conversation_id = history_store()
    engine = PacedEngine(reply_pieces(REPLY_TOKENS), TOKENS_PER_S)
    with tempfile.TemporaryDirectory() as root:
        home = DataHome(Path(root))
        app = make_app(store, engine, home=home, engine_factory=lambda spec: engine)
        original_append, original_add = MessageView.append, PendingText.add
        markdown_append, markdown_update = Markdown.append, Markdown.update
        rendered: dict[int, int] = {}  # id(Markdown widget) -> characters of its source mounted so far

        def tracking(method):
            """Wrap Markdown.append/update to note how much text is mounted once each one completes."""

            def wrapper(widget: Markdown, markdown: str) -> AwaitComplete:
                work = method(widget, markdown)
                target = len(widget.source)

                async def done() -> None:
                    await work
                    rendered[id(widget)] = max(rendered.get(id(widget), 0), target)

                return AwaitComplete(done())

            return wrapper

        Markdown.append, Markdown.update = tracking(markdown_append), tracking(markdown_update)
        streaming = False
        updates: list[float] = []  # seconds each screen update (layout and paint) took while streaming
        original_update = Screen._on_timer_update

        def timed_update(screen: Screen) -> None:
            started = time.perf_counter()
            original_update(screen)
            if streaming:
                updates.append(time.perf_counter() - started)

        Screen._on_timer_update = timed_update
        final_rendered: list[float] = []
        original_finish = MessageView.finish

        async def naive_append(view: MessageView, text: str) -> None:
            view._naive_text = getattr(view, "_naive_text", "") + text
            await view.query_one(".message-body").update(view._naive_text)

        async def timed_finish(view: MessageView, message, version) -> None:
            await original_finish(view, message, version)
            app.call_after_refresh(lambda: final_rendered.append(time.perf_counter()))

        MessageView.finish = timed_finish
        if naive:
            MessageView.append = naive_append
            PendingText.add = lambda pending, text: original_add(pending, text) or True  # a message per token
        try:
            async with app.run_test(size=(120, 40)) as pilot:
                screen = app.screen
                while screen.engine is None or screen.conversation is None:
                    await pilot.pause(0.01)
                started = time.perf_counter()
                await screen.open_conversation(conversation_id)
                await pilot.pause()
                opened_s = time.perf_counter() - started

                lags: list[float] = []
                trail: list[float] = []
                streaming = True

                async def probe_lag() -> None:
                    while streaming:
                        before = time.perf_counter()
                        await asyncio.sleep(TICK_S)
                        lags.append(time.perf_counter() - before - TICK_S)

                async def probe_trail() -> None:
                    while streaming:
                        await asyncio.sleep(SAMPLE_S)
                        view = screen._streaming
                        if view is None or not engine.sent_chars:
                            continue
                        shown = rendered.get(id(view.query_one(Markdown)), 0)
                        now = time.perf_counter()
                        # When did the engine send the first character not yet on screen? It has waited since.
                        waiting = bisect.bisect_right(engine.sent_chars, shown)
                        if waiting < len(engine.sent_chars):
                            trail.append(now - engine.sent_at[waiting])
                        else:
                            trail.append(0.0)

                probes = [asyncio.create_task(probe_lag()), asyncio.create_task(probe_trail())]
                wall, cpu = time.perf_counter(), time.thread_time()  # this thread runs the app's event loop
                await screen.send("Tell me about streaming.")
                # asyncio.sleep, not pilot.pause: the naive variant falls so far behind that waiting for the
                # screen's queue to drain times out.
                while screen.generating or not final_rendered:
                    await asyncio.sleep(0.005)
                busy = (time.thread_time() - cpu) / (time.perf_counter() - wall)
                streaming = False
                await asyncio.gather(*probes)
                reply = store.active_branch(conversation_id)[-1]
                assert reply.content == "".join(engine.pieces), "the whole reply must be saved"
        finally:
            MessageView.append, PendingText.add = original_append, original_add
            Markdown.append, Markdown.update = markdown_append, markdown_update
            MessageView.finish = original_finish
            Screen._on_timer_update = original_update
    return {
        "open_ms": opened_s * 1000,
        "lag_p50_ms": percentile(lags, 0.50) * 1000,
        "lag_p99_ms": percentile(lags, 0.99) * 1000,
        "trail_p50_ms": percentile(trail, 0.50) * 1000,
        "trail_p99_ms": percentile(trail, 0.99) * 1000,
        "final_render_ms": (final_rendered[0] - engine.sent_at[-1]) * 1000,
        "engine_tok_s": (len(engine.sent_at) - 1) / (engine.sent_at[-1] - engine.sent_at[0]),
        "ui_busy_pct": busy * 100,
        "updates": len(updates),
        "update_p50_ms": percentile(updates, 0.50) * 1000 if updates else 0.0,
        "update_max_ms": max(updates, default=0.0) * 1000,
    }


def main() -> None:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"{REPLY_TOKENS} tokens at {TOKENS_PER_S} tokens/s into a {HISTORY_MESSAGES}-message conversation "
        f"(headless, 120x40; {os.cpu_count()} CPUs, load average {load}: timings stretch with the load)",
        flush=True,
    )
    built = asyncio.run(measure(naive=False))
    naive = asyncio.run(measure(naive=True))
    rows = [
        ("event-loop lag p50", "lag_p50_ms", "ms"),
        ("event-loop lag p99 (target < 50)", "lag_p99_ms", "ms"),
        ("text on screen trails engine p50", "trail_p50_ms", "ms"),
        ("text on screen trails engine p99", "trail_p99_ms", "ms"),
        ("last token -> final render (target < 100)", "final_render_ms", "ms"),
        ("engine rate achieved", "engine_tok_s", "tok/s"),
        ("UI thread CPU while streaming", "ui_busy_pct", "%"),
        ("screen updates while streaming", "updates", ""),
        ("screen update (layout + paint) p50", "update_p50_ms", "ms"),
        ("screen update (layout + paint) max", "update_max_ms", "ms"),
        ("open the 200-message conversation", "open_ms", "ms"),
    ]
    print(f"{'':44} {'stream (built)':>15} {'naive re-render':>16} {'naive/stream':>13}")
    for label, key, unit in rows:
        ratio = naive[key] / built[key] if built[key] else float("nan")
        print(f"{label:44} {built[key]:>11.1f} {unit:<3} {naive[key]:>12.1f} {unit:<3} {ratio:>12.2f}x")
    ok = built["lag_p99_ms"] < 50 and built["final_render_ms"] < 100
    print(f"targets (p99 lag < 50 ms, final render < 100 ms): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
