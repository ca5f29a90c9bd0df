"""The chat: conversations on the left, the open one in the middle, the message box and the status line below.

The screen owns the chat's state (the open conversation, its active branch, the engine) and does every action;
slash commands (``ChatCommands``) and the command palette call the same methods. Slow work runs in thread workers
that post messages back (``chat_messages``): loading a model, generating a reply, counting the context, exporting.
"""

from __future__ import annotations

import shlex
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

from .. import commands
from ..chat_actions import CHAT_ACTIONS, chat_bindings
from ..chat_messages import (
    ContextCounted,
    ExportFinished,
    ModelLoaded,
    ModelLoadFailed,
    ModelLoadProgress,
    PendingText,
    ReplyChunk,
    ReplyFailed,
    ReplyFinished,
)
from ..generation import (
    Engine,
    EngineError,
    EngineFactory,
    EngineInfo,
    GenerationParams,
    GenerationStats,
    TextDelta,
)
from ..replies import add_user_message, conversation_messages, generate_reply
from ..tui_state import TuiState
from ..versions import version_positions
from ..widgets.chat_view import ChatView
from ..widgets.command_hints import CommandHints
from ..widgets.message_view import MessageView
from ..widgets.prompt_input import PromptInput
from ..widgets.sidebar import Sidebar
from ..widgets.status_line import StatusLine
from ..training.summary import metrics_text
from ..widgets.training_panel import TrainingPanel
from .chat_commands import ChatCommands
from .confirm import ConfirmScreen
from .export_dialog import ExportDialogScreen
from .help import HelpScreen
from .model_picker import ModelChoice, ModelPickerScreen
from .params_editor import ParamsEditorScreen
from .text_editor import TextEditorScreen

READY_PLACEHOLDER = "Message  (Enter sends · Shift+Enter or Ctrl+J: new line · /help)"
LOADING_PLACEHOLDER = "Loading model… (you can type; sending waits until it is ready)"
GENERATING_PLACEHOLDER = "Generating… (Esc stops)"
ERROR_LOG = "tui-errors.log"  # in the data home: the tracebacks of unexpected errors, never shown on screen
CLIPBOARD_FILE = "clipboard.txt"  # in the data home: the copy fallback where OSC 52 does not reach a clipboard


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


class ChatScreen(Screen):
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
        self._send_when_loaded: str | None = None  # a message sent while the model loaded: it waits in the box
        self.conversation: Conversation | None = None  # None: a new chat, created by its first message
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
            self.notify(f"The model ({self.loading_model}) is still loading; try again in a moment.", severity="warning")
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

    # ---- the model -------------------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="model")
    def load_model(self, spec: str, engine: Engine | None = None) -> None:
        """Open (when given a spec) and load a model, reporting progress; the current engine stays until it is ready."""
        self.app.call_from_thread(self._loading, spec)

        def progress(what: str, fraction: float | None) -> None:
            self.post_message(ModelLoadProgress(what, fraction))

        try:
            if engine is None:
                engine = self.engine_factory(spec)
            info = engine.load(progress)
        except Exception as exc:  # shown as a notification and in the status line; the app keeps running
            self.post_message(ModelLoadFailed(spec, self.describe_error(exc)))
            return
        self.post_message(ModelLoaded(spec, engine, info))

    def _loading(self, spec: str) -> None:
        self.loading_model = spec
        self.status.show_loading(f"loading model {spec}…", None)
        self._update_placeholder()

    def on_model_load_progress(self, message: ModelLoadProgress) -> None:
        self.status.show_loading(f"{self.loading_model or 'model'}: {message.what}", message.fraction)  # bar: %

    def on_model_loaded(self, message: ModelLoaded) -> None:
        switched = self.engine is not None
        self.engine, self.engine_info, self.loading_model = message.engine, message.info, None
        self.status.show_ready(message.info)
        self._update_placeholder()
        self.state.model = message.spec
        self._save_state()
        if switched:
            if self.conversation is not None:
                self.conversation = self.store.update_conversation(self.conversation.id, model=message.engine.name)
            self.notify(f"Now chatting with {message.info.name} ({message.info.device}/{message.info.dtype}).")
        self.count_context()
        waiting, self._send_when_loaded = self._send_when_loaded, None
        if waiting is not None and self.prompt.text == waiting:
            self.prompt.submit()

    def on_model_load_failed(self, message: ModelLoadFailed) -> None:
        self.loading_model = None
        self._send_when_loaded = None  # the message stays in the box
        self.status.show_failure(f"model {message.spec} failed to load: {message.error}")  # (still on the old one)
        self._update_placeholder()
        self.notify(message.error, title=f"Model {message.spec} failed to load", severity="error", timeout=10)

    def switch_model(self, spec: str) -> None:
        if self.require_idle("switch models") and self.loading_model is None:
            self.load_model(spec.strip())
        elif self.loading_model is not None:
            self.notify(f"{self.loading_model} is still loading; switch once it is ready.", severity="warning")

    def local_models(self) -> list[ModelChoice]:
        """The bundled model and the trained runs in the data home (imports torch: call it from a thread)."""
        from trainer.models import list_local_models

        descriptions = {"bundled": "the bundled SmolLM2-135M-Instruct", "model": "a model", "adapter": "an adapter"}
        runs = {run.name: run for run in self.store.list_training_runs()}
        choices = []
        for model in list_local_models(self.home.models):
            note = "" if model.ready else " (converted on first use)"
            what = descriptions.get(model.kind, model.kind)
            run = runs.get(model.name)
            if run is not None:  # a run trained here: say what from, on what, and how it measured
                measured = metrics_text(run.metrics)
                what = f"trained from {run.base_model} on {len(run.conversation_ids)} conversations" + (
                    f" · {measured}" if measured else ""
                )
            choices.append((model.name, f"{what} · {model.path}{note}"))
        return choices

    @work(thread=True, exclusive=True, group="context")
    def count_context(self) -> None:
        """How many tokens the open conversation's active branch takes (the tokenizer may be slow on long chats)."""
        engine, info, conversation = self.engine, self.engine_info, self.conversation
        if engine is None or info is None:
            return
        messages = conversation_messages(self.store, conversation.id) if conversation is not None else []
        # A chat saved before its first message (/set does that) holds none; chat templates reject an empty list.
        used = engine.count_tokens(messages) if messages else 0
        self.post_message(ContextCounted(conversation.id if conversation else None, used, info.context_limit))

    def on_context_counted(self, message: ContextCounted) -> None:
        if message.conversation_id == (self.conversation.id if self.conversation else None):
            self.status.show_context(message.used, message.limit)

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
        self.conversation, self.branch = conversation, branch
        self._conversation_changed()
        self.count_context()
        if reveal is not None:
            self.chat.focus()
            self.chat.select_message(branch[reveal].id)

    async def show_new_chat(self) -> None:
        await self.chat.show([], {}, None)
        self.conversation, self.branch = None, []
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
        if self.conversation is not None:
            self.conversation = self.store.get_conversation(self.conversation.id)
            self._conversation_changed()

    def ensure_conversation(self) -> Conversation:
        if self.conversation is None:
            self.conversation = self.store.create_conversation(model=self.engine.name if self.engine else None)
            self._conversation_changed()
        return self.conversation

    @property
    def params(self) -> GenerationParams:
        return GenerationParams.from_dict(self.conversation.params if self.conversation else None)

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
        if text.startswith("//"):
            text = text[1:]  # "//" escapes a message that starts with a slash
        if self.loading_model is not None and not self.generating:
            # As the placeholder promises: sent once the model is ready (unless changed in the box before then).
            self._send_when_loaded = event.text
            self.prompt.restore(event.text)
            self.notify(f"The model ({self.loading_model}) is still loading; the message is sent once it is ready.")
            return
        if not self.can_generate():
            self.prompt.restore(event.text)
            return
        await self.send(text)

    async def run_slash(self, text: str) -> bool:
        """Run a slash command; False (the text stays in the box to fix) when it was not understood."""
        try:
            parsed = commands.parse(text)
            await getattr(self.commands, parsed.command.handler_name)(parsed.args)
        except (commands.CommandError, StoreError) as exc:
            self.notify(str(exc), severity="error")
            return False
        return True

    async def send(self, text: str) -> None:
        conversation = self.ensure_conversation()
        user = add_user_message(self.store, conversation.id, text)
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

    # ---- which message an action means -----------------------------------------------------------------------

    def selected_message(self) -> sessions.Message | None:
        view = self.chat.selected_view()
        return view.message if view is not None else None

    def target_reply(self) -> sessions.Message | None:
        """The selected reply, else the newest reply on the branch; None when there is none yet.

        While a reply streams, the newest reply is that one and it has no stored row to act on: unless the user
        selected a finished reply, None, rather than the reply before it (``no_target_reply`` says why).
        """
        selected = self.selected_message()
        if selected is not None and selected.role == "assistant":
            return selected
        if self.generating:
            return None
        return next((m for m in reversed(self.branch) if m.role == "assistant"), None)

    def no_target_reply(self, doing: str) -> str:
        """The line to show when ``target_reply()`` is None; ``doing`` is the verb (``"rate"``)."""
        if self.generating:
            return f"Wait for the reply to finish (Esc stops it), then {doing} it."
        return f"No reply to {doing} yet."

    def _replace_in_branch(self, message: sessions.Message) -> None:
        self.branch = [message if m.id == message.id else m for m in self.branch]
        for view in self.chat.views():
            if view.message_id == message.id:
                view.set_message(message)

    async def _show_branch_from(self, index: int, branch: list[sessions.Message]) -> None:
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

    # ---- actions (keys, palette, slash commands) -------------------------------------------------------------

    async def action_new_chat(self) -> None:
        if self.require_idle("start a new chat"):
            await self.show_new_chat()
            self.prompt.focus()

    def action_rename(self) -> None:
        if self.conversation is None:
            self.notify("Send a first message; the chat is named after it (then F2 renames it).")
            return
        screen = TextEditorScreen("Rename this conversation", self.conversation.title, multiline=False)
        self.app.push_screen(screen, self.rename)

    def rename(self, title: str | None) -> None:
        if title and self.conversation is not None:
            self.store.rename_conversation(self.conversation.id, title)
            self._refresh_conversation()

    def action_delete(self) -> None:
        if self.conversation is None:
            self.notify("Nothing to delete: this chat has no messages yet.")
            return
        if not self.require_idle("delete the conversation"):
            return
        count = len(self.store.messages(self.conversation.id))
        question = f"Delete “{self.conversation.title}” and its {count} messages? This cannot be undone."
        self.app.push_screen(ConfirmScreen(question, yes="Delete"), self.delete)

    async def delete(self, confirmed: bool | None) -> None:
        if not confirmed or self.conversation is None:
            return
        title = self.conversation.title
        self.store.delete_conversation(self.conversation.id)
        latest = self.store.latest_conversation()
        if latest is not None:
            await self.open_conversation(latest.id)
        else:
            await self.show_new_chat()
        self.notify(f"Deleted “{title}”.")

    async def action_regenerate(self) -> None:
        if not self.can_generate():
            return
        if not self.branch:
            self.notify("Nothing to regenerate yet: send a message first.")
            return
        selected = self.selected_message()
        if self.branch[-1].role == "user" and (selected is None or selected.role == "user"):
            index, parent_id = len(self.branch), self.branch[-1].id  # its reply never came: answer it now
        else:
            reply = self.target_reply()
            if reply is None or reply.parent_id is None:
                self.notify("No reply to regenerate.")
                return
            index, parent_id = self.branch.index(reply), reply.parent_id
        await self.chat.remove_from(index)
        self.branch = self.branch[:index]
        await self.start_reply(parent_id)

    async def action_previous_version(self) -> None:
        await self.flip_version(-1)

    async def action_next_version(self) -> None:
        await self.flip_version(1)

    async def flip_version(self, step: int) -> None:
        """Show another version of the selected message, else of the newest message that has several."""
        if not self.require_idle("flip versions") or self.conversation is None:
            return
        positions = version_positions(self.store.messages(self.conversation.id))
        target = self.selected_message() or next(
            (m for m in reversed(self.branch) if positions.get(m.id, (1, 1))[1] > 1), None
        )
        if target is None:
            self.notify("No message here has other versions (Ctrl+R regenerates a reply).")
            return
        siblings = self.store.siblings(target.id)
        place = [m.id for m in siblings].index(target.id) + step
        if not 0 <= place < len(siblings):
            self.app.bell()
            return
        index = [m.id for m in self.branch].index(target.id)
        await self._show_branch_from(index, self.store.switch_branch(siblings[place].id))
        if self.chat.has_focus:
            self.chat.select_message(siblings[place].id)

    def action_edit_last(self) -> None:
        if not self.can_generate():
            return
        selected = self.selected_message()
        target = selected if selected is not None and selected.role == "user" else next(
            (m for m in reversed(self.branch) if m.role == "user"), None
        )
        if target is None:
            self.notify("No message of yours to edit yet.")
            return
        screen = TextEditorScreen("Edit your message (it is sent again as a new branch)", target.content)
        self.app.push_screen(screen, partial(self.edit_message, target))

    async def edit_message(self, original: sessions.Message, text: str | None) -> None:
        if not text or text == original.content or self.conversation is None or not self.can_generate():
            return
        index = [m.id for m in self.branch].index(original.id)
        edited = add_user_message(self.store, self.conversation.id, text, edit_of=original)
        await self._show_branch_from(index, self.branch[:index] + [edited])
        await self.start_reply(edited.id)

    def action_rate_up(self) -> None:
        self.rate(1, toggle=True)

    def action_rate_down(self) -> None:
        self.rate(-1, toggle=True)

    def rate(self, value: int, *, toggle: bool = False) -> None:
        reply = self.target_reply()
        if reply is None:
            self.notify(self.no_target_reply("rate"), severity="warning")
            return
        if toggle and reply.rating == value:
            value = 0
        self._replace_in_branch(self.store.set_rating(reply.id, value))
        self.notify({1: "Rated the reply up.", -1: "Rated the reply down.", 0: "Rating cleared."}[value])

    def action_correct(self) -> None:
        reply = self.target_reply()
        if reply is None:
            self.notify(self.no_target_reply("correct"), severity="warning")
            return
        screen = TextEditorScreen(
            "Write the ideal answer (kept for training; empty clears it)", reply.correction or reply.content
        )
        self.app.push_screen(screen, partial(self.correct, reply))

    def correct(self, reply: sessions.Message, text: str | None) -> None:
        if text is None:
            return
        self._replace_in_branch(self.store.set_correction(reply.id, text or None))
        self.notify("Correction saved." if text else "Correction cleared.")

    def action_copy(self) -> None:
        view, reply = self.chat.selected_view(), self.target_reply()
        if view is None and reply is None:
            self.notify(self.no_target_reply("copy"), severity="warning")
            return
        text = view.text if view is not None else reply.content
        self.app.copy_to_clipboard(text)
        # OSC 52 reaches the clipboard only where the terminal allows it (not macOS Terminal, not tmux by default),
        # and nothing reports back: so the text also goes to a file the user can open.
        path = self.home.root / CLIPBOARD_FILE
        try:
            self.home.root.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            self.home.secure_file(path)
            self.notify(f"Copied {len(text)} characters to the clipboard; also saved to {path}")
        except OSError as exc:
            self.notify(f"Copied {len(text)} characters to the clipboard (could not also save {path}: {exc})")

    def action_system_prompt(self) -> None:
        current = self.conversation.system_prompt if self.conversation else ""
        screen = TextEditorScreen(
            "System prompt for this conversation (empty: the model's default)", current or ""
        )
        self.app.push_screen(screen, self.set_system_prompt)

    async def set_system_prompt(self, text: str | None) -> None:
        if text is None:
            return
        conversation = self.ensure_conversation()
        self.conversation = self.store.update_conversation(conversation.id, system_prompt=text or None)
        await self.chat.set_system_prompt(self.conversation.system_prompt)
        self.count_context()
        self.notify("System prompt saved for this conversation." if text else "System prompt cleared.")

    def action_params(self) -> None:
        self.app.push_screen(ParamsEditorScreen(self.params), self.set_params)

    def set_params(self, params: GenerationParams | None) -> None:
        if params is None:
            return
        conversation = self.ensure_conversation()
        before = GenerationParams.from_dict(conversation.params).to_dict()
        self.conversation = self.store.update_conversation(conversation.id, params=params.to_dict())
        changed = [f"{name} {value}" for name, value in params.to_dict().items() if before[name] != value]
        self.notify(f"This chat now uses {', '.join(changed)}." if changed else "Settings unchanged.")

    def action_switch_model(self) -> None:
        current = self.engine.name if self.engine else None
        self.app.push_screen(ModelPickerScreen(current, self.local_models), self._model_chosen)

    def _model_chosen(self, spec: str | None) -> None:
        if spec:
            self.switch_model(spec)

    def on_training_panel_switch_model(self, message: TrainingPanel.SwitchModel) -> None:
        self.switch_model(message.name)

    @property
    def current_model(self) -> str:
        """The model a new `/train` starts from: the one in use, else the one loading or remembered."""
        return self.engine.name if self.engine else self.loading_model or self.state.model or "default"

    def action_export(self) -> None:
        from ..cli_sessions import run_export_command

        # `tui-chat export --help`, so the dialog lists the options exactly as the CLI takes them.
        cli_help = run_export_command(self.store, self.home, ["--help"])
        self.app.push_screen(ExportDialogScreen(cli_help), self._export_chosen)

    def _export_chosen(self, options: str | None) -> None:
        if options is None:
            return
        try:
            argv = shlex.split(options)
        except ValueError as exc:
            self.notify(f"export options: {exc}", severity="error")
            return
        self.export(argv)

    @work(thread=True, exclusive=True, group="export")
    def export(self, argv: list[str]) -> None:
        """Run the CLI's export in a thread: a large export must not freeze the chat."""
        import click

        from ..cli_sessions import run_export_command

        self.app.call_from_thread(self.notify, "Exporting…")
        try:
            summary = run_export_command(self.store, self.home, argv)
        except click.ClickException as exc:
            self.post_message(ExportFinished(None, exc.format_message()))
        except Exception as exc:
            self.post_message(ExportFinished(None, self.describe_error(exc)))
        else:
            self.post_message(ExportFinished(summary, None))

    def on_export_finished(self, message: ExportFinished) -> None:
        if message.error is not None:
            self.notify(message.error, title="Export failed", severity="error", timeout=10)
        else:
            self.notify(message.summary or "Exported.", title="Export", timeout=10)

    def action_toggle_exclude(self) -> None:
        self.set_excluded(None)

    def set_excluded(self, excluded: bool | None) -> None:
        """Set (or with None, toggle) whether this conversation is left out of training."""
        conversation = self.ensure_conversation()
        value = not conversation.exclude_from_training if excluded is None else excluded
        self.store.update_conversation(conversation.id, exclude_from_training=value)
        self._refresh_conversation()
        self.notify("This conversation is left out of training." if value else "This conversation is used for training.")

    def action_search(self) -> None:
        self.sidebar.display = True
        self.sidebar.focus_search()

    def action_toggle_sidebar(self) -> None:
        self.sidebar.display = not self.sidebar.display
        if not self.sidebar.display:
            self.prompt.focus()

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen())
