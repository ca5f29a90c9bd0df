"""One loaded model, shared by every client: requests run one at a time, in the order they came.

Why one at a time: the engine holds one KV cache (a conversation's history, kept between its turns), and a model
decodes one reply at a time; on CPU two interleaved replies would each run at half speed anyway. A single worker
thread takes jobs from a FIFO queue, so a request starts only when the one before it has ended, and a client that
left while its request waited costs nothing.

Each job carries its stop event: the app sets it when its client disconnects (or when it stops listening for any
other reason), and the engine ends the reply within one token.
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from tui_chat.inference.contract import (
    Chunk,
    Engine,
    EngineError,
    EngineFactory,
    EngineInfo,
    GenerationParams,
    GenerationStats,
)
from sessions import one_line
from trainer.model_names import engine_name
from tui_chat.serve.handover import Successor, report_package_build

_END = object()  # a job's last item


@dataclass
class _Job:
    spec: str
    messages: list[dict[str, str]] | None  # None: only load the model (POST /load)
    params: GenerationParams | None
    stop: threading.Event
    deliver: Callable[[object], None]  # called on the worker thread with each Chunk, an exception, then _END


class ModelScheduler:
    """Runs requests on one model at a time. A request for another model (one the catalog allows) replaces the
    loaded one, between two requests: one model in memory, never two."""

    def __init__(self, engine_factory: EngineFactory, spec: str,
                 load_engine: Callable[[Engine], EngineInfo] | None = None,
                 successor: Successor | None = None) -> None:
        self.engine_factory = engine_factory
        self.spec = spec
        self.successor = successor  # compiles each model loaded here in a second process (handover.py), if any
        # Loads an engine, showing progress where the server's log is; by default the progress is kept for /health.
        self.load_engine = load_engine or (lambda engine: engine.load(self._note_progress))
        self.loading: tuple[str, float | None] | None = None  # what the load in progress does, and how far it is
        self.load_error: tuple[str, str] | None = None  # (model, one line) of the last load that failed
        self.last_active = time.monotonic()  # when a request last ended (the idle time counts from there)
        self._engine: Engine | None = None
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self.pending = 0  # requests queued or running
        self.closing = False  # the server is shutting down: replies are cut short, new ones refused
        self._stops: set[threading.Event] = set()  # the stop events of the requests queued or running
        self._pending_lock = threading.Lock()  # counted on the event loop's thread and on the worker's

    @property
    def model(self) -> str:
        """The name of the model loaded (or loading) now."""
        return engine_name(self.spec)

    @property
    def ready(self) -> bool:
        return self._engine is not None and self._engine.ready

    def load(self) -> EngineInfo:
        """Load the first model, on the caller's thread (before serving); then start the worker."""
        info = self._engine_for(self.spec).info()
        self.start()
        return info

    def info(self) -> EngineInfo | None:
        """The loaded model's, saying how its successor's compile goes while there is one."""
        engine = self._engine
        if engine is None or not engine.ready:
            return None
        info = engine.info()
        return self.successor.describe(info) if self.successor is not None else info

    def adopt(self, spec: str, engine: Engine) -> None:
        """Serve ``engine``, loaded already (a successor's compiled one), as ``spec``; before start()."""
        self.spec, self._engine = spec, engine

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """The loaded model's count for ``messages``; EngineError while none is loaded."""
        engine = self._engine
        if engine is None or not engine.ready:
            raise EngineError("no model is loaded yet; try again once GET /health says loaded")
        return engine.count_tokens(messages)

    def request_load(self, spec: str) -> None:
        """Load ``spec`` in the worker, after the requests queued before; /health shows how it goes."""
        self.load_error = None
        if engine_name(spec) != self.model or not self.ready:
            self.loading = (f"loading {engine_name(spec)}", None)
        self._count(+1)
        self._jobs.put(_Job(spec, None, None, threading.Event(), lambda item: None))

    def _note_progress(self, what: str, fraction: float | None) -> None:
        self.loading = (what, fraction)

    def start(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="serve-scheduler", daemon=True)
            self._worker.start()

    def stop_all(self) -> None:
        """The server is shutting down: the reply in progress ends within a token (its client gets an error saying
        why) and the queued ones never start, so the connections close at once instead of when the replies end."""
        self.closing = True
        for stop in list(self._stops):
            stop.set()

    def close(self) -> None:
        """End the worker after the job it runs; the engine goes with this scheduler."""
        self._jobs.put(None)

    async def stream(
        self, spec: str, messages: list[dict[str, str]], params: GenerationParams, stop: threading.Event
    ) -> AsyncIterator[Chunk]:
        """The reply's chunks, as the engine makes them once this request's turn comes. Leaving early (the client
        went away, sending failed) sets ``stop``: a queued request is skipped, a running one ends within a token."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[object] = asyncio.Queue()

        def deliver(item: object) -> None:
            try:
                loop.call_soon_threadsafe(items.put_nowait, item)
            except RuntimeError:  # the event loop is closed (the server is shutting down): nobody reads this reply
                stop.set()

        self._stops.add(stop)
        if self.closing:
            stop.set()
        self._count(+1)
        self._jobs.put(_Job(spec, messages, params, stop, deliver))
        try:
            while (item := await items.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                if self.closing and isinstance(item, GenerationStats) and item.finish_reason == "stopped":
                    raise EngineError("the server is shutting down; this reply was cut short")
                yield item  # type: ignore[misc]  # a Chunk
        finally:
            stop.set()
            self._stops.discard(stop)

    def _run(self) -> None:
        """The worker: one job after another until close()."""
        while (job := self._jobs.get()) is not None:
            try:
                if job.messages is None:
                    self._load_for_client(job.spec)
                elif not job.stop.is_set():  # its client left while it waited
                    engine = self._engine_for(job.spec)
                    for chunk in engine.stream(job.messages, job.params, job.stop):
                        job.deliver(chunk)
            except Exception as exc:  # raised again where the reply is awaited (the app turns it into one line)
                job.deliver(exc)
            finally:
                self._count(-1)
                self.last_active = time.monotonic()
                job.deliver(_END)

    def _load_for_client(self, spec: str) -> None:
        """A POST /load: its outcome goes to /health (the client polls it), not to a waiting reply."""
        try:
            self._engine_for(spec)
        except EngineError as exc:
            self.load_error = (engine_name(spec), one_line(str(exc), 500))
        except Exception as exc:  # a bug: the client gets its type and message, the server's log the traceback
            traceback.print_exception(exc, file=sys.stderr)
            self.load_error = (engine_name(spec), one_line(f"{type(exc).__name__}: {exc}", 500))

    def _count(self, change: int) -> None:
        with self._pending_lock:
            self.pending += change

    def _engine_for(self, spec: str) -> Engine:
        """The loaded engine for ``spec``, loading it first (dropping the current one) when it is another model."""
        if self._engine is not None and engine_name(spec) == engine_name(self.spec):
            return self._engine
        self._engine = None  # the old model goes with its engine, before the new one loads
        if self.successor is not None:
            self.successor.end()  # it compiles the old model: it must not take over with that one
        self.spec = spec
        self.loading = (f"loading {engine_name(spec)}", None)
        try:
            engine = self.engine_factory(spec)
            info = self.load_engine(engine)
        finally:
            self.loading = None
        self._engine = engine
        if self.successor is not None:
            self.successor.after_load(spec, info)
            if info.device == "cpu" and info.extra.get("compile") == "warming":  # its package is being built
                report_package_build(engine)
        return engine
