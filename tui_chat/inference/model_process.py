"""The model process's side of ``process_engine``: an ``HFEngine`` answering the parent's requests over a pipe.

This module is what the spawned child runs; it imports torch (through ``hf_engine``) only inside ``serve_model``,
so the parent can name it without loading torch.
"""

from __future__ import annotations

import os
import signal
import threading
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tui_chat.inference.contract import GenerationParams, TextDelta


def serve_model(conn: Connection, output: Connection, spec: str, models_dir: str, options: dict[str, Any]) -> None:
    """The model process: an HFEngine answering requests until the parent says exit or goes away (EOF)."""
    # Ctrl+C in a terminal signals the whole process group; the parent decides what it means (Stop, quit).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Warnings and crash reports go to the parent, which keeps the last lines: on a terminal they would land in the
    # middle of the chat window.
    os.dup2(output.fileno(), 1)
    os.dup2(output.fileno(), 2)
    output.close()
    from tui_chat.inference.hf_engine import HFEngine  # here, not at the top: the parent process must not import torch

    _Server(conn, HFEngine(spec, Path(models_dir), **options)).listen()
    # os._exit: no interpreter teardown, which would wait for (or abort in the middle of) a background compile.
    os._exit(0)


class _Server:
    """The child's side: the main thread reads requests; each runs on a thread of its own and sends its replies."""

    def __init__(self, conn: Connection, engine: Any) -> None:
        self.conn = conn
        self.engine = engine
        self._send_lock = threading.Lock()
        self._stops: dict[int, threading.Event] = {}  # request id -> the stop event of a streaming reply

    def listen(self) -> None:
        while True:
            try:
                kind, request_id, payload = self.conn.recv()
            except (EOFError, OSError):  # the parent has gone
                return
            if kind == "exit":
                return
            if kind == "stop":
                stop = self._stops.get(request_id)
                if stop is not None:
                    stop.set()
                continue
            if kind == "stream":  # registered here, before its thread starts, so an early Stop is not lost
                self._stops[request_id] = threading.Event()
            threading.Thread(target=self._answer, args=(kind, request_id, payload), daemon=True).start()

    def _send(self, request_id: int, kind: str, payload: Any) -> None:
        with self._send_lock:
            self.conn.send((request_id, kind, payload))

    def _answer(self, kind: str, request_id: int, payload: Any) -> None:
        try:
            if kind == "load":
                result = self.engine.load(lambda what, fraction: self._send(request_id, "progress", (what, fraction)))
            elif kind == "info":
                result = self.engine.info()
            elif kind == "count_tokens":
                result = self.engine.count_tokens(payload)
            elif kind == "compile":  # a compiling process (_CompilingProcess): compile now, answer when done
                self.engine.decoder.warm_up(wait=True)
                result = self.engine.info()
            elif kind == "stream":
                result = self._stream(request_id, *payload)
            else:
                raise ValueError(f"unknown request {kind!r}")
        except Exception as exc:  # raised again in the parent (see _rebuilt)
            self._send(request_id, "error", (type(exc).__name__, str(exc), traceback.format_exc()))
        else:
            self._send(request_id, "result", result)
        finally:
            self._stops.pop(request_id, None)

    def _stream(self, request_id: int, messages: list[dict[str, str]], params: GenerationParams) -> Any:
        """Send each delta as it is made (the first one at once); the stats are the result."""
        stats = None
        for chunk in self.engine.stream(messages, params, self._stops[request_id]):
            if isinstance(chunk, TextDelta):
                self._send(request_id, "delta", chunk.text)
            else:
                stats = chunk
        return stats
