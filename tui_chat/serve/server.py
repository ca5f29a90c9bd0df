"""Running the app on uvicorn, on a socket the caller opened (so a busy port fails before the model loads)."""

from __future__ import annotations

import socket
from types import FrameType

import uvicorn

from tui_chat.serve.app import make_app
from tui_chat.serve.catalog import ModelCatalog
from tui_chat.serve.scheduler import ModelScheduler

GRACEFUL_SHUTDOWN_S = 3  # on Ctrl+C, the longest uvicorn waits for connections to close before cancelling them


class ModelServer(uvicorn.Server):
    """uvicorn's server, which on Ctrl+C (or SIGTERM) also cuts the replies in progress short: uvicorn alone waits
    for every open stream to end, and a long reply on CPU takes a minute."""

    def __init__(self, scheduler: ModelScheduler, catalog: ModelCatalog) -> None:
        super().__init__(uvicorn.Config(make_app(scheduler, catalog), timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S))
        self.scheduler = scheduler

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.scheduler.stop_all()
        super().handle_exit(sig, frame)

    def serve_on(self, listener: socket.socket) -> None:
        """Serve until Ctrl+C or SIGTERM; then the scheduler's worker ends too."""
        try:
            self.run(sockets=[listener])
        finally:
            self.scheduler.close()
