"""The chat window's actions (keys, the command palette and slash commands all end here), as a part of ChatScreen.

Each action asks the chat core (``self.session``) what it means and what changes, then shows the result: which reply
a key acts on, what a retry answers, what clears a correction are the core's rules, not the window's. Where an
action needs text the user has not given yet, it opens the editor and carries on when the editor closes.
"""

from __future__ import annotations

import shlex
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Iterator

from textual import work

import sessions
from sessions import StoreError

from tui_chat.chat.commands import CommandError
from tui_chat.chat.export import export_help, run_export
from tui_chat.chat.versions import version_positions
from tui_chat.inference.contract import GenerationParams
from tui_chat.tui.screens.confirm import ConfirmScreen
from tui_chat.tui.screens.export_dialog import ExportDialogScreen
from tui_chat.tui.screens.help import HelpScreen
from tui_chat.tui.screens.model_picker import ModelPickerScreen
from tui_chat.tui.screens.params_editor import ParamsEditorScreen
from tui_chat.tui.screens.text_editor import TextEditorScreen
from tui_chat.tui.worker_messages import ExportFinished

if TYPE_CHECKING:
    from tui_chat.tui.screens.chat import ChatScreen

    _Base = ChatScreen
else:
    _Base = object

CLIPBOARD_FILE = "clipboard.txt"  # in the data home: the copy fallback where OSC 52 does not reach a clipboard
RATED = {1: "Rated the reply up.", -1: "Rated the reply down.", 0: "Rating cleared."}


def as_sentence(line: str) -> str:
    """The core's one-line errors as the window's notifications read: a capital and a full stop."""
    line = line[:1].upper() + line[1:]
    return line if line.endswith((".", "!", "?")) else line + "."


class ChatActions(_Base):
    """What the chat window does for each action; mixed into ChatScreen."""

    @contextmanager
    def core_errors(self) -> Iterator[None]:
        """A rule the core refuses (no reply to rate yet, ...) is a one-line warning, and the action does nothing."""
        try:
            yield
        except (CommandError, StoreError) as exc:
            self.notify(as_sentence(str(exc)), severity="warning")

    # ---- which message an action means -----------------------------------------------------------------------

    def selected_message(self) -> sessions.Message | None:
        view = self.chat.selected_view()
        return view.message if view is not None else None

    def target_reply(self, doing: str) -> sessions.Message:
        """The reply an action means (the core's rule, given what is selected and whether a reply streams)."""
        return self.session.target_reply(doing, selected=self.selected_message(), streaming=self.generating)

    def _replace_in_branch(self, message: sessions.Message) -> None:
        self.branch = [message if m.id == message.id else m for m in self.branch]
        for view in self.chat.views():
            if view.message_id == message.id:
                view.set_message(message)

    # ---- conversations ---------------------------------------------------------------------------------------

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
        if title:
            with self.core_errors():
                self.session.rename(title)
                self._conversation_changed()

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
        deleted = self.session.delete()
        latest = self.store.latest_conversation()
        if latest is not None:
            await self.open_conversation(latest.id)
        else:
            await self.show_new_chat()
        self.notify(f"Deleted “{deleted.title}”.")

    # ---- replies and versions --------------------------------------------------------------------------------

    async def action_regenerate(self) -> None:
        if not self.can_generate():
            return
        with self.core_errors():
            parent_id = self.session.retry_parent(selected=self.selected_message())
            index = [m.id for m in self.branch].index(parent_id) + 1
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
        await self.show_branch_from(index, self.store.switch_branch(siblings[place].id))
        if self.chat.has_focus:
            self.chat.select_message(siblings[place].id)

    def action_edit_last(self) -> None:
        if not self.can_generate():
            return
        with self.core_errors():
            target = self.session.message_to_edit(selected=self.selected_message())
            screen = TextEditorScreen("Edit your message (it is sent again as a new branch)", target.content)
            self.app.push_screen(screen, partial(self.edit_message, target))

    async def edit_message(self, original: sessions.Message, text: str | None) -> None:
        if not text or text == original.content or self.conversation is None or not self.can_generate():
            return
        index = [m.id for m in self.branch].index(original.id)
        edited = self.session.add_user_message(text, edit_of=original)
        await self.show_branch_from(index, self.branch[:index] + [edited])
        await self.start_reply(edited.id)

    # ---- what the user teaches -------------------------------------------------------------------------------

    def action_rate_up(self) -> None:
        self.rate(1, toggle=True)

    def action_rate_down(self) -> None:
        self.rate(-1, toggle=True)

    def rate(self, value: int, *, toggle: bool = False) -> None:
        with self.core_errors():
            rated = self.session.rate(value, reply=self.target_reply("rate"), toggle=toggle)
            self._replace_in_branch(rated)
            self.notify(RATED[rated.rating])

    def action_correct(self) -> None:
        with self.core_errors():
            reply = self.target_reply("correct")
            screen = TextEditorScreen(
                "Write the ideal answer (kept for training; empty clears it)", reply.correction or reply.content
            )
            self.app.push_screen(screen, partial(self.correct, reply))

    def correct(self, reply: sessions.Message, text: str | None) -> None:
        """Keep ``text`` as the ideal answer (None: the editor was cancelled; empty: clear it)."""
        if text is None:
            return
        corrected = self.session.correct(text, reply=reply)
        self._replace_in_branch(corrected)
        self.notify("Correction saved." if corrected.correction else "Correction cleared.")

    def action_copy(self) -> None:
        view = self.chat.selected_view()
        with self.core_errors():
            text = view.text if view is not None else self.target_reply("copy").content
            self.app.copy_to_clipboard(text)
            # OSC 52 reaches the clipboard only where the terminal allows it (not macOS Terminal, not tmux by
            # default), and nothing reports back: so the text also goes to a file the user can open.
            path = self.home.root / CLIPBOARD_FILE
            try:
                self.home.root.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                self.home.secure_file(path)
                self.notify(f"Copied {len(text)} characters to the clipboard; also saved to {path}")
            except OSError as exc:
                self.notify(f"Copied {len(text)} characters to the clipboard (could not also save {path}: {exc})")

    def action_toggle_exclude(self) -> None:
        self.set_excluded(None)

    def set_excluded(self, excluded: bool | None) -> None:
        """Set (or with None, toggle) whether this conversation is left out of training."""
        value = self.session.set_excluded(excluded)
        self._conversation_changed()
        self.notify("This conversation is left out of training." if value else "This conversation is used for training.")

    # ---- settings --------------------------------------------------------------------------------------------

    def action_system_prompt(self) -> None:
        screen = TextEditorScreen(
            "System prompt for this conversation (empty: the model's default)", self.session.system_prompt or ""
        )
        self.app.push_screen(screen, self.set_system_prompt)

    async def set_system_prompt(self, text: str | None) -> None:
        """Use ``text`` as this conversation's system prompt (None: the editor was cancelled; empty: clear it)."""
        if text is None:
            return
        self.session.set_system_prompt(text)
        await self.chat.set_system_prompt(self.session.system_prompt)
        self.count_context()
        self.notify("System prompt saved for this conversation." if self.session.system_prompt
                    else "System prompt cleared.")

    def action_params(self) -> None:
        self.app.push_screen(ParamsEditorScreen(self.params), self.set_params)

    def set_params(self, params: GenerationParams | None) -> None:
        if params is None:
            return
        with self.core_errors():
            changed = self.session.set_params(params)
            self.notify(f"This chat now uses {', '.join(changed)}." if changed else "Settings unchanged.")

    def action_switch_model(self) -> None:
        current = self.engine.name if self.engine else None
        self.app.push_screen(ModelPickerScreen(current, self.local_models), self.model_chosen)

    def model_chosen(self, spec: str | None) -> None:
        if spec:
            self.switch_model(spec)

    # ---- export ----------------------------------------------------------------------------------------------

    def action_export(self) -> None:
        # The CLI's own help, so the dialog lists the options exactly as `tui-chat export` takes them.
        self.app.push_screen(ExportDialogScreen(export_help()), self._export_chosen)

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
        """Export in a thread: a large export must not freeze the chat."""
        self.app.call_from_thread(self.notify, "Exporting…")
        try:
            summary = run_export(self.store, self.home, argv)
        except CommandError as exc:
            self.post_message(ExportFinished(None, str(exc)))
        except Exception as exc:
            self.post_message(ExportFinished(None, self.describe_error(exc)))
        else:
            self.post_message(ExportFinished(summary, None))

    def on_export_finished(self, message: ExportFinished) -> None:
        if message.error is not None:
            self.notify(message.error, title="Export failed", severity="error", timeout=10)
        else:
            self.notify(message.summary or "Exported.", title="Export", timeout=10)

    # ---- the window ------------------------------------------------------------------------------------------

    def action_search(self) -> None:
        self.sidebar.display = True
        self.sidebar.focus_search()

    def action_toggle_sidebar(self) -> None:
        self.sidebar.display = not self.sidebar.display
        if not self.sidebar.display:
            self.prompt.focus()

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen())
