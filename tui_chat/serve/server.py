"""Running the app on uvicorn, on a socket the caller opened (so a busy port fails before the model loads): a TCP
port, or the Unix socket of a data home's private server (``local``), which leaves after an idle time."""

from __future__ import annotations

import socket
import time
from types import FrameType

import uvicorn

from tui_chat.serve.app import ReplyLog, make_app
from tui_chat.serve.catalog import ModelCatalog
from tui_chat.serve.scheduler import ModelScheduler

GRACEFUL_SHUTDOWN_S = 3  # on Ctrl+C, the longest uvicorn waits for connections to close before cancelling them


class ModelServer(uvicorn.Server):
    """uvicorn's server, which on Ctrl+C (or SIGTERM) also cuts the replies in progress short: uvicorn alone waits
    for every open stream to end, and a long reply on CPU takes a minute. With ``keep_alive_s`` it exits once no
    request has come or run for that long (as Ollama unloads an idle model)."""

    def __init__(self, scheduler: ModelScheduler, catalog: ModelCatalog, *, identity: dict | None = None,
                 api_key: str | None = None, keep_alive_s: float | None = None, log: ReplyLog | None = None) -> None:
        app = make_app(scheduler, catalog, identity=identity, api_key=api_key, log=log)
        super().__init__(uvicorn.Config(app, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, log_level="warning"))
        self.scheduler = scheduler
        self.keep_alive_s = keep_alive_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.scheduler.stop_all()
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        scheduler = self.scheduler
        idle = scheduler.pending == 0 and scheduler.loading is None
        return self.keep_alive_s is not None and idle and time.monotonic() - scheduler.last_active > self.keep_alive_s

    def serve_on(self, listener: socket.socket) -> None:
        """Serve until Ctrl+C, SIGTERM or the idle time; then the scheduler's worker ends too."""
        try:
            self.run(sockets=[listener])
        finally:
            self.scheduler.close()
