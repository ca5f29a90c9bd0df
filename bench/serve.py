"""The model behind the data home's server, as the front ends use it (``serve.local``), on the bundled model.

Model-ready time, as a chat window waits for it: the old way (a process of its own: start Python, import torch,
load), a cold start of the home's server (start it, import torch there, load), and a second window finding that
server warm; then a whole `tui-chat ask` (the interpreter's start included) answering one token from the warm server.
Then decode speed: the same greedy reply from ``HFEngine`` in this process and through HTTP (the server's Unix
socket, the engine in the server's process), interleaved, best of ``REPEATS``. Targets (issue 18): warm ready < 1.5 s, HTTP
>= 0.95x in-process tokens/s.

A home of its own in a temp dir (its models folder links to the real one), so a server the user runs is not touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainer.home import DataHome
from trainer.models import ensure_bundled
from tui_chat.inference.contract import Engine, GenerationParams, GenerationStats, TextDelta
from tui_chat.inference.hf_engine import HFEngine
from tui_chat.serve.local import LocalServer, LocalServerEngine

MESSAGES = [{"role": "user", "content": "Write a short story about a lighthouse keeper who finds a message in a bottle."}]
PARAMS = GenerationParams(temperature=0, max_new_tokens=64)  # greedy: both paths decode the same tokens
SETTINGS = {"compile": False}  # eager on both paths: a background compile would make it another decode step
REPEATS = 5  # the two rows differ by a few percent: more runs keep the best of each steadier


def ready_s(engine: Engine) -> float:
    started = time.perf_counter()
    engine.load()
    return time.perf_counter() - started


def tokens_per_s(engine: Engine) -> float:
    """New tokens after the first over the time from the first text to the last, as the caller receives them."""
    first = last = None
    stats: GenerationStats | None = None
    for chunk in engine.stream(MESSAGES, PARAMS):
        if isinstance(chunk, TextDelta):
            last = time.perf_counter()
            first = first or last
        else:
            stats = chunk
    assert stats is not None and first is not None and last is not None and last > first
    return (stats.new_tokens - 1) / (last - first)


def main() -> None:
    real = DataHome.locate()
    ensure_bundled(real.models, progress=lambda what, _: print(f"  {what}", flush=True))
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        home = DataHome(Path(folder) / "home").ensure()
        home.models.rmdir()
        home.models.symlink_to(real.models)
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

        own = (f"from tui_chat.inference.hf_engine import HFEngine; "
               f"HFEngine('default', {str(home.models)!r}, compile=False).load()")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", own], check=True, capture_output=True)
        print(f"model ready, a process of its own (before): {time.perf_counter() - started:5.2f} s", flush=True)
        cold = LocalServerEngine("default", LocalServer(home, SETTINGS))
        print(f"model ready, cold start of the server:      {ready_s(cold):5.2f} s", flush=True)
        warm = LocalServerEngine("default", LocalServer(home, SETTINGS))  # a second window
        warm_s = ready_s(warm)
        print(f"model ready, second window, warm server:    {warm_s:5.2f} s   (target < 1.5 s)", flush=True)
        command = [sys.executable, "-m", "tui_chat", "--home", str(home.root), "--no-compile", "ask", "--no-save",
                   "--max-tokens", "1", "hi"]
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        print(f"`tui-chat ask` start to one-token answer, warm server: {time.perf_counter() - started:5.2f} s",
              flush=True)

        local = HFEngine("default", home.models, **SETTINGS)
        local.load()
        rows: dict[str, list[float]] = {"in-process": [], "HTTP": []}
        for _ in range(REPEATS):  # interleaved: both rows see the same load
            rows["in-process"].append(tokens_per_s(local))
            rows["HTTP"].append(tokens_per_s(warm))
        best = {label: max(values) for label, values in rows.items()}
        for label, value in best.items():
            print(f"decode {label:>10}: {value:6.1f} tok/s (best of {REPEATS}: "
                  f"{', '.join(f'{v:.1f}' for v in rows[label])})")
        print(f"HTTP / in-process: {best['HTTP'] / best['in-process']:.2f}x   (target >= 0.95x); "
              f"load average {os.getloadavg()[0]:.1f}")
        pid = warm.server.pid
        if pid is not None:
            os.kill(pid, 15)  # the bench's server goes with the bench


if __name__ == "__main__":
    main()
