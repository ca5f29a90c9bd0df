"""``ProcessEngine``: an ``HFEngine`` running in a child process, behind the same ``contract.Engine`` contract.

Why a process: decoding is one forward pass per token, hundreds of small torch ops dispatched from Python, so on
the UI's own process it shares the GIL with Textual's rendering and decodes a fraction as fast as alone (`python -m
bench decode_process` compares the two). A child process has its own GIL and, on a 2-core machine, its own core. The parent never imports
torch or transformers, so the window also draws its first frame sooner.

The child is started with ``spawn`` (forking a process that has threads can deadlock it). One duplex pipe carries
requests ``(kind, id, payload)`` down and replies ``(id, kind, payload)`` up. In the child the main thread listens
(``model_process``) and hands each request to a thread of its own, so a Stop reaches a reply while it decodes; in the parent a reader
thread routes each reply to the request waiting for it. Each delta is sent as soon as it is made; text that piles up
while the parent is busy (rendering) reaches the caller as one delta. A child that ends (killed, out of memory,
crashed) fails what was waiting on it with one line, and the next call starts a fresh one.

On CPU the decode step is compiled (faster decoding: see the README's decode table) in a second model process, which takes over between two
replies once its compile is done (``_CompilingProcess``); until then the first one replies with the eager step.
"""

from __future__ import annotations

import builtins
import dataclasses
import itertools
import multiprocessing
import os
import queue
import signal
import sys
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from sessions import one_line
from trainer.model_names import engine_name

from tui_chat.inference.contract import Chunk, EngineError, EngineInfo, GenerationParams, ProgressCallback, TextDelta
from tui_chat.inference.model_process import serve_model

STOP_POLL_S = 0.05  # how often a streaming caller checks its stop event while no text arrives (Stop latency)
EXIT_WAIT_S = 5.0  # how long closing waits for the child to leave before killing it
OUTPUT_LINES = 20  # lines of the child's stdout/stderr kept to explain an unexpected end


class ProcessEngine:
    """``HFEngine(spec, models_dir, **options)`` in a child process; see ``generation.Engine``.

    ``options`` are HFEngine's (device, dtype, trust_remote_code, threads, compile, quantize). ``close()`` ends the
    child; so does dropping the engine, and the parent's exit. After a load, a child that ended is replaced (and
    loaded again) by the next call.
    """

    def __init__(self, spec: str, models_dir: Path, **options: Any) -> None:
        self.spec = spec
        self.name = engine_name(spec)
        self.models_dir = Path(models_dir)
        self.options = options
        self._compiles = options.get("compile") is not False  # on unless turned off
        # The serving process compiles only where its own decoding does not pay for it (CUDA, by default); on CPU a
        # second process compiles and takes over when it is done: see _CompilingProcess.
        self._serving_options = {**options, "compile": None if self._compiles else False}
        self._process: _ModelProcess | None = None
        self._closer: weakref.finalize | None = None  # ends the current child when the engine is dropped
        self._compiling: _CompilingProcess | None = None
        self._compiling_closer: weakref.finalize | None = None
        self._streams = 0  # replies streaming now: the compiled process takes over only between replies
        self._loaded = False  # load() succeeded since the last close(): an ended child is restarted on use
        self._lock = threading.Lock()  # starting, loading and replacing the child

    @property
    def ready(self) -> bool:
        process = self._process
        return process is not None and process.loaded and not process.ended

    @property
    def pid(self) -> int | None:
        """The model process's id while it runs (for diagnostics and tests), else None."""
        process = self._process
        return process.pid if process is not None and not process.ended else None

    def load(self, progress: ProgressCallback | None = None) -> EngineInfo:
        """Start the model process and load the model there, forwarding its progress; idempotent."""
        with self._lock:
            process = self._running()
            info = process.load(progress) if not process.loaded else process.call("info")
            self._loaded = True
            if info.device == "cpu" and self._compiles and self._compiling is None:
                self._compiling = _CompilingProcess(self.spec, self.models_dir, self.options)
                self._compiling_closer = weakref.finalize(self, self._compiling.close)
        return self._with_compile_state(info)

    def info(self) -> EngineInfo:
        """Asked of the child each time: its compile state changes while a background compile runs."""
        return self._with_compile_state(self._usable().call("info"))

    def _with_compile_state(self, info: EngineInfo) -> EngineInfo:
        """``info`` saying how the second process's compile goes, while there is one."""
        compiling = self._compiling
        if compiling is None:
            return info
        return dataclasses.replace(info, extra={**info.extra, "compile": compiling.state})

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return self._usable().call("count_tokens", messages)

    def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, stop: threading.Event | None = None
    ) -> Iterator[Chunk]:
        """Stream the reply decoded in the child; see ``generation.Engine``. Text that arrives while the caller is
        busy comes merged into one delta. Stop, or closing this iterator, stops the child's decoding."""
        with self._lock:
            process = self._usable_locked()
            self._streams += 1
        try:
            request = process.request("stream", (messages, params))
        except BaseException:
            with self._lock:
                self._streams -= 1
            raise
        try:
            while True:
                if stop is not None and stop.is_set():
                    request.stop()
                reply = request.next(STOP_POLL_S)
                if reply is None:
                    continue
                kind, payload = reply
                if kind == "result":
                    yield payload  # the GenerationStats
                    return
                yield TextDelta(payload)
        finally:
            request.abandon()  # no-op after the end; otherwise stops the reply and waits for the child to finish it
            with self._lock:
                self._streams -= 1

    def close(self) -> None:
        """End the model process, and a compiling one (the engine can be loaded again)."""
        with self._lock:
            self._retire()
            if self._compiling_closer is not None:
                self._compiling_closer()
            self._compiling, self._compiling_closer = None, None
            self._loaded = False

    def _running(self) -> _ModelProcess:
        """The current child, started afresh when there is none or it ended. Call with ``_lock`` held."""
        if self._process is not None and self._process.ended:
            self._retire()
        if self._process is None:
            self._process = _ModelProcess(self.spec, self.models_dir, self._serving_options)
            self._closer = weakref.finalize(self, self._process.close)
        return self._process

    def _usable(self) -> _ModelProcess:
        """A loaded child: after a load, one that ended is replaced and loaded again (no progress shown)."""
        with self._lock:
            return self._usable_locked()

    def _usable_locked(self) -> _ModelProcess:
        if not self._loaded:
            raise EngineError(f"model {self.name} is not loaded yet; call load() first")
        compiling = self._compiling
        if self._streams == 0 and compiling is not None and compiling.state == "ready":
            # The compiled process takes over (its prompt cache is empty: the next reply encodes the history once).
            self._retire()
            self._process, self._closer = compiling.process, self._compiling_closer
            self._compiling, self._compiling_closer = None, None
        process = self._running()
        if not process.loaded:
            process.load(None)
        return process

    def _retire(self) -> None:
        if self._closer is not None:
            self._closer()  # closes the process once; later calls do nothing
        self._process, self._closer = None, None


class _ModelProcess:
    """The parent's end of one model process: requests go down the pipe, replies are routed back by a reader thread."""

    def __init__(self, spec: str, models_dir: Path, options: dict[str, Any]) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        output_reader, output_writer = context.Pipe(duplex=False)
        self._process = context.Process(
            target=serve_model,
            args=(child_conn, output_writer, spec, str(models_dir), options),
            name=f"tui-chat model {engine_name(spec)}",
            daemon=True,  # multiprocessing ends it when this process exits normally; EOF on the pipe otherwise
        )
        _ensure_resource_tracker()
        self._process.start()
        child_conn.close()  # the child's ends live in the child only, so its exit is EOF here (and ours is there)
        output_writer.close()
        self.pid = self._process.pid
        self.loaded = False
        self.ended = False  # the pipe reached EOF: the process has gone or is going
        self._closing = False
        self._ids = itertools.count()
        self._waiting: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()  # _waiting, sending, ended
        self.output: deque[str] = deque(maxlen=OUTPUT_LINES)
        self._output_thread = threading.Thread(
            target=self._keep_output, args=(output_reader,), name="model-output", daemon=True
        )
        self._output_thread.start()
        threading.Thread(target=self._route_replies, name="model-replies", daemon=True).start()

    def request(self, kind: str, payload: Any = None) -> _Request:
        """Send one request; its replies arrive on the returned request."""
        replies: queue.Queue = queue.Queue()
        with self._lock:
            if self.ended:
                raise self.ended_error()
            request_id = next(self._ids)
            self._waiting[request_id] = replies
            try:
                self._conn.send((kind, request_id, payload))
            except OSError:  # the child has gone; the reader thread is about to see EOF
                del self._waiting[request_id]
                raise self.ended_error() from None
        return _Request(self, request_id, replies)

    def call(self, kind: str, payload: Any = None) -> Any:
        """A request with one result (info, count_tokens)."""
        request = self.request(kind, payload)
        try:
            while True:
                kind, result = request.next(None)
                if kind == "result":
                    return result
        finally:
            request.forget()

    def load(self, progress: ProgressCallback | None) -> EngineInfo:
        """Load the model in the child, calling ``progress`` on this thread as the child reports it.

        Interrupted here (Ctrl+C while loading), the load goes on in the child; the next load() waits for it.
        """
        request = self.request("load")
        try:
            while True:
                kind, payload = request.next(None)
                if kind == "result":
                    self.loaded = True
                    return payload
                if progress is not None:
                    progress(*payload)
        finally:
            request.forget()

    def send_stop(self, request_id: int) -> None:
        with self._lock:
            if not self.ended:
                try:
                    self._conn.send(("stop", request_id, None))
                except OSError:
                    pass  # the child has gone: nothing left to stop

    def forget(self, request_id: int) -> None:
        with self._lock:
            self._waiting.pop(request_id, None)

    def ended_error(self) -> EngineError:
        """The one line for a child that went away while (or before) being asked something."""
        if self._closing:
            return EngineError("the model process was closed; load the model again")
        self._process.join(EXIT_WAIT_S)
        self._output_thread.join(1.0)  # its last words arrive just after the pipe's EOF
        code = self._process.exitcode
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
        else:
            last = next((line for line in reversed(self.output) if line.strip()), "")
            how = f"exit code {code}" + (f": {last.strip()[:200]}" if last else "")
        error = EngineError(f"the model process ended unexpectedly ({how}); send again to restart it")
        if self.output:
            error.add_note("the model process's last output:\n" + "\n".join(self.output))
        return error

    def close(self) -> None:
        """Ask the child to exit, kill it if it does not, and reap it (no zombie)."""
        self._closing = True
        with self._lock:
            if not self.ended:
                try:
                    self._conn.send(("exit", -1, None))
                except OSError:
                    pass  # already gone
        self._process.join(EXIT_WAIT_S)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def _route_replies(self) -> None:
        """Reader thread: hand each reply to its request; at EOF tell every waiting request the child ended."""
        try:
            while True:
                request_id, kind, payload = self._conn.recv()
                with self._lock:
                    replies = self._waiting.get(request_id)
                if replies is not None:
                    replies.put((kind, payload))
        except (EOFError, OSError):
            pass
        finally:
            with self._lock:
                self.ended = True
                waiting = list(self._waiting.values())
            for replies in waiting:
                replies.put(("ended", None))
            self._conn.close()

    def _keep_output(self, reader: Connection) -> None:
        """Keep the last lines the child writes to stdout/stderr (warnings, a dying traceback), off the terminal."""
        pending = b""
        try:
            while chunk := os.read(reader.fileno(), 65536):
                *lines, pending = (pending + chunk).split(b"\n")
                self.output.extend(line.decode(errors="replace") for line in lines)
        finally:
            if pending:
                self.output.append(pending.decode(errors="replace"))
            reader.close()


class _CompilingProcess:
    """A second model process that loads the model and compiles its decode step, to take over from the serving one.

    Why not compile where replies decode: while torch compiles, it wraps module calls process-wide, and replies in
    that process decoded at about half speed for the tens of seconds a compile takes on CPU. In a process of its own
    the compile costs a core, not the replies.
    """

    def __init__(self, spec: str, models_dir: Path, options: dict[str, Any]) -> None:
        self.process = _ModelProcess(spec, models_dir, {**options, "compile": True})
        self.state = "warming"  # warming | ready | failed: why
        threading.Thread(target=self._compile, name="model-compile", daemon=True).start()

    def _compile(self) -> None:
        try:
            self.process.load(None)
            state = self.process.call("compile").extra["compile"]
        except Exception as exc:  # the model process ended or was closed: the serving process goes on as it is
            state = f"failed: {one_line(str(exc) or type(exc).__name__, 200)}"
        if state != "ready":
            self.process.close()
        self.state = state

    def close(self) -> None:
        self.process.close()


def _ensure_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (every spawn needs it) with a real stderr in place.

    The tracker hands ``sys.stderr.fileno()`` to its own process; inside a Textual app sys.stderr is a capture object
    whose fileno() is -1, and the spawn would fail with "bad value(s) in fds_to_keep".
    """
    try:
        usable = sys.stderr.fileno() >= 0
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both OSError and ValueError
        usable = False
    captured = sys.stderr
    if not usable and sys.__stderr__ is not None:
        sys.stderr = sys.__stderr__
    try:
        resource_tracker.ensure_running()
    finally:
        sys.stderr = captured


class _Request:
    """One request's replies: ("progress" | "delta", ...)* then ("result", value) or an exception."""

    def __init__(self, process: _ModelProcess, request_id: int, replies: queue.Queue) -> None:
        self.process = process
        self.id = request_id
        self.replies = replies
        self.done = False
        self._stop_sent = False
        self._held: tuple[str, Any] | None = None  # a reply read while merging deltas, handed out next

    def next(self, timeout: float | None) -> tuple[str, Any] | None:
        """The next reply (deltas already waiting come merged into one), None after ``timeout`` seconds.

        Raises the child's error for this request, or EngineError when the child ended.
        """
        reply, self._held = self._held, None
        if reply is None:
            try:
                reply = self.replies.get(timeout=timeout)
            except queue.Empty:
                return None
        if reply[0] == "delta":
            text = reply[1]
            while True:
                try:
                    following = self.replies.get_nowait()
                except queue.Empty:
                    break
                if following[0] != "delta":
                    self._held = following
                    break
                text += following[1]
            return "delta", text
        kind, payload = reply
        if kind in ("result", "error", "ended"):
            self.done = True
            self.forget()
        if kind == "error":
            raise _rebuilt(*payload)
        if kind == "ended":
            raise self.process.ended_error()
        return reply

    def forget(self) -> None:
        """Stop routing this request's replies (it ended, or nobody waits for them any more)."""
        self.process.forget(self.id)

    def stop(self) -> None:
        if not self._stop_sent:
            self._stop_sent = True
            self.process.send_stop(self.id)

    def abandon(self) -> None:
        """The caller stopped listening: stop the reply and wait for its end, so the next one finds the child free
        (and its prompt cache matching what was decoded)."""
        if self.done:
            return
        self.stop()
        while not self.done:
            try:
                self.next(None)
            except Exception:  # nobody is waiting for this reply's outcome any more
                pass


def _rebuilt(type_name: str, message: str, child_traceback: str) -> Exception:
    """The child's exception as the parent raises it: EngineError and built-in exceptions as themselves (same
    message), anything else as RuntimeError naming its type; the child's traceback goes in a note."""
    kind = EngineError if type_name == "EngineError" else getattr(builtins, type_name, None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        error = kind(message)
    else:
        error = RuntimeError(f"{type_name}: {message}")
    error.add_note("in the model process:\n" + child_traceback)
    return error
