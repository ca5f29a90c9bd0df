"""The chat core: ``ChatSession``, one open conversation and every rule about it.

The chat window, the REPL and `ask` all drive it. The line-oriented front ends also send through it: the model
loads lazily (on the first message), and a reply streams in a worker thread while the calling (main) thread prints
its chunks, so Ctrl+C can stop the reply through its stop event instead of tearing the generation down mid-write.
The chat window streams in its own worker (Textual's), with the same store calls.
"""

from __future__ import annotations

import queue
import random
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from sessions import Conversation, Message, Store
from trainer.model_names import engine_name

from tui_chat.chat.commands import CommandError, setting_error
from tui_chat.chat.compare import Comparison, plan_sides
from tui_chat.chat.replies import add_user_message, generate_reply
from tui_chat.inference.contract import Chunk, Engine, EngineFactory, EngineInfo, GenerationParams

DRAIN_POLL_S = 0.1  # how often the printing thread wakes while a reply is slow, so Ctrl+C is noticed promptly

ChunkHandler = Callable[[Chunk], None]
EngineLoader = Callable[[Engine], EngineInfo]  # loads an engine while showing progress however the front end can


class ChatError(CommandError):
    """A chat action that makes no sense right now (e.g. /rate before any reply); one line saying what to do.
    A CommandError, so a front end shows it as it shows a mistyped command."""


@dataclass
class _Finished:
    message: Message | None
    error: BaseException | None


def _load_quietly(engine: Engine) -> EngineInfo:
    return engine.load()


class ChatSession:
    """One open conversation and every rule about it, for every front end.

    It knows which conversation is open (None until the first message: starting and leaving makes no empty rows),
    which model, settings and system prompt it uses, which reply a command means, and how sending, retrying,
    editing, rating, correcting and the rest change the store. The chat window and the REPL only collect input and
    show what it returns; `ask` uses it too. Errors the user can fix are ChatError, one line.
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
        self.load_engine = load_engine
        self.engine: Engine | None = None
        self._engine_spec: str | None = None  # the spec ``engine`` was opened with (its name may differ)
        # The other model of the last /compare, kept open for the next one (comparing a run with its base is done
        # many times in a row, and opening a model costs seconds); (spec, engine).
        self._compared: tuple[str, Engine] | None = None
        self.stop = threading.Event()  # set to stop the reply in progress (Ctrl+C does)
        self.conversation: Conversation | None = None  # the open one, as last read or written
        # A new conversation starts with these: what the front end was started with (`--system`, `--temperature`).
        self._start_settings = (system_prompt, params or GenerationParams())
        self.system_prompt, self.params = self._start_settings

    # ---- conversation ----------------------------------------------------------------------------------------

    @property
    def conversation_id(self) -> int | None:
        return self.conversation.id if self.conversation is not None else None

    def require_conversation(self) -> Conversation:
        """The open conversation; ChatError when there is none yet."""
        if self.conversation is None:
            raise ChatError("no conversation yet: send a message first, or /open ID")
        return self.conversation

    def refresh(self) -> Conversation | None:
        """Read the open conversation again (a reply retitled it, or moved it to the top)."""
        if self.conversation is not None:
            self.conversation = self.store.get_conversation(self.conversation.id)
        return self.conversation

    def ensure_conversation(self) -> Conversation:
        """The open conversation, created now (with this session's model and settings) if there is none."""
        if self.conversation is None:
            self.conversation = self.store.create_conversation(
                model=engine_name(self.model), system_prompt=self.system_prompt, params=self.params.to_dict()
            )
        return self.conversation

    def new(self) -> None:
        """Start afresh with the settings the session started with; the conversation is made by the next message."""
        self.conversation = None
        self.system_prompt, self.params = self._start_settings

    def open(self, conversation_id: int, *, adopt_model: bool = True) -> Conversation:
        """Continue a stored conversation with its system prompt and settings, and its model unless the front end
        keeps one model for every conversation (the chat window: switching is an explicit step there)."""
        conversation = self.store.get_conversation(conversation_id)
        self.conversation = conversation
        if adopt_model and conversation.model:
            self.model = conversation.model
        self.system_prompt = conversation.system_prompt
        self.params = GenerationParams.from_dict(conversation.params)
        return conversation

    def branch(self) -> list[Message]:
        """The active branch of the open conversation, root first (empty for a new one)."""
        return self.store.active_branch(self.conversation.id) if self.conversation is not None else []

    def rename(self, title: str) -> Conversation:
        title = " ".join(title.split())
        if not title:
            raise ChatError("the title is empty")
        self.conversation = self.store.rename_conversation(self.require_conversation().id, title)
        return self.conversation

    def delete(self) -> Conversation:
        """Delete the open conversation for good; the session is then on a new one. Returns what was deleted."""
        conversation = self.require_conversation()
        self.store.delete_conversation(conversation.id)
        self.new()
        return conversation

    # ---- which message a command means -----------------------------------------------------------------------

    def target_reply(self, doing: str, *, selected: Message | None = None, streaming: bool = False) -> Message:
        """The reply an action means: the selected reply, else the newest on the branch. ``doing`` is the verb for
        the error ("rate"). While a reply streams the newest has no finished row to act on: only a selected one."""
        if selected is not None and selected.role == "assistant":
            return selected
        self.require_conversation()
        if streaming:
            raise ChatError(f"wait for the reply to finish (or stop it), then {doing} it")
        for message in reversed(self.branch()):
            if message.role == "assistant":
                return message
        raise ChatError(f"no reply to {doing} yet")

    def message_to_edit(self, *, selected: Message | None = None) -> Message:
        """The user message an edit means: the selected one, else the newest of yours on the branch."""
        if selected is not None and selected.role == "user":
            return selected
        self.require_conversation()
        for message in reversed(self.branch()):
            if message.role == "user":
                return message
        raise ChatError("no message of yours to edit yet")

    def retry_parent(self, *, selected: Message | None = None) -> int:
        """The message a retry answers again: the tip when it is yours and unanswered (its reply never started,
        e.g. the model failed to load), else the parent of the reply meant (selected, or the newest)."""
        self.require_conversation()
        branch = self.branch()
        if not branch:
            raise ChatError("nothing to retry yet: send a message first")
        if branch[-1].role == "user" and (selected is None or selected.role == "user"):
            return branch[-1].id
        reply = self.target_reply("retry", selected=selected)
        if reply.parent_id is None:
            raise ChatError("nothing to retry: the reply answers no message")
        return reply.parent_id

    # ---- what the user teaches -------------------------------------------------------------------------------

    def rate(self, value: int, *, reply: Message, toggle: bool = False) -> Message:
        """Rate ``reply`` 1, -1 or 0 (cleared); ``toggle``: the same rating again clears it (the window's keys)."""
        if toggle and reply.rating == value:
            value = 0
        return self.store.set_rating(reply.id, value)

    def correct(self, text: str | None, *, reply: Message) -> Message:
        """Keep ``text`` as the ideal answer for ``reply`` (trained on instead of it); None or blank clears it."""
        return self.store.set_correction(reply.id, text if text and text.strip() else None)

    def set_excluded(self, excluded: bool | None) -> bool:
        """Leave the conversation out of training (True), put it back (False), or toggle (None). Returns the value."""
        conversation = self.ensure_conversation()
        value = not conversation.exclude_from_training if excluded is None else excluded
        self.conversation = self.store.update_conversation(conversation.id, exclude_from_training=value)
        return value

    # ---- settings --------------------------------------------------------------------------------------------

    def set_system_prompt(self, text: str | None) -> None:
        """This conversation's system prompt (None or blank: the model's default), kept with it."""
        self.system_prompt = text if text and text.strip() else None
        if self.conversation is not None:
            self.conversation = self.store.update_conversation(self.conversation.id, system_prompt=self.system_prompt)

    def set_params(self, params: GenerationParams) -> list[str]:
        """Use ``params`` (validated) and keep them with the conversation; returns what changed, as "name value"."""
        params = params.validated()
        before = self.params.to_dict()
        self.params = params
        if self.conversation is not None:
            self.conversation = self.store.update_conversation(self.conversation.id, params=params.to_dict())
        return [f"{name} {value}" for name, value in params.to_dict().items() if before[name] != value]

    def set_param(self, name: str, raw: str) -> GenerationParams:
        """Change one generation setting from text (ChatError on bad input)."""
        try:
            self.set_params(self.params.with_value(name, raw))
        except ValueError as exc:
            raise setting_error(name, exc) from None
        return self.params

    def configure(
        self, *, model: str | None = None, system_prompt: str | None = None, params: dict[str, Any] | None = None
    ) -> None:
        """Apply command-line overrides (None leaves a value as it is; a ``-`` system prompt clears it).

        They are kept with the open conversation, so continuing it later uses them. ValueError on a bad setting.
        """
        if params:
            self.set_params(GenerationParams.from_dict({**self.params.to_dict(), **params}))
        if system_prompt is not None:
            self.set_system_prompt(None if system_prompt == "-" else system_prompt)
        if model:
            self.use_model(model)
        self._start_settings = (self.system_prompt, self.params)

    # ---- model -----------------------------------------------------------------------------------------------

    def use_model(self, spec: str, engine: Engine | None = None, *, switched: bool = True) -> None:
        """From now on replies come from ``spec`` (``engine``: already opened for it). A switch is recorded on the
        open conversation; the first model a front end loads is not (the conversation keeps the one it had)."""
        self.model = spec
        if self._compared is not None and self._compared[0] == spec:
            self._compared = None  # now the chat's own model: no second copy kept for comparisons
        if engine is not None:
            self.engine, self._engine_spec = engine, spec
        if switched and self.conversation is not None:
            self.conversation = self.store.update_conversation(self.conversation.id, model=engine_name(spec))

    def ensure_engine(self, *, quiet: bool = False) -> Engine:
        """The engine for the current model, loaded (slow the first time: the front end shows progress, unless
        ``quiet``)."""
        if self.engine is None or self._engine_spec != self.model:
            self.engine = self.engine_factory(self.model)
            self._engine_spec = self.model
        if not self.engine.ready:
            self.engine.load() if quiet else self.load_engine(self.engine)
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
        self.use_model(spec, engine)
        return info

    # ---- messages and replies --------------------------------------------------------------------------------

    def add_user_message(self, text: str, *, edit_of: Message | None = None) -> Message:
        """Add the user's turn (creating the conversation if needed); ``edit_of``: as a new version of that one."""
        conversation = self.ensure_conversation()
        message = add_user_message(self.store, conversation.id, text, edit_of=edit_of)
        self.refresh()  # the first message titles the chat
        return message

    def send(self, text: str, on_chunk: ChunkHandler) -> Message:
        """Add the user's message and stream the reply to it."""
        engine = self.ensure_engine()
        self.add_user_message(text)
        return self._reply(engine, None, on_chunk)

    def retry(self, on_chunk: ChunkHandler) -> Message:
        """Another version of the last reply: a sibling under the same user message."""
        parent_id = self.retry_parent()
        return self._reply(self.ensure_engine(), parent_id, on_chunk)

    def edit(self, text: str, on_chunk: ChunkHandler) -> Message:
        """Rewrite the last user message as a new branch (a sibling of it) and answer the new version."""
        original = self.message_to_edit()
        engine = self.ensure_engine()
        self.add_user_message(text, edit_of=original)
        return self._reply(engine, None, on_chunk)

    # ---- comparing two answers ------------------------------------------------------------------------------

    def compare(
        self, spec: str | None = None, *, blind: bool = False, selected: Message | None = None, seed: int | None = None
    ) -> Comparison:
        """Start comparing answers to the last prompt (or the one ``selected`` answers): this model's against
        ``spec``'s, or two samples of this model. Nothing is generated yet: see ``Comparison``."""
        prompt_id = self.retry_parent(selected=selected)
        conversation = self.store.get_conversation(self.require_conversation().id)  # its tip as it is now
        seed = random.randrange(2**31) if seed is None else seed
        sides = plan_sides(self.model, spec, self.params, seed)
        return Comparison(
            self.store, self.store.get_message(prompt_id), conversation.tip_id, sides,
            seed=seed, blind=blind, engine_for=self._compare_engine,
        )

    def _compare_engine(self, spec: str, quiet: bool) -> Engine:
        """The engine for one side of a comparison, loaded: the current one, or the other model's, opened by the
        same factory as a model switch. ``quiet``: without the front end's progress, which names the model (blind)."""
        if engine_name(spec) == engine_name(self.model):
            return self.ensure_engine(quiet=quiet)
        if self._compared is None or self._compared[0] != spec:
            self._compared = None  # the previous one is closed as it is dropped
            self._compared = (spec, self.engine_factory(spec))
        engine = self._compared[1]
        if not engine.ready:
            engine.load() if quiet else self.load_engine(engine)
        return engine

    def stream_answer(self, comparison: Comparison, index: int, on_chunk: ChunkHandler) -> Message:
        """A comparison's answer ``index``, streamed as ``send`` streams a reply (Ctrl+C stops it)."""
        return self._streamed(lambda stop, put: comparison.answer(index, put, stop=stop), on_chunk)

    def _reply(self, engine: Engine, parent_id: int | None, on_chunk: ChunkHandler) -> Message:
        conversation_id = self.require_conversation().id
        return self._streamed(
            lambda stop, put: generate_reply(
                self.store, engine, conversation_id, self.params, parent_id=parent_id, stop=stop, on_chunk=put
            ),
            on_chunk,
        )

    def _streamed(
        self, generate: Callable[[threading.Event, ChunkHandler], Message], on_chunk: ChunkHandler
    ) -> Message:
        """Run ``generate(stop, put)`` in a worker thread; hand its chunks to ``on_chunk`` in this thread; Ctrl+C
        sets ``stop``."""
        self.stop.clear()
        chunks: queue.Queue[Chunk | _Finished] = queue.Queue()

        def work() -> None:
            try:
                message = generate(self.stop, chunks.put)
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
                self.refresh()
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
