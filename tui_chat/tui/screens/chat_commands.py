"""The chat window's side of the slash commands: one handler per typed action of ``tui_chat.chat.commands``.

The action says what the user asked for, already checked; a handler here opens the editor for what was left out
(`/correct` alone opens the same editor as Alt+C) or calls the screen's action, which asks the chat core.
A CommandError raised here keeps the command in the message box, to fix and send again.
"""

from __future__ import annotations

from functools import singledispatchmethod
from typing import TYPE_CHECKING

from tui_chat.chat.commands import (
    Action, CommandError, Compare, Copy, Correct, Delete, Edit, Exclude, Export, Help, ListConversations, New, Open, Quit,
    Rate, Rename, Retry, Runs, SetParam, SwitchModel, SystemPrompt, Train,
)
from tui_chat.training.summary import finish_summary, progress_line, win_rate_of
from tui_chat.tui.screens.help import HelpScreen
from tui_chat.tui.screens.runs_list import RunsScreen

if TYPE_CHECKING:
    from tui_chat.tui.screens.chat import ChatScreen


class ChatCommands:
    def __init__(self, screen: ChatScreen) -> None:
        self.screen = screen

    @singledispatchmethod
    async def run(self, action: Action) -> None:
        raise TypeError(f"the chat window has no handler for {action!r}")

    @run.register
    async def _help(self, action: Help) -> None:
        self.screen.app.push_screen(HelpScreen())

    @run.register
    async def _new(self, action: New) -> None:
        await self.screen.action_new_chat()

    @run.register
    async def _list(self, action: ListConversations) -> None:
        sidebar = self.screen.sidebar
        sidebar.display = True
        conversations = sidebar.conversations
        while action.limit and conversations.loaded_count < action.limit and conversations.load_more():
            pass
        conversations.focus()
        count = self.screen.store.count_conversations()
        self.screen.notify(f"{count} conversations, newest first: Enter opens the highlighted one.")

    @run.register
    async def _open(self, action: Open) -> None:
        if self.screen.require_idle("open another conversation"):
            await self.screen.open_conversation(action.conversation_id)

    @run.register
    async def _rename(self, action: Rename) -> None:
        if action.title is None:
            self.screen.action_rename()
            return
        self.screen.session.rename(action.title)
        self.screen._conversation_changed()

    @run.register
    async def _delete(self, action: Delete) -> None:
        self.screen.action_delete()

    @run.register
    async def _model(self, action: SwitchModel) -> None:
        if action.spec:
            self.screen.switch_model(action.spec)
        else:
            self.screen.action_switch_model()

    @run.register
    async def _system(self, action: SystemPrompt) -> None:
        if action.text is None and not action.clear:
            self.screen.action_system_prompt()
        else:
            await self.screen.set_system_prompt(action.text or "")

    @run.register
    async def _set(self, action: SetParam) -> None:
        session = self.screen.session
        if action.name is None:
            self.screen.action_params()
        elif action.value is None:
            self.screen.notify(f"{action.name} = {getattr(session.params, action.name)}")
        else:
            session.set_param(action.name, action.value)
            self.screen.notify(f"This chat now uses {action.name} {getattr(session.params, action.name)}.")

    @run.register
    async def _retry(self, action: Retry) -> None:
        await self.screen.action_regenerate()

    @run.register
    async def _edit(self, action: Edit) -> None:
        if action.text is None:
            self.screen.action_edit_last()
            return
        if not self.screen.can_generate():
            raise CommandError("the model is busy or not loaded: try again in a moment")
        original = self.screen.session.message_to_edit(selected=self.screen.selected_message())
        await self.screen.edit_message(original, action.text)

    @run.register
    async def _rate(self, action: Rate) -> None:
        self.screen.target_reply("rate")  # a CommandError keeps the command in the box to send later
        self.screen.rate(action.value)

    @run.register
    async def _correct(self, action: Correct) -> None:
        if action.text is None and not action.clear:
            self.screen.action_correct()
            return
        self.screen.correct(self.screen.target_reply("correct"), action.text or "")

    @run.register
    async def _compare(self, action: Compare) -> None:
        self.screen.compare(action.spec, blind=action.blind)

    @run.register
    async def _copy(self, action: Copy) -> None:
        self.screen.action_copy()

    @run.register
    async def _exclude(self, action: Exclude) -> None:
        self.screen.set_excluded(action.value)

    @run.register
    async def _export(self, action: Export) -> None:
        if action.argv is None:
            self.screen.action_export()
        else:
            self.screen.export(action.argv)

    @run.register
    async def _train(self, action: Train) -> None:
        self.screen.train(action.argv)

    @run.register
    async def _runs(self, action: Runs) -> None:
        screen = self.screen
        training = screen.training
        await training.poll()
        watch = training.run_watch
        if action.cancel:
            screen.cancel_run(watch.find(action.name))
            return
        if action.name:
            run = watch.find(action.name)
            progress = watch.progress_of(run)
            summary = finish_summary(run, win_rate_of(screen.store, run))
            screen.notify(progress_line(run.name, progress) if progress else summary, timeout=10)
            return
        runs = [(run, watch.progress_of(run)) for run in screen.store.list_training_runs()]
        screen.app.push_screen(RunsScreen(runs, screen.store, screen.home), screen.model_chosen)

    @run.register
    async def _quit(self, action: Quit) -> None:
        self.screen.app.exit()
