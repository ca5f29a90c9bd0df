"""The chat: conversations on the left, the open one in the middle, the message box and the status line below.

The chat core (``ChatSession``, ``self.session``) holds the open conversation and decides every rule; the screen
shows it: the branch as drawn, the reply streaming. The model lives in ``chat_model``, the actions in
``chat_actions`` (keys, the palette and slash commands all end there; ``chat_commands`` maps a typed slash command
to them), `/train` in ``chat_training`` and `/compare` in ``chat_compare``. Slow work runs in thread workers that post messages back (``worker_messages``): loading a model,
generating a reply, counting the context, exporting, planning a run.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial

from textual import work
from textual.app import ComposeResult, SystemCommand
from textual.containers import Horizontal, Vertical
from textual.notifications import SeverityLevel
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Footer, Header, TextArea

import sessions
from sessions import Conversation, Store, StoreError
from trainer.home import DataHome
from trainer.model_names import engine_name

from tui_chat.chat import commands
from tui_chat.tui.keys import CHAT_ACTIONS, chat_bindings
from tui_chat.tui.worker_messages import (
    PendingText,
    ReplyChunk,
    ReplyFailed,
    ReplyFinished,
)
from tui_chat.inference.contract import (
    Engine,
    EngineError,
    EngineFactory,
    EngineInfo,
    GenerationParams,
    GenerationStats,
    TextDelta,
)
from tui_chat.chat.replies import generate_reply
from tui_chat.tui.state import TuiState
from tui_chat.chat.versions import version_positions
from tui_chat.tui.widgets.chat_view import ChatView
from tui_chat.tui.widgets.command_hints import CommandHints
from tui_chat.tui.widgets.message_view import MessageView
from tui_chat.tui.widgets.prompt_input import PromptInput
from tui_chat.tui.widgets.sidebar import Sidebar
from tui_chat.tui.widgets.status_line import StatusLine
from tui_chat.tui.widgets.training_panel import TrainingPanel
from tui_chat.chat.session import ChatSession
from tui_chat.tui.screens.chat_actions import ChatActions
from tui_chat.tui.screens.chat_commands import ChatCommands
from tui_chat.tui.screens.chat_compare import ChatCompare
from tui_chat.tui.screens.chat_model import ChatModel
from tui_chat.tui.screens.chat_training import ChatTraining

READY_PLACEHOLDER = "Message  (Enter sends · Shift+Enter or Ctrl+J: new line · /help)"
LOADING_PLACEHOLDER = "Loading model… (you can type; sending waits until it is ready)"
GENERATING_PLACEHOLDER = "Generating… (Esc stops)"
ERROR_LOG = "tui-errors.log"  # in the data home: the tracebacks of unexpected errors, never shown on screen


@dataclass(frozen=True)
class ReplyJob:
    """Everything a generation worker needs, fixed when it starts (the worker reads no screen state)."""

    number: int
    conversation_id: int
    parent_id: int
    params: GenerationParams
    engine: Engine
    stop: threading.Event
    pending: PendingText  # text streamed but not yet shown


def user_error_types() -> tuple[type[Exception], ...]:
    """The errors whose message is meant for the user (one line naming the fix).

    ``trainer.models`` imports torch, so it is not imported here just to name its error: if nothing imported it,
    nothing can have raised its ModelError.
    """
    models = sys.modules.get("trainer.models")
    return (EngineError, StoreError) + ((models.ModelError,) if models is not None else ())


class ChatScreen(ChatActions, ChatModel, ChatTraining, ChatCompare, Screen):
    BINDINGS = chat_bindings()
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]  # a narrow terminal gets a narrower sidebar

    generating: reactive[bool] = reactive(False, bindings=True)

    def __init__(
        self,
        store: Store,
        home: DataHome,
        engine: Engine | str,
        engine_factory: EngineFactory,
        state: TuiState,
    ) -> None:
        super().__init__()
        self.store = store
        self.home = home
        self.engine_factory = engine_factory
        self.state = state
        self._first_engine = engine  # an Engine, or a spec the factory opens in the loader thread
        self.engine: Engine | None = None
        self.engine_info: EngineInfo | None = None
        self.loading_model: str | None = None  # the spec being loaded
        # The chat core: the open conversation (None: a new chat, created by its first message) and its rules.
        self.session = ChatSession(store, engine_factory, model=engine if isinstance(engine, str) else engine.name)
        self._send_when_loaded: str | None = None  # a message sent while the model loaded: it waits in the box
        self.branch: list[sessions.Message] = []  # the active branch as shown, root first
        self.commands = ChatCommands(self)
        self._job = 0
        self._stop = threading.Event()
        self._streaming: MessageView | None = None

    # ---- layout ----------------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        with Horizontal(id="body"):
            yield Sidebar(self.store, id="sidebar")
            with Vertical(id="main"):
                yield ChatView(id="chat")
                yield TrainingPanel(self.store, self.home, id="training")
                yield CommandHints(id="command-hints")
                yield PromptInput(placeholder=LOADING_PLACEHOLDER, id="prompt")
                yield StatusLine(id="status")
        yield Footer()

    @property
    def conversation(self) -> Conversation | None:
        """The open conversation (the chat core holds it)."""
        return self.session.conversation

    @property
    def chat(self) -> ChatView:
        return self.query_one(ChatView)

    @property
    def prompt(self) -> PromptInput:
        return self.query_one(PromptInput)

    @property
    def sidebar(self) -> Sidebar:
        return self.query_one(Sidebar)

    @property
    def status(self) -> StatusLine:
        return self.query_one(StatusLine)

    @property
    def training(self) -> TrainingPanel:
        return self.query_one(TrainingPanel)

    async def on_mount(self) -> None:
        self.query_one(CommandHints).display = False
        self.sidebar.conversations.reload()
        resume = self._resume_target()
        if resume is not None:
            await self.open_conversation(resume.id)
        else:
            await self.show_new_chat()
        self.prompt.focus()
        first = self._first_engine
        # After the first frame is on screen: importing torch holds the GIL for seconds, which starved that frame.
        self.call_after_refresh(
            self.load_model, first if isinstance(first, str) else first.name, None if isinstance(first, str) else first
        )

    def on_unmount(self) -> None:
        self._stop.set()  # leaving mid-reply: the worker ends promptly and the partial reply is kept as stopped

    def _resume_target(self) -> Conversation | None:
        if self.state.conversation_id is not None:
            try:
                return self.store.get_conversation(self.state.conversation_id)
            except sessions.NotFound:
                pass
        return self.store.latest_conversation()

    def palette_commands(self) -> Iterable[SystemCommand]:
        for action in CHAT_ACTIONS:
            if self.check_action(action.action, ()):
                yield SystemCommand(action.title, action.help, partial(self.run_action, action.action))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return self.generating  # Esc is only shown (and only taken) while a reply streams
        return True

    def watch_generating(self, generating: bool) -> None:
        self._update_placeholder()

    def _update_placeholder(self) -> None:
        if self.generating:
            placeholder = GENERATING_PLACEHOLDER
        elif self.loading_model is not None:
            placeholder = LOADING_PLACEHOLDER
        elif self.engine is None:
            placeholder = "No model loaded: switch model with Alt+M or /model SPEC"
        else:
            placeholder = READY_PLACEHOLDER
        self.prompt.placeholder = placeholder

    # ---- errors ----------------------------------------------------------------------------------------------

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = False,
    ) -> None:
        """Notifications here carry titles, user text and error messages: never read them as markup."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    def describe_error(self, exc: BaseException) -> str:
        """One line for the user. Unexpected errors also get their traceback written to the data home's log."""
        if isinstance(exc, user_error_types()):
            return str(exc)
        path = self.home.root / ERROR_LOG
        try:
            self.home.root.mkdir(parents=True, exist_ok=True)
            with path.open("a") as log:
                log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
                log.write("".join(traceback.format_exception(exc)))
            where = f" (details in {path})"
        except OSError:
            where = ""
        return f"{type(exc).__name__}: {exc}{where}"

    def can_generate(self) -> bool:
        """Whether a reply can start now; if not, say why."""
        if self.generating:
            self.notify("A reply is being generated: wait for it, or press Esc to stop it.", severity="warning")
        elif self.loading_model is not None:
            self.notify(f"The model ({engine_name(self.loading_model)}) is still loading; try again in a moment.", severity="warning")
        elif self.engine is None:
            self.notify("No model is loaded: switch model with Alt+M or /model SPEC.", severity="error")
        else:
            return True
        return False

    def require_idle(self, doing: str) -> bool:
        """True when no reply is streaming; otherwise say to stop it first."""
        if self.generating:
            self.notify(f"Stop the reply first (Esc), then {doing}.", severity="warning")
            return False
        return True

    # ---- conversations ---------------------------------------------------------------------------------------

    async def open_conversation(self, conversation_id: int, message_id: int | None = None) -> None:
        """Show a conversation's active branch; with ``message_id`` (a search hit), the branch through it."""
        conversation = self.store.get_conversation(conversation_id)
        branch = self.store.active_branch(conversation_id)
        if message_id is not None and message_id not in {m.id for m in branch}:
            branch = self.store.switch_branch(message_id)
        positions = version_positions(self.store.messages(conversation_id))
        reveal = next((index for index, m in enumerate(branch) if m.id == message_id), None)
        await self.chat.show(branch, positions, conversation.system_prompt, reveal=reveal)
        self.session.open(conversation.id, adopt_model=False)  # the window keeps one model for every chat
        self.branch = branch
        self._conversation_changed()
        self.count_context()
        if reveal is not None:
            self.chat.focus()
            self.chat.select_message(branch[reveal].id)

    async def show_new_chat(self) -> None:
        await self.chat.show([], {}, None)
        self.session.new()
        self.branch = []
        self._conversation_changed()
        self.status.show_context(None, None)

    def _conversation_changed(self) -> None:
        """Title, sidebar highlight, and what the next start resumes."""
        conversation = self.conversation
        if conversation is None:
            self.sub_title = "New chat"
        else:
            self.sub_title = conversation.title + ("  ·  not used for training" if conversation.exclude_from_training else "")
        self.sidebar.conversations.reload(conversation.id if conversation else None)
        conversation_id = conversation.id if conversation else None
        if conversation_id != self.state.conversation_id:  # not rewritten after every reply in the same chat
            self.state.conversation_id = conversation_id
            self._save_state()

    def _save_state(self) -> None:
        try:
            self.state.save(self.home)
        except OSError as exc:
            self.notify(f"could not save the window's state in {self.home.root}: {exc}", severity="warning")

    def _refresh_conversation(self) -> None:
        if self.session.refresh() is not None:
            self._conversation_changed()

    @property
    def params(self) -> GenerationParams:
        return self.session.params

    async def on_sidebar_conversation_chosen(self, message: Sidebar.ConversationChosen) -> None:
        if self.require_idle("open another conversation"):
            await self.open_conversation(message.conversation_id, message.message_id)
            if message.message_id is None:
                self.prompt.focus()

    # ---- sending and generating ------------------------------------------------------------------------------

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        if event.text_area is self.prompt:
            self.query_one(CommandHints).show_for(self.prompt.text)

    async def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
        text = event.text.strip()
        if commands.is_command(text):
            if not await self.run_slash(text):
                self.prompt.restore(event.text)
            return
        text = commands.message_text(text)
        if self.loading_model is not None and not self.generating:
            # As the placeholder promises: sent once the model is ready (unless changed in the box before then).
            self._send_when_loaded = event.text
            self.prompt.restore(event.text)
            self.notify(f"The model ({engine_name(self.loading_model)}) is still loading; the message is sent once it "
                        "is ready.")
            return
        if not self.can_generate():
            self.prompt.restore(event.text)
            return
        await self.send(text)

    async def run_slash(self, text: str) -> bool:
        """Run a slash command; False (the text stays in the box to fix) when it was not understood."""
        try:
            await self.commands.run(commands.parse(text))
        except (commands.CommandError, StoreError) as exc:
            self.notify(str(exc), severity="error")
            return False
        return True

    async def send(self, text: str) -> None:
        user = self.session.add_user_message(text)
        self.branch.append(user)
        await self.chat.add(MessageView(user))
        self._refresh_conversation()  # the first message titles the chat and it moves to the top of the list
        await self.start_reply(user.id)

    async def start_reply(self, parent_id: int) -> None:
        assert self.conversation is not None and self.engine is not None
        self._job += 1
        self._stop = threading.Event()
        view = MessageView(None, role="assistant", model=self.engine.name)
        await self.chat.add(view)
        view.start_stream()
        self._streaming = view
        self.generating = True
        job = ReplyJob(self._job, self.conversation.id, parent_id, self.params, self.engine, self._stop, PendingText())
        self.generate(job)

    @work(thread=True, exclusive=True, group="generation")
    def generate(self, job: ReplyJob) -> None:
        """Stream one reply into the store, handing its text to the UI as it comes; never touches a widget."""
        stats: GenerationStats | None = None

        def on_chunk(chunk: TextDelta | GenerationStats) -> None:
            nonlocal stats
            if isinstance(chunk, TextDelta):
                if job.pending.add(chunk.text):
                    self.post_message(ReplyChunk(job.number, job.pending))
            else:
                stats = chunk

        try:
            reply = generate_reply(
                self.store, job.engine, job.conversation_id, job.params,
                parent_id=job.parent_id, stop=job.stop, on_chunk=on_chunk,
            )
        except Exception as exc:  # the reply row (if any) is already marked failed or stopped by generate_reply
            self.post_message(ReplyFailed(job.number, self.describe_error(exc), self._reply_row(job)))
            return
        self.post_message(ReplyFinished(job.number, reply, stats))

    def _reply_row(self, job: ReplyJob) -> sessions.Message | None:
        """The reply a failed job left behind: the conversation's tip, if it answers the job's message."""
        tip = self.store.get_conversation(job.conversation_id).tip_id
        if tip is None:
            return None
        message = self.store.get_message(tip)
        return message if message.role == "assistant" and message.parent_id == job.parent_id else None

    async def on_reply_chunk(self, message: ReplyChunk) -> None:
        text = message.pending.take()
        if message.job == self._job and self._streaming is not None and text:
            await self._streaming.append(text)

    async def on_reply_finished(self, message: ReplyFinished) -> None:
        if message.job != self._job or self._streaming is None:
            return
        view, self._streaming = self._streaming, None
        # Only the new reply's version count is new; its siblings alone say it (not the whole conversation's rows).
        versions = [sibling.id for sibling in self.store.siblings(message.reply.id)]
        position = (versions.index(message.reply.id) + 1, len(versions))
        await view.finish(message.reply, position)
        self.chat.set_position(message.reply.id, position)
        self.branch.append(message.reply)
        self.generating = False
        if message.stats is not None:
            stats = message.stats
            self.status.show_stats(stats)
            limit = stats.context_limit or (self.engine_info.context_limit if self.engine_info else None)
            self.status.show_context(stats.prompt_tokens + stats.new_tokens, limit)
            if stats.dropped_messages:
                self.notify(
                    f"The {stats.dropped_messages} oldest messages were left out to fit the model's context.",
                    severity="warning",
                )
        self._refresh_conversation()

    async def on_reply_failed(self, message: ReplyFailed) -> None:
        if message.job != self._job or self._streaming is None:
            return
        view, self._streaming = self._streaming, None
        await view.fail(message.reply, message.error)
        if message.reply is not None:
            self.branch.append(message.reply)
        self.generating = False
        self.notify(message.error, title="Generation failed", severity="error", timeout=10)
        self._refresh_conversation()

    def action_stop(self) -> None:
        if self.generating:
            self._stop.set()

    async def show_branch_from(self, index: int, branch: list[sessions.Message]) -> None:
        """The branch changed from ``index`` on (a version flipped, a message edited): redraw only that part."""
        assert self.conversation is not None
        positions = version_positions(self.store.messages(self.conversation.id))
        if index < self.chat.offset:  # the change starts above the messages shown: show the branch from there
            await self.chat.show(branch, positions, self.conversation.system_prompt, reveal=index)
        else:
            self.chat.set_positions(positions)
            await self.chat.remove_from(index)
            for message in branch[index:]:
                await self.chat.add(self.chat.view_of(message))
        self.branch = branch
        self.count_context()
