"""Running the app on uvicorn, on a socket the caller opened (so a busy port fails before the model loads): a TCP
port, or the Unix socket of a data home's private server (``local``), which leaves after an idle time."""

from __future__ import annotations

import signal
import socket
import time
from types import FrameType

import uvicorn

from tui_chat.serve.app import ReplyLog, make_app
from tui_chat.serve.catalog import ModelCatalog
from tui_chat.serve.handover import HANDOVER_SIGNAL, Successor
from tui_chat.serve.scheduler import ModelScheduler

GRACEFUL_SHUTDOWN_S = 3  # on Ctrl+C, the longest uvicorn waits for connections to close before cancelling them


class ModelServer(uvicorn.Server):
    """uvicorn's server, which on Ctrl+C (or SIGTERM) also cuts the replies in progress short: uvicorn alone waits
    for every open stream to end, and a long reply on CPU takes a minute. With ``keep_alive_s`` it exits once no
    request has come or run for that long (as Ollama unloads an idle model). With a ``successor`` (see handover.py)
    it retires when the successor signals that it serves: it stops accepting and leaves once its replies are done."""

    def __init__(self, scheduler: ModelScheduler, catalog: ModelCatalog, *, identity: dict | None = None,
                 api_key: str | None = None, keep_alive_s: float | None = None, log: ReplyLog | None = None,
                 successor: Successor | None = None) -> None:
        app = make_app(scheduler, catalog, identity=identity, api_key=api_key, log=log)
        super().__init__(uvicorn.Config(app, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, log_level="warning"))
        self.scheduler = scheduler
        self.keep_alive_s = keep_alive_s
        self.successor = successor
        self.retiring = False  # the successor serves now: accept nothing more, leave when idle
        # Installed now, before a load can start a successor: the signal's default action would end this process.
        self._previous_handler = signal.signal(HANDOVER_SIGNAL, self.retire) if successor is not None else None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.scheduler.stop_all()
        super().handle_exit(sig, frame)

    def retire(self, sig: int, frame: FrameType | None) -> None:
        if self.successor is not None:
            self.successor.handed_over()
            self.retiring = True

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        scheduler = self.scheduler
        idle = scheduler.pending == 0 and scheduler.loading is None
        if self.retiring:
            for server in self.servers:
                server.close()  # closes this process's copy of the socket; the successor's stays open
            return scheduler.pending == 0
        return self.keep_alive_s is not None and idle and time.monotonic() - scheduler.last_active > self.keep_alive_s

    def serve_on(self, listener: socket.socket) -> None:
        """Serve until Ctrl+C, SIGTERM, the idle time or the hand-over; then the scheduler's worker ends, and a
        successor that has not taken over is ended."""
        try:
            self.run(sockets=[listener])
        finally:
            self.scheduler.close()
            if self.successor is not None:
                self.successor.end()
                signal.signal(HANDOVER_SIGNAL, self._previous_handler)
