"""The REPL's side of the slash commands: one handler per typed action of ``tui_chat.chat.commands``.

The chat core decides; a handler here asks at the prompt for what the user left out (`/correct` with no text), calls
the core, and prints the outcome.
"""

from __future__ import annotations

import base64
from functools import singledispatchmethod
from typing import TYPE_CHECKING

from rich.markdown import Markdown
from rich.table import Table
from rich.text import Text

from sessions import Message, minute_text
from trainer.model_names import engine_name

from tui_chat.chat import commands
from tui_chat.chat.commands import (
    Action, Compare, Copy, Correct, Delete, Edit, Exclude, Export, Help, ListConversations, New, Open, Quit, Rate, Rename,
    Retry, Runs, SetParam, SwitchModel, SystemPrompt, Train,
)
from tui_chat.chat.compare import CompareError
from tui_chat.chat.export import run_export
from tui_chat.training.summary import finish_summary, progress_line, run_line, win_rate_of

if TYPE_CHECKING:
    from tui_chat.repl.app import Repl

KEYS = (
    ("Enter", "send"),
    ("Alt+Enter, or Esc then Enter", "new line (pasting keeps the pasted lines)"),
    ("Ctrl+X Ctrl+E", "write the message in $EDITOR"),
    ("Tab", "complete a /command, a model name or a setting"),
    ("Up, Down", "history (kept across sessions)"),
    ("Ctrl+C", "stop the reply (the partial reply is kept); at the prompt: clear the line"),
    ("Ctrl+D", "leave"),
)
LIST_DEFAULT = 10  # conversations shown by /list
SHOWN_ON_OPEN = 6  # messages of an opened conversation printed as a reminder
COPY_FILE = "last-copy.md"  # /copy also writes the text here in the data home (no clipboard over plain ssh)
RATED = {1: "rated up", -1: "rated down", 0: "rating cleared"}
PICK_QUESTION = "which is better? 1 = A, 2 = B, n = neither (then write the ideal answer), Enter = no pick › "


class ReplCommands:
    """Carries out a parsed slash command in the REPL."""

    def __init__(self, repl: Repl) -> None:
        self.repl = repl
        self.session = repl.session
        self.store = repl.store

    @singledispatchmethod
    def run(self, action: Action) -> None:
        raise TypeError(f"the REPL has no handler for {action!r}")

    @run.register
    def _help(self, action: Help) -> None:
        table = Table.grid(padding=(0, 2))
        for command in commands.COMMANDS:
            also = f" (also {', '.join('/' + alias for alias in command.aliases)})" if command.aliases else ""
            table.add_row(Text(command.usage, style="bold"), Text(command.help + also))
        table.add_row("", "")
        for keys, text in KEYS:
            table.add_row(Text(keys, style="bold"), Text(text))
        self.repl.console.print(table)

    @run.register
    def _new(self, action: New) -> None:
        self.session.new()
        self.repl.info("new conversation: it is saved with your first message")

    @run.register
    def _list(self, action: ListConversations) -> None:
        conversations = self.store.list_conversations(limit=action.limit or LIST_DEFAULT)
        if not conversations:
            self.repl.info("no conversations yet")
            return
        table = Table("", "id", "updated", "model", "title", box=None, pad_edge=False)
        for conversation in conversations:
            current = "*" if conversation.id == self.session.conversation_id else ""
            updated = minute_text(conversation.updated_at)
            table.add_row(
                current, str(conversation.id), updated, Text(conversation.model or ""), Text(conversation.title)
            )
        self.repl.console.print(table)

    @run.register
    def _open(self, action: Open) -> None:
        self.session.open(action.conversation_id)
        self.show_conversation()

    def show_conversation(self) -> None:
        """The current conversation's title and its last few messages, as a reminder of where it was."""
        conversation = self.session.require_conversation()
        branch = self.session.branch()
        self.repl.info(f"conversation {conversation.id}: {conversation.title} ({len(branch)} messages)")
        if len(branch) > SHOWN_ON_OPEN:
            self.repl.info(f"… {len(branch) - SHOWN_ON_OPEN} earlier messages")
        for message in branch[-SHOWN_ON_OPEN:]:
            self.show_message(message)

    def show_message(self, message: Message) -> None:
        console = self.repl.console
        if message.role == "assistant":
            console.print(message.content, markup=False) if self.repl.plain else console.print(Markdown(message.content))
            if message.status != "complete":
                self.repl.info(f"({message.status})")
        else:
            console.print(f"{message.role} › {message.content}", markup=False, style="bold")

    @run.register
    def _rename(self, action: Rename) -> None:
        current = self.session.require_conversation()
        title = action.title or self.repl.ask("title › ", default=current.title)
        if not title.strip():
            self.repl.info("unchanged")
            return
        self.repl.info(f"renamed to {self.session.rename(title).title}")

    @run.register
    def _delete(self, action: Delete) -> None:
        conversation = self.session.require_conversation()
        answer = self.repl.ask(f"delete conversation {conversation.id} ({conversation.title})? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            self.repl.info("kept")
            return
        self.session.delete()
        self.repl.info(f"deleted conversation {conversation.id}; the next message starts a new one")

    @run.register
    def _model(self, action: SwitchModel) -> None:
        if action.spec is not None:
            self.session.switch_model(action.spec)
            return
        info = self.session.engine_info()
        if info is not None:
            self.repl.info(f"model {info.name} on {info.device} ({info.dtype})")
        else:
            self.repl.info(f"model {engine_name(self.session.model)} (loads with your next message)")
        self.repl.info("switch with /model SPEC: " + ", ".join(self.repl.model_names()) + ", a directory or a Hub id")

    @run.register
    def _system(self, action: SystemPrompt) -> None:
        if action.clear or action.text is not None:
            self.session.set_system_prompt(action.text)
        prompt = self.session.system_prompt
        self.repl.info(f"system prompt: {prompt}" if prompt else "no system prompt (the model's default applies)")

    @run.register
    def _set(self, action: SetParam) -> None:
        if action.name is not None and action.value is not None:
            self.session.set_param(action.name, action.value)
        for name, value in self.session.params.to_dict().items():
            if action.name is None or action.name == name:
                self.repl.info(f"{name} = {value}")

    @run.register
    def _retry(self, action: Retry) -> None:
        message = self.repl.stream(self.session.retry)
        versions = self.store.siblings(message.id)
        self.repl.info(f"version {len(versions)} of {len(versions)}")

    @run.register
    def _edit(self, action: Edit) -> None:
        text = action.text or self.repl.ask("edit › ", default=self.session.message_to_edit().content)
        if not text.strip():
            self.repl.info("unchanged")
            return
        self.repl.stream(lambda on_chunk: self.session.edit(text, on_chunk))

    @run.register
    def _rate(self, action: Rate) -> None:
        message = self.session.rate(action.value, reply=self.session.target_reply("rate"))
        self.repl.info(RATED[message.rating])

    @run.register
    def _correct(self, action: Correct) -> None:
        reply = self.session.target_reply("correct")
        text = action.text
        if text is None and not action.clear:
            text = self.repl.ask("ideal answer (Alt+Enter for a new line) › ", default=reply.correction or reply.content)
            if not text.strip():
                self.repl.info("unchanged")
                return
        message = self.session.correct(text, reply=reply)
        self.repl.info("correction saved: it is used as the target in training" if message.correction
                       else "correction cleared")

    @run.register
    def _compare(self, action: Compare) -> None:
        comparison = self.session.compare(action.spec, blind=action.blind)
        console = self.repl.console
        if comparison.blind:
            self.repl.info("getting both models ready (which is which stays hidden until you pick)…")
        comparison.prepare()
        for index in range(2):
            console.print(Text(f"answer {comparison.label(index)}", style="bold"), highlight=False)
            try:
                reply = self.repl.stream(lambda on_chunk: self.session.stream_answer(comparison, index, on_chunk),
                                         model=comparison.label(index))
            except BaseException:
                comparison.skip()  # a failed answer: the conversation goes on from the reply it had
                raise
            if reply.status != "complete":
                comparison.skip()
                self.repl.info(f"{comparison.label(index)} {reply.status}: no pick. " + comparison.outcome())
                return
        while True:
            answer = self.repl.ask(PICK_QUESTION).strip().lower()
            if not answer:
                comparison.skip()
                break
            if answer in ("n", "neither"):
                first = comparison.replies[0]
                ideal = self.repl.ask("ideal answer (Enter: none; Alt+Enter for a new line) › ",
                                      default=first.content if first is not None else "")
                comparison.pick("neither", ideal)
                break
            try:
                comparison.pick(answer)
                break
            except CompareError as exc:
                self.repl.error(str(exc))
        self.repl.info(comparison.outcome())

    @run.register
    def _copy(self, action: Copy) -> None:
        text = self.session.target_reply("copy").content
        home = self.repl.home
        path = home.ensure().root / COPY_FILE
        path.write_text(text, encoding="utf-8")
        home.secure_file(path)
        console = self.repl.console
        if not self.repl.plain and console.is_terminal:
            # OSC 52: the terminal puts the text on the clipboard, which also works over ssh where supported.
            encoded = base64.b64encode(text.encode()).decode()
            console.file.write(f"\x1b]52;c;{encoded}\x07")
            console.file.flush()
        self.repl.info(f"copied the last reply (also written to {path})")

    @run.register
    def _exclude(self, action: Exclude) -> None:
        excluded = self.session.set_excluded(action.value)
        self.repl.info("left out of training" if excluded else "included in training")

    @run.register
    def _export(self, action: Export) -> None:
        argv = action.argv
        if argv is None:
            answer = self.repl.ask("export options (Enter: the defaults; --help lists them) › ")
            argv = commands.split_options(answer, "/export")
        self.repl.info(run_export(self.store, self.repl.home, argv))

    @run.register
    def _train(self, action: Train) -> None:
        # Imported on use: launching reads the trainer's settings.
        from tui_chat.training.launch import start_training
        from tui_chat.training.options import train_help, wants_help
        from tui_chat.training.plan import plan_training

        console = self.repl.console
        if wants_help(action.argv):
            console.print(train_help(), markup=False, highlight=False)
            return
        self.repl.info("exporting a snapshot of your conversations and counting tokens…")
        plan = plan_training(self.store, self.repl.home, action.argv, current_model=self.session.model)
        for line in plan.preview_lines():
            console.print(line, markup=False, highlight=False)
        if not plan.options.yes:
            answer = self.repl.ask("start training? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                plan.discard()
                self.repl.info("not started")
                return
        monitor = start_training(self.store, self.repl.home, plan)
        self.repl.runs.follow(monitor)
        where = "/runs shows" if self.repl.plain else "the bottom bar shows"
        self.repl.info(
            f"training {monitor.name} in the background: keep chatting. {where.capitalize()} its progress, /runs "
            f"cancel stops it. Log: {monitor.log_path}"
        )

    @run.register
    def _runs(self, action: Runs) -> None:
        runs = self.repl.runs
        self.repl.tell_ended_runs(runs.poll())
        if action.cancel:
            from tui_chat.training.launch import cancel_run

            run = cancel_run(self.store, runs.find(action.name))
            self.repl.info(
                f"stopping {run.name}: it finishes its current step and saves a checkpoint "
                "(/runs cancel again stops it at once, without one)"
            )
            return
        if action.name:
            run = runs.find(action.name)
            progress = runs.progress_of(run)
            self.repl.info(progress_line(run.name, progress) if progress
                           else finish_summary(run, win_rate_of(self.store, run)))
            self.repl.info(f"base {run.base_model} · {len(run.conversation_ids)} conversations · dataset "
                           f"{run.dataset_path} · log {run.log_path}")
            return
        listed = self.store.list_training_runs()
        if not listed:
            self.repl.info("no training runs yet: /train starts one")
            return
        for run in listed:
            self.repl.console.print(run_line(run, runs.progress_of(run)), markup=False, highlight=False)

    @run.register
    def _quit(self, action: Quit) -> None:
        self.repl.done = True
