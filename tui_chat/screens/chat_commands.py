"""The shared slash commands (``tui_chat.commands.COMMANDS``), done by the chat screen.

Each ``cmd_<name>`` takes the text after the command. Without arguments, commands that take text open the same
editor as their key; with arguments they act at once (``/rename Trip plans``, ``/set temperature 0.2``).
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from ..commands import CommandError
from ..training.summary import finish_summary, progress_line
from .help import HelpScreen
from .runs_list import RunsScreen

if TYPE_CHECKING:
    from sessions import Message

    from .chat import ChatScreen

RATINGS = {"+": 1, "up": 1, "-": -1, "down": -1, "0": 0, "clear": 0}
SWITCH = {"on": True, "yes": True, "off": False, "no": False}


class ChatCommands:
    def __init__(self, screen: ChatScreen) -> None:
        self.screen = screen

    async def cmd_help(self, args: str) -> None:
        self.screen.app.push_screen(HelpScreen())

    async def cmd_new(self, args: str) -> None:
        await self.screen.action_new_chat()

    async def cmd_list(self, args: str) -> None:
        if args and not args.isdigit():
            raise CommandError("/list [N]: N is how many conversations, e.g. /list 20")
        sidebar = self.screen.sidebar
        sidebar.display = True
        conversations = sidebar.conversations
        while args and conversations.loaded_count < int(args) and conversations.load_more():
            pass
        conversations.focus()
        count = self.screen.store.count_conversations()
        self.screen.notify(f"{count} conversations, newest first: Enter opens the highlighted one.")

    async def cmd_open(self, args: str) -> None:
        if not args.isdigit():
            raise CommandError("/open ID: ID is a conversation number (shown as #ID in the list)")
        if self.screen.require_idle("open another conversation"):
            await self.screen.open_conversation(int(args))

    async def cmd_rename(self, args: str) -> None:
        if not args:
            self.screen.action_rename()
        elif self.screen.conversation is None:
            raise CommandError("nothing to rename yet: send a first message")
        else:
            self.screen.rename(args)

    async def cmd_delete(self, args: str) -> None:
        self.screen.action_delete()

    async def cmd_model(self, args: str) -> None:
        if args:
            self.screen.switch_model(args)
        else:
            self.screen.action_switch_model()

    async def cmd_system(self, args: str) -> None:
        if not args:
            self.screen.action_system_prompt()
        else:
            await self.screen.set_system_prompt("" if args == "-" else args)

    async def cmd_set(self, args: str) -> None:
        if not args:
            self.screen.action_params()
            return
        name, _, value = args.partition(" ")
        params = self.screen.params
        if not value.strip():
            if not hasattr(params, name):
                raise CommandError(f"unknown setting {name!r}; settings: {', '.join(params.to_dict())}")
            self.screen.notify(f"{name} = {getattr(params, name)}")
            return
        try:
            updated = params.with_value(name, value.strip())
        except ValueError as exc:
            raise CommandError(f"/set {name}: {exc}") from exc
        self.screen.set_params(updated)

    async def cmd_retry(self, args: str) -> None:
        await self.screen.action_regenerate()

    async def cmd_edit(self, args: str) -> None:
        if not args:
            self.screen.action_edit_last()
            return
        last = next((m for m in reversed(self.screen.branch) if m.role == "user"), None)
        if last is None:
            raise CommandError("no message of yours to edit yet")
        await self.screen.edit_message(last, args)

    async def cmd_rate(self, args: str) -> None:
        if args.lower() not in RATINGS:
            raise CommandError("/rate +|-|0: + rates the last reply up, - down, 0 clears")
        self._require_target_reply("rate")
        self.screen.rate(RATINGS[args.lower()])

    async def cmd_correct(self, args: str) -> None:
        if not args:
            self.screen.action_correct()
            return
        self.screen.correct(self._require_target_reply("correct"), args)

    def _require_target_reply(self, doing: str) -> Message:
        """The reply a command means; else CommandError, so the command stays in the box to send again later."""
        reply = self.screen.target_reply()
        if reply is None:
            raise CommandError(self.screen.no_target_reply(doing))
        return reply

    async def cmd_copy(self, args: str) -> None:
        self.screen.action_copy()

    async def cmd_exclude(self, args: str) -> None:
        if args and args.lower() not in SWITCH:
            raise CommandError("/exclude [on|off]: on leaves this conversation out of training, off puts it back")
        self.screen.set_excluded(SWITCH[args.lower()] if args else None)

    async def cmd_export(self, args: str) -> None:
        if not args:
            self.screen.action_export()
            return
        try:
            argv = shlex.split(args)
        except ValueError as exc:
            raise CommandError(f"/export: {exc}") from exc
        self.screen.export(argv)

    async def cmd_train(self, args: str) -> None:
        try:
            argv = shlex.split(args)
        except ValueError as exc:
            raise CommandError(f"/train: {exc}") from exc
        self.screen.training.train(argv, self.screen.current_model)

    async def cmd_runs(self, args: str) -> None:
        training = self.screen.training
        await training.poll()
        action, _, name = args.partition(" ")
        if action == "cancel":
            training.cancel(training.run_watch.find(name.strip() or None))
            return
        if args:
            run = training.run_watch.find(args)
            progress = training.run_watch.progress_of(run)
            self.screen.notify(progress_line(run.name, progress) if progress else finish_summary(run), timeout=10)
            return
        runs = [(run, training.run_watch.progress_of(run)) for run in self.screen.store.list_training_runs()]
        self.screen.app.push_screen(RunsScreen(runs, self.screen.store, self.screen.home), self.screen._model_chosen)

    async def cmd_quit(self, args: str) -> None:
        self.screen.app.exit()

