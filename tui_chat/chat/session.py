"""One chat as a line-oriented front end sees it: the conversation, the model, the settings, and sending.

`tui-chat ask` and `tui-chat repl` share it; they only print. The model loads lazily (on the first message), and
a reply streams in a worker thread while the calling (main) thread prints its chunks, so Ctrl+C can stop the reply
through its stop event instead of tearing the generation down mid-write.
"""

from __future__ import annotations

import queue
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from sessions import Conversation, Message, Store

from tui_chat.inference.contract import Chunk, Engine, EngineFactory, EngineInfo, GenerationParams
from tui_chat.chat.replies import add_user_message, generate_reply

DRAIN_POLL_S = 0.1  # how often the printing thread wakes while a reply is slow, so Ctrl+C is noticed promptly

ChunkHandler = Callable[[Chunk], None]
EngineLoader = Callable[[Engine], EngineInfo]  # loads an engine while showing progress however the front end can


class ChatError(Exception):
    """A chat action that makes no sense right now (e.g. /rate before any reply); one line saying what to do."""


@dataclass
class _Finished:
    message: Message | None
    error: BaseException | None


def _load_quietly(engine: Engine) -> EngineInfo:
    return engine.load()


class ChatSession:
    """The state of one chat: which conversation, which model (loaded lazily), which settings and system prompt.

    A new conversation is created on the first message, not before, so starting and leaving makes no empty rows.
    """

    def __init__(
        self,
        store: Store,
        engine_factory: EngineFactory,
        *,
        model: str = "default",
        params: GenerationParams | None = None,
        system_prompt: str | None = None,
        load_engine: EngineLoader = _load_quietly,
    ) -> None:
        self.store = store
        self.engine_factory = engine_factory
        self.model = model
        self.params = params or GenerationParams()
        self.system_prompt = system_prompt
        self.load_engine = load_engine
        self.conversation_id: int | None = None
        self.engine: Engine | None = None
        self._engine_spec: str | None = None  # the spec ``engine`` was opened with (its name may differ)
        self.stop = threading.Event()  # set to stop the reply in progress (Ctrl+C does)

    # ---- conversation ----------------------------------------------------------------------------------------

    def conversation(self) -> Conversation:
        """The current conversation; ChatError when there is none yet."""
        if self.conversation_id is None:
            raise ChatError("no conversation yet: send a message first, or /open ID")
        return self.store.get_conversation(self.conversation_id)

    def new(self) -> None:
        """Start afresh; the conversation itself is created by the next message (same model and settings)."""
        self.conversation_id = None

    def open(self, conversation_id: int) -> Conversation:
        """Continue a stored conversation with its own model, system prompt and settings."""
        conversation = self.store.get_conversation(conversation_id)
        self.conversation_id = conversation.id
        if conversation.model:
            self.model = conversation.model
        self.system_prompt = conversation.system_prompt
        self.params = GenerationParams.from_dict(conversation.params)
        return conversation

    def last_reply(self) -> Message:
        """The newest assistant reply on the active branch."""
        for message in reversed(self.store.active_branch(self.conversation().id)):
            if message.role == "assistant":
                return message
        raise ChatError("no reply in this conversation yet")

    def last_user_message(self) -> Message:
        """The newest user message on the active branch."""
        for message in reversed(self.store.active_branch(self.conversation().id)):
            if message.role == "user":
                return message
        raise ChatError("no message of yours in this conversation yet")

    def set_param(self, name: str, raw: str) -> GenerationParams:
        """Change one generation setting (ValueError on bad input) and keep it with the conversation."""
        self.params = self.params.with_value(name, raw)
        if self.conversation_id is not None:
            self.store.update_conversation(self.conversation_id, params=self.params.to_dict())
        return self.params

    def configure(
        self, *, model: str | None = None, system_prompt: str | None = None, params: dict[str, Any] | None = None
    ) -> None:
        """Apply command-line overrides (None leaves a value as it is; a ``-`` system prompt clears it).

        They are kept with the open conversation, so continuing it later uses them. ValueError on a bad setting.
        """
        if params:
            self.params = GenerationParams.from_dict({**self.params.to_dict(), **params}).validated()
            if self.conversation_id is not None:
                self.store.update_conversation(self.conversation_id, params=self.params.to_dict())
        if system_prompt is not None:
            self.set_system_prompt(None if system_prompt == "-" else system_prompt)
        if model:
            self.model = model
            if self.conversation_id is not None:
                self.store.update_conversation(self.conversation_id, model=model)

    def set_system_prompt(self, text: str | None) -> None:
        self.system_prompt = text or None
        if self.conversation_id is not None:
            self.store.update_conversation(self.conversation_id, system_prompt=self.system_prompt)

    # ---- model -----------------------------------------------------------------------------------------------

    def ensure_engine(self) -> Engine:
        """The engine for the current model, loaded (slow the first time: the front end shows progress)."""
        if self.engine is None or self._engine_spec != self.model:
            self.engine = self.engine_factory(self.model)
            self._engine_spec = self.model
        if not self.engine.ready:
            self.load_engine(self.engine)
        return self.engine

    def engine_info(self) -> EngineInfo | None:
        """What the current model runs on, once it is loaded."""
        if self.engine is not None and self.engine.ready and self._engine_spec == self.model:
            return self.engine.info()
        return None

    def switch_model(self, spec: str) -> EngineInfo:
        """Load ``spec`` now; the current engine stays in use if that fails."""
        engine = self.engine_factory(spec)
        info = self.load_engine(engine)
        self.engine, self._engine_spec, self.model = engine, spec, spec
        if self.conversation_id is not None:
            self.store.update_conversation(self.conversation_id, model=spec)
        return info

    # ---- replies ---------------------------------------------------------------------------------------------

    def send(self, text: str, on_chunk: ChunkHandler) -> Message:
        """Add the user's message (creating the conversation if needed) and stream the reply to it."""
        engine = self.ensure_engine()
        if self.conversation_id is None:
            conversation = self.store.create_conversation(
                model=self.model, system_prompt=self.system_prompt, params=self.params.to_dict()
            )
            self.conversation_id = conversation.id
        add_user_message(self.store, self.conversation_id, text)
        return self._reply(engine, None, on_chunk)

    def retry(self, on_chunk: ChunkHandler) -> Message:
        """Another version of the last reply: a sibling under the same user message."""
        branch = self.store.active_branch(self.conversation().id)
        if branch and branch[-1].role == "user":
            parent_id = branch[-1].id  # its reply never started (e.g. the model failed to load): answer it now
        else:
            parent_id = self.last_reply().parent_id
        if parent_id is None:
            raise ChatError("nothing to retry: the last reply answers no message")
        return self._reply(self.ensure_engine(), parent_id, on_chunk)

    def edit(self, text: str, on_chunk: ChunkHandler) -> Message:
        """Rewrite the last user message as a new branch (a sibling of it) and answer the new version."""
        original = self.last_user_message()
        engine = self.ensure_engine()
        add_user_message(self.store, original.conversation_id, text, edit_of=original)
        return self._reply(engine, None, on_chunk)

    def _reply(self, engine: Engine, parent_id: int | None, on_chunk: ChunkHandler) -> Message:
        """Generate in a worker thread; hand its chunks to ``on_chunk`` in this thread; Ctrl+C sets ``stop``."""
        assert self.conversation_id is not None
        self.stop.clear()
        chunks: queue.Queue[Chunk | _Finished] = queue.Queue()

        def work() -> None:
            try:
                message = generate_reply(
                    self.store,
                    engine,
                    self.conversation_id,
                    self.params,
                    parent_id=parent_id,
                    stop=self.stop,
                    on_chunk=chunks.put,
                )
                chunks.put(_Finished(message, None))
            except BaseException as exc:  # handed to the caller's thread, which re-raises it
                chunks.put(_Finished(None, exc))

        worker = threading.Thread(target=work, name="reply", daemon=True)
        with _ctrl_c_sets(self.stop):
            worker.start()
            try:
                finished = _drain(chunks, on_chunk)
            except BaseException:
                self.stop.set()  # printing failed (e.g. a closed pipe): end the reply, saved as stopped
                raise
            finally:
                worker.join()
        if finished.error is not None:
            raise finished.error
        assert finished.message is not None
        return finished.message


def _drain(chunks: queue.Queue, on_chunk: ChunkHandler) -> _Finished:
    """Hand the worker's chunks to ``on_chunk`` until it says it has finished."""
    while True:
        try:
            item = chunks.get(timeout=DRAIN_POLL_S)
        except queue.Empty:
            continue
        if isinstance(item, _Finished):
            return item
        on_chunk(item)


@contextmanager
def _ctrl_c_sets(stop: threading.Event) -> Iterator[None]:
    """While a reply streams, Ctrl+C (SIGINT) sets ``stop`` instead of raising KeyboardInterrupt.

    Only the main thread can own signal handlers; elsewhere (a test's worker thread) ``stop`` is set directly.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    try:
        yield
    finally:
        # None means a handler installed outside Python; the default is the closest we can restore.
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
