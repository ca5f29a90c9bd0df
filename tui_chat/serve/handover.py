"""The compiled successor: on CPU the server answers with the eager decode step at once, while a second server
process loads the same model, compiles its decode step, and then takes over the listening socket between replies.

Why a second process, not a compile in the server's own: while torch compiles, it wraps module calls process-wide,
and replies decoded in that process ran at about half speed for the 30-100 s a compile takes on CPU. In a process of
its own the compile costs a core, not the replies.

How it takes over, with nothing but the OS: the successor inherits the listening socket (one socket, two processes
accepting on it), so no address changes hands and no client notices. Once its compile is done it signals the
serving process (``SIGUSR1``), which stops accepting, finishes the replies it has, and leaves; the successor serves
from then on. Its prompt caches start empty: the next reply of each conversation encodes the history once.

A model on the KV buffer (the bundled one) needs no successor: the serving process has its decode package
(decode_package.py) built in a process of its own (build_package.py, about a minute) and loads it when it is ready
(a reply under way finishes on the eager step), keeping its prompt caches; every later server of that data home
loads the package with the model and decodes compiled from its first reply. Successors compile the other models
(sliding-window attention).

A successor never outlives a server that did not hand over: the server ends it when it leaves, and the successor
leaves by itself when it finds its parent gone before the hand-over (a server killed with SIGKILL).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from sessions import one_line

from tui_chat.inference.contract import Engine, EngineError, EngineInfo

HANDOVER_SIGNAL = signal.SIGUSR1  # successor -> serving server: "I am ready, stop accepting"
PARENT_POLL_S = 0.5  # how often a compiling successor checks that its server is still there
END_WAIT_S = 5.0  # how long ending a successor waits for it before killing it


def serving_overrides(settings: dict[str, Any]) -> dict[str, Any]:
    """The serving process's engine settings over the server's. On CPU its decode step is never compiled in this
    process: a model on the KV buffer gets its decode package built in a process of its own and loaded
    (``build_package``), any other gets a successor. ``compile`` None lets CUDA compile in the engine itself, where
    it costs replies nothing."""
    if not compiles(settings):
        return {"compile": False}
    return {"compile": None, "build_package": True}


def compiles(settings: dict[str, Any]) -> bool:
    """Whether the decode step is compiled at all: on unless ``--no-compile``."""
    return settings.get("compile") is not False


def wants_successor(settings: dict[str, Any], info: EngineInfo) -> bool:
    """A loaded engine that decodes on CPU with the eager step, in a server that compiles: a successor should."""
    return compiles(settings) and info.device == "cpu" and info.extra.get("compile") == "off"


def report_package_build(engine: Engine, poll_s: float = 1.0) -> None:
    """In the serving process, for an engine whose decode package is being built in a process of its own (its
    compile state "warming" after loading): say so in the server's log, and again when it is ready or failed."""
    print("building the decode package in a process of its own; replies use the eager step until it is loaded",
          file=sys.stderr, flush=True)
    started = time.monotonic()

    def watch() -> None:
        state = engine.info().extra.get("compile")
        while state == "warming":
            time.sleep(poll_s)
            state = engine.info().extra.get("compile")
        if state == "ready":
            print(f"the compiled decode step is ready after {time.monotonic() - started:.0f} s (decode package loaded)",
                  file=sys.stderr, flush=True)
        else:
            print(f"the decode step stays eager: {one_line(str(state), 300)}", file=sys.stderr, flush=True)

    threading.Thread(target=watch, name="package-build-watch", daemon=True).start()


class Successor:
    """The serving process's side: starts the successor for the loaded model, and reports how its compile goes.

    ``command(spec)`` is the `tui-chat serve` command line of a server like this one for ``spec``; the successor gets
    it with the listening socket's descriptor and this process's id added, and ``env`` (where the API key goes: never
    on a command line, which other users can read).
    """

    def __init__(self, command: Callable[[str], list[str]], listener_fd: int, settings: dict[str, Any],
                 env: dict[str, str] | None = None) -> None:
        self.command = command
        self.listener_fd = listener_fd
        self.settings = settings  # the server's engine settings
        self.env = env
        self.state: str | None = None  # None (no successor) | warming | failed: why | handed over
        self.process: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def after_load(self, spec: str, info: EngineInfo) -> None:
        """A model was loaded: start its successor where one should compile it."""
        if wants_successor(self.settings, info):
            self.begin(spec)

    def describe(self, info: EngineInfo) -> EngineInfo:
        """``info`` with the successor's compile state: warming, failed, or (handed over, this server about to leave)
        ready, as the next reply will find it."""
        state = self.state
        if state is None:
            return info
        state = "ready" if state == "handed over" else state
        return dataclasses.replace(info, extra={**info.extra, "compile": state})

    def begin(self, spec: str) -> None:
        """Start a successor for ``spec`` (ending one started for another model)."""
        with self._lock:
            self._end_locked()
            command = [*self.command(spec), "--successor-of", str(os.getpid()), "--listen-fd", str(self.listener_fd)]
            # Its output goes where this server's goes (the home server's log, or the terminal of `tui-chat serve`).
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, pass_fds=(self.listener_fd,), env=self.env)
            self.state = "warming"
            print(f"compiling the decode step in a second process (pid {self.process.pid}); it takes over when "
                  "ready", file=sys.stderr, flush=True)
            threading.Thread(target=self._watch, args=(self.process,), name="successor-watch", daemon=True).start()

    def handed_over(self) -> None:
        """The successor signalled that it serves now (called from the signal handler: no lock)."""
        self.state = "handed over"

    def end(self) -> None:
        """End a successor that has not taken over (this server leaves, or loads another model)."""
        with self._lock:
            self._end_locked()

    def wait(self) -> int:
        """After the hand-over, in a server run in the foreground: wait for the successor, which now serves (Ctrl+C
        reaches both processes; this one waits for the successor to finish its shutdown)."""
        process = self.process
        assert process is not None
        while True:
            try:
                return process.wait()
            except KeyboardInterrupt:
                continue

    def _end_locked(self) -> None:
        process = self.process
        if process is None or self.state == "handed over":  # one that took over serves on: see wait()
            return
        self.process, self.state = None, None
        process.terminate()
        try:
            process.wait(END_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _watch(self, process: subprocess.Popen) -> None:
        code = process.wait()
        if process is self.process and self.state == "warming":  # it left before taking over
            self.state = f"failed: the compiling process ended (exit code {code}); replies stay on the eager step"


def wait_for_compile(engine: Engine) -> None:
    """In the successor: block until the loaded engine's decode step is compiled; EngineError when it failed."""
    decoder = getattr(engine, "decoder")
    decoder.warm_up(wait=True)
    state = engine.info().extra.get("compile")
    if state != "ready":
        raise EngineError(f"the decode step did not compile ({one_line(str(state), 300)}); replies stay eager")


def watch_parent(parent: int, handed_over: threading.Event) -> None:
    """In the successor: leave at once when the serving process is gone before the hand-over (nothing would end us
    otherwise, and a socket nobody accepts on would hang the next client)."""

    def watch() -> None:
        while not handed_over.is_set():
            if os.getppid() != parent:
                print("the serving process ended before the compiled one was ready; leaving", file=sys.stderr)
                os._exit(0)  # mid-compile: a normal exit would wait for (or abort in) the compile thread
            time.sleep(PARENT_POLL_S)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def take_over(parent: int, handed_over: threading.Event) -> bool:
    """In the successor, compiled and ready: tell the serving process to stop accepting. False when it is gone."""
    if os.getppid() != parent:
        return False
    handed_over.set()
    os.kill(parent, HANDOVER_SIGNAL)
    return True
