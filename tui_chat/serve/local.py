"""The data home's own model server, as the chat window, the REPL and `ask` use it: found on a Unix socket private
to the user, or started in the background, and the engine that talks to it (``LocalServerEngine``).

Why a server: a fresh process takes 7-10 s to import torch and load a model; a server that stays up for an idle
time (``KEEP_ALIVE_S``) answers the next window at once, and every window shares one loaded model. The server's
/health says which app version (down to the source files) and which engine settings it runs with; a server that
differs is replaced, never reused. Starting is serialised with a lock file, so two windows opened together start
one server. This module is imported by the front ends: no torch, no Starlette, only httpx.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx2 as httpx

from sessions import one_line
from trainer.home import DataHome
from trainer.model_names import engine_name

from tui_chat.inference.contract import (
    Chunk,
    EngineError,
    EngineInfo,
    GenerationParams,
    ProgressCallback,
)
from tui_chat.inference.openai_engine import ConnectionLost, OpenAIEngine, ServerUnreachable

KEEP_ALIVE_S = 15 * 60  # how long an idle server stays up; TUI_CHAT_KEEP_ALIVE (seconds) overrides it
START_TIMEOUT_S = 60.0  # the longest wait for a started server to answer (it imports Starlette, not torch, first)
EXIT_WAIT_S = 10.0  # how long replacing a server waits for the old one to leave before killing it
POLL_S = 0.1
MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 108 bytes on Linux (104 on macOS)
LOG_LINES = 5  # lines of the server's log kept in the error for a server that would not start


def keep_alive_s() -> float:
    raw = os.environ.get("TUI_CHAT_KEEP_ALIVE")
    try:
        return float(raw) if raw else KEEP_ALIVE_S
    except ValueError:
        raise EngineError(f"TUI_CHAT_KEEP_ALIVE must be a number of seconds, not {raw!r}") from None


def server_dir(home: DataHome) -> Path:
    """Where the server's log and start lock live (0700)."""
    return home.root / "server"


def socket_path(home: DataHome) -> Path:
    """The server's Unix socket: in the home, or, where that path is too long for a socket, in a private folder of
    the temp dir named after the home."""
    path = server_dir(home) / "model.sock"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(home.root.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"tui-chat-{os.getuid()}" / f"{digest}.sock"


def private_dir(path: Path) -> Path:
    """``path`` made (if needed) and readable by this user only."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def server_identity(settings: dict[str, Any]) -> dict[str, Any]:
    """What a reusable server must match: the app's version with a fingerprint of its source files (an upgrade, or
    an edit in a checkout, changes it) and the engine settings (device, dtype, quantize, compile, ...)."""
    try:
        app_version = version("tui-chat")
    except PackageNotFoundError:
        app_version = "unknown"
    return {"version": f"{app_version}+{_source_fingerprint()}", "settings": dict(sorted(settings.items()))}


def _source_fingerprint() -> str:
    """A hash of the path, size and modification time of every source file of the app and the trainer."""
    import sessions
    import trainer
    import tui_chat

    digest = hashlib.sha256()
    for package in (tui_chat, trainer, sessions):
        root = Path(package.__file__ or "").parent
        for path in sorted(root.rglob("*.py")):
            stat = path.stat()
            digest.update(f"{path.relative_to(root.parent)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def serve_arguments(home: DataHome, spec: str, settings: dict[str, Any]) -> list[str]:
    """The `tui-chat serve` command line of the home's server, with ``settings`` as engine flags."""
    return [*serve_command_line(home, spec, settings), "--socket", str(socket_path(home)),
            "--keep-alive", f"{keep_alive_s():g}"]


def serve_command_line(home: DataHome, spec: str, settings: dict[str, Any]) -> list[str]:
    """`tui-chat serve --model SPEC` in ``home`` with ``settings`` as engine flags (where it listens comes after)."""
    flags = []
    for name in ("device", "dtype", "quantize"):
        if settings.get(name) is not None:
            flags += [f"--{name}", str(settings[name])]
    if settings.get("compile") is not None:
        flags.append("--compile" if settings["compile"] else "--no-compile")
    if settings.get("trust_remote_code"):
        flags.append("--trust-remote-code")
    return [sys.executable, "-m", "tui_chat", "--home", str(home.root), "serve", "--model", spec, *flags]


class LocalServer:
    """The home's server for one set of engine settings: ``ensure()`` finds a matching one or starts it."""

    def __init__(self, home: DataHome, settings: dict[str, Any]) -> None:
        self.home = home
        self.settings = settings
        self.identity = server_identity(settings)
        self.socket = socket_path(home)
        self.pid: int | None = None  # the server's process id, from its /health
        self._client = httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://local",
                                    timeout=httpx.Timeout(10.0))

    def transport(self) -> httpx.HTTPTransport:
        return httpx.HTTPTransport(uds=str(self.socket))

    def health(self) -> dict[str, Any] | None:
        """The server's /health, or None when nothing answers on the socket."""
        if not self.socket.exists():
            return None
        try:
            response = self._client.get("/health")
        except httpx.TransportError:
            return None
        if response.status_code != 200:
            return None
        health = response.json()
        self.pid = health.get("pid")
        return health

    def ensure(self, spec: str, progress: ProgressCallback | None = None) -> None:
        """A server with this app version and these settings answers on the socket: the one running, or a new one
        (an old or differently set one is stopped first)."""
        private_dir(server_dir(self.home))
        private_dir(self.socket.parent)
        with open(server_dir(self.home) / "start.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time; the others then find its server
            health = self.health()
            if health is not None and all(health.get(key) == value for key, value in self.identity.items()):
                return
            if health is not None:
                if progress is not None:
                    progress("replacing the model server (another app version or other settings)", None)
                self._stop(health.get("pid"))
            if progress is not None:
                progress("starting the model server", None)
            self._start(spec)

    def _stop(self, pid: Any) -> None:
        if not isinstance(pid, int):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + EXIT_WAIT_S
        while self.health() is not None and time.monotonic() < deadline:
            time.sleep(POLL_S)
        if self.health() is not None:
            os.kill(pid, signal.SIGKILL)

    def _start(self, spec: str) -> None:
        log_path = server_dir(self.home) / "server.log"
        log = open(log_path, "ab")
        os.chmod(log_path, 0o600)
        with log:
            process = subprocess.Popen(
                serve_arguments(self.home, spec, self.settings), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,  # its own session: Ctrl+C in this terminal, and this window's exit, spare it
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        threading.Thread(target=process.wait, daemon=True, name="server-reaper").start()  # no zombie when it leaves
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.health() is None:
            if process.poll() is not None or time.monotonic() > deadline:
                if process.poll() is None:
                    process.kill()
                raise EngineError(f"the model server did not start ({_last_lines(log_path)}); see {log_path}")
            time.sleep(POLL_S)


def _last_lines(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return one_line(" / ".join(lines[-LOG_LINES:]), 400) if lines else "it wrote nothing"


class LocalServerEngine(OpenAIEngine):
    """A model of the data home, run by the home's server (started when none is up); see ``contract.Engine``.

    A server that went away between two replies (its idle time ran out, it was killed) is started again by the
    next reply; one that goes away during a reply fails that reply with one line, and the next starts a new one.
    """

    def __init__(self, spec: str, server: LocalServer) -> None:
        super().__init__(engine_name(spec), spec, "http://local/v1", transport=server.transport(), extensions=True)
        self.spec = spec
        self.server = server

    @property
    def where(self) -> str:
        return "the model server"

    @property
    def ready(self) -> bool:
        return self._info is not None and self.server.socket.exists()

    def load(self, progress: ProgressCallback | None = None) -> EngineInfo:
        """Make sure the server runs, have it load this model, and report its progress until the model is ready."""
        self._info = None
        self.server.ensure(self.spec, progress)
        self._post("/load", {"model": self.spec})
        while True:
            health = self.server.health()
            if health is None:
                raise EngineError("the model server ended while loading; see "
                                  f"{server_dir(self.server.home) / 'server.log'} and try again")
            failed = health.get("load_error")
            if failed and failed.get("model") == self.name:
                raise EngineError(failed["message"])
            loading = health.get("loading")
            if health.get("loaded") and health.get("model") == self.name and loading is None:
                self._info = _info(health["info"])
                return self._info
            if loading is None and not health.get("pending"):  # another client loaded its model meanwhile
                self._post("/load", {"model": self.spec})
            elif loading is not None and progress is not None:
                progress(loading["what"], loading["fraction"])
            time.sleep(POLL_S)

    def info(self) -> EngineInfo:
        """Asked of the server each time (a background compile changes it), the last answer if it is gone."""
        health = self.server.health()
        if health and health.get("model") == self.name and health.get("info"):
            self._info = _info(health["info"])
        return super().info()

    def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, stop: threading.Event | None = None
    ) -> Iterator[Chunk]:
        try:
            yield from super().stream(messages, params, stop)
        except ServerUnreachable:  # gone before this reply reached it: start it again (no progress) and send
            self.load(None)
            yield from super().stream(messages, params, stop)
        except ConnectionLost:
            self._info = None  # the next reply starts a new server
            pid = f" (pid {self.server.pid})" if self.server.pid else ""
            raise EngineError(f"the model server{pid} ended during the reply; send again to restart it") from None

    def _post(self, path: str, body: dict[str, Any]) -> None:
        try:
            response = self._client.post(self._root_url(path), json=body)
        except httpx.TransportError as exc:
            raise EngineError(f"the model server stopped answering ({one_line(str(exc), 200)}); try again") from None
        if response.status_code >= 400:
            raise EngineError(self._refusal(response))


def _info(values: dict[str, Any]) -> EngineInfo:
    return EngineInfo(name=values["name"], device=values["device"], dtype=values["dtype"],
                      context_limit=values["context_limit"], extra=values.get("extra") or {})
