"""Decode speed as a chat window feels it: the same reply from the bundled model decoded in this process
(``HFEngine``) and in a child process (``ProcessEngine``), with this process idle and with it busy the way a TUI is
while a reply streams (a thread running Python in a loop, standing in for Textual's rendering).

Rows are measured interleaved in one run, best of ``REPEATS``. "tok/s" is what the caller sees: new tokens after the
first over the time from the first text to the last; "UI loops/s" is how much of its own work the busy thread got
done meanwhile (the share of the GIL the decoding left it).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from trainer.home import DataHome
from trainer.models import BUNDLED_DIR, ensure_bundled
from tui_chat.inference.hf_engine import HFEngine
from tui_chat.inference.process_engine import ProcessEngine
from tui_chat.inference.contract import Engine, GenerationParams, GenerationStats, TextDelta

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
MESSAGES = [{"role": "user", "content": PROMPT}]
PARAMS = GenerationParams(temperature=0, max_new_tokens=48)  # greedy: every row decodes the same tokens
REPEATS = 2


@dataclass(frozen=True)
class Run:
    tokens_per_s: float  # as received by the caller
    ttft_s: float  # from the call to the first text, seconds
    ui_loops_per_s: float  # the busy thread's loops while the reply streamed (0 when idle)


def render_like_a_tui(stop: threading.Event, loops: list[int]) -> None:
    """Pure-Python work that holds the GIL as a Textual repaint does: build styled strings, lay them out."""
    while not stop.is_set():
        lines = [f"{'│' * (i % 7)} line {i}: " + " ".join(str(j * j) for j in range(12)) for i in range(40)]
        widths = sorted(len(line) for line in lines)
        loops[0] += widths[-1] > 0


def measure(engine: Engine, busy: bool) -> Run:
    stop, loops = threading.Event(), [0]
    ui = threading.Thread(target=render_like_a_tui, args=(stop, loops), daemon=True)
    if busy:
        ui.start()
    started = time.perf_counter()
    first = last = None
    stats: GenerationStats | None = None
    for chunk in engine.stream(MESSAGES, PARAMS):
        if isinstance(chunk, TextDelta):
            last = time.perf_counter()
            first = first or last
        else:
            stats = chunk
    stop.set()
    if busy:
        ui.join()
    assert stats is not None and first is not None and last is not None
    decode_s = last - first
    return Run(
        tokens_per_s=(stats.new_tokens - 1) / decode_s if decode_s > 0 else 0.0,
        ttft_s=first - started,
        ui_loops_per_s=loops[0] / (last - started),
    )


def main() -> None:
    models_dir = DataHome.locate().models
    ensure_bundled(models_dir, progress=lambda what, _: print(f"  {what}", flush=True))
    load = os.getloadavg()[0]
    print(f"bundled model in {models_dir / BUNDLED_DIR}; load average {load:.1f} on {os.cpu_count()} cores")
    # Eager in both: the child compiles in the background by default (see trainer.devices), which would make it
    # another decode step, not another process.
    child = ProcessEngine("default", models_dir, compile=False)
    engines: dict[str, Engine] = {"in-process": HFEngine("default", models_dir, compile=False), "child": child}
    for label, engine in engines.items():
        started = time.perf_counter()
        info = engine.load()
        print(
            f"{label}: {info.device}, {info.dtype}, quantize {info.extra['quantize']}, compile {info.extra['compile']}, "
            f"{info.extra['threads']} thread(s), loaded in {time.perf_counter() - started:.1f} s"
        )
    rows = [(label, busy) for busy in (False, True) for label in engines]
    best: dict[tuple[str, bool], Run] = {}
    for _ in range(REPEATS):
        for label, busy in rows:
            run = measure(engines[label], busy)
            if (label, busy) not in best or run.tokens_per_s > best[label, busy].tokens_per_s:
                best[label, busy] = run
    print(f"\n{PARAMS.max_new_tokens}-token greedy reply, best of {REPEATS}:")
    print(f"  {'decoding':<11} {'this process':<13} {'tok/s':>6} {'TTFT s':>7} {'UI loops/s':>11}")
    for label, busy in rows:
        run = best[label, busy]
        ui = f"{run.ui_loops_per_s:11.0f}" if busy else f"{'-':>11}"
        print(f"  {label:<11} {'busy' if busy else 'idle':<13} {run.tokens_per_s:6.1f} {run.ttft_s:7.3f} {ui}")
    for busy in (False, True):
        ratio = best["child", busy].tokens_per_s / best["in-process", busy].tokens_per_s
        print(f"  child / in-process, this process {'busy' if busy else 'idle'}: {ratio:.2f}x tok/s")
    ui_ratio = best["child", True].ui_loops_per_s / best["in-process", True].ui_loops_per_s
    print(f"  UI loops/s while the reply streams, child / in-process: {ui_ratio:.2f}x")
    child.close()
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
