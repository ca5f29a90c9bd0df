"""`tui-chat repl`: a prompt-toolkit chat for any terminal (ssh included), or plain lines when there is no terminal.

The REPL keeps its state in a ``ChatSession`` (conversation, model, settings) and has one thin handler per slash
command of ``commands.COMMANDS``: a store or session call, then printing. Replies stream through
``MarkdownStream`` (a line rendered once, when it is finished); Ctrl+C while a reply streams stops it and keeps
the partial reply (the terminal does not echo it as ^C meanwhile), Ctrl+C at the prompt clears the line, Ctrl+D
leaves.
"""

from __future__ import annotations

import base64
import sys
import time
from typing import IO, Callable, Iterable

from prompt_toolkit import PromptSession
from prompt_toolkit.application import run_in_terminal
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.output import Output
from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from sessions import Message, StoreError, TrainingRun, minute_text
from trainer.home import DataHome

from tui_chat.chat import commands
from tui_chat.chat.session import ChatError, ChatSession
from tui_chat.chat.commands import CommandError
from tui_chat.inference.contract import Chunk, EngineError, GenerationParams, GenerationStats, TextDelta
from tui_chat.repl.markdown_stream import MarkdownStream, PlainStream
from tui_chat.repl.terminal_echo import control_keys_unechoed
from tui_chat.training.monitor import RunWatch
from tui_chat.training.summary import finish_summary, progress_line, run_line

KEYS = (
    ("Enter", "send"),
    ("Alt+Enter, or Esc then Enter", "new line (pasting keeps the pasted lines)"),
    ("Ctrl+X Ctrl+E", "write the message in $EDITOR"),
    ("Tab", "complete a /command, a model name or a setting"),
    ("Up, Down", "history (kept across sessions)"),
    ("Ctrl+C", "stop the reply (the partial reply is kept); at the prompt: clear the line"),
    ("Ctrl+D", "leave"),
)
TOOLBAR_KEYS = "Enter send · Alt+Enter new line · Ctrl+C stop · Ctrl+D quit · /help"
ARGUMENT_CHOICES = {"/rate": ["+", "-", "0"], "/exclude": ["on", "off"]}
LIST_DEFAULT = 10  # conversations shown by /list
SHOWN_ON_OPEN = 6  # messages of an opened conversation printed as a reminder
COPY_FILE = "last-copy.md"  # /copy also writes the text here in the data home (no clipboard over plain ssh)
RUNS_POLL_S = 0.5  # how often the bottom bar reads a training run's log while the prompt waits


def repl_console(plain: bool, *, stderr: bool = False) -> Console:
    """Rich output for a terminal; plain text (no colours, no wrapping) for pipes."""
    if plain:
        return Console(no_color=True, highlight=False, emoji=False, soft_wrap=True, force_terminal=False, stderr=stderr)
    return Console(highlight=False, stderr=stderr)


def local_model_names(home: DataHome) -> list[str]:
    """``default`` and every model the data home holds (for /model completion)."""
    from trainer.models import list_local_models  # imports torch: only once someone completes a model name

    names = ["default"]
    names.extend(model.name for model in list_local_models(home.models) if model.name not in names)
    return names


class ReplCompleter(Completer):
    """Completes slash commands, then the argument of the commands that take a known set of values."""

    def __init__(self, model_names: Callable[[], list[str]]) -> None:
        self.model_names = model_names

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        text = document.text_before_cursor
        if not commands.is_command(text) or "\n" in text:
            return
        head, space, argument = text.partition(" ")
        if not space:
            for name in commands.names():
                if name.startswith(head.lower()):
                    command = commands.parse(name).command
                    takes_arguments = " " in command.usage
                    yield Completion(
                        name + (" " if takes_arguments else ""),
                        start_position=-len(text),
                        display=name,
                        display_meta=command.help,
                    )
            return
        for choice in self._argument_choices(head.lower()):
            if choice.startswith(argument):
                yield Completion(choice, start_position=-len(argument))

    def _argument_choices(self, head: str) -> list[str]:
        if head == "/model":
            return self.model_names()
        if head == "/set":
            return list(GenerationParams().to_dict())
        return ARGUMENT_CHOICES.get(head, [])


def _key_bindings() -> KeyBindings:
    bindings = KeyBindings()

    @bindings.add("enter")
    def _send(event: KeyPressEvent) -> None:
        buffer = event.current_buffer
        if buffer.complete_state is not None and buffer.complete_state.current_completion is not None:
            buffer.complete_state = None  # Enter on a highlighted completion takes it; a second Enter sends
            return
        buffer.validate_and_handle()

    @bindings.add("escape", "enter")
    def _new_line(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    return bindings


class Repl:
    """The read-eval-print loop around a ChatSession. ``prompt_input``/``prompt_output`` let tests drive it;
    ``input_file`` (stdin) gives the lines without a terminal, and is the terminal whose ^C echo a reply turns off."""

    def __init__(
        self,
        session: ChatSession,
        home: DataHome,
        console: Console,
        *,
        plain: bool = False,
        prompt_input: Input | None = None,
        prompt_output: Output | None = None,
        input_file: IO[str] | None = None,
        model_names: Callable[[], list[str]] | None = None,
        status_console: Console | None = None,
    ) -> None:
        self.session = session
        self.store = session.store
        self.home = home
        self.console = console
        # Stats and error lines: stderr in plain mode, so a script reading stdout gets replies and command output.
        self.status_console = status_console or console
        self.plain = plain
        self.prompt_input = prompt_input
        self.prompt_output = prompt_output
        self.input_file = input_file or sys.stdin
        self.done = False
        self._prompt: PromptSession | None = None
        self._model_names = model_names or (lambda: local_model_names(home))
        self.runs = RunWatch(self.store)  # training runs followed: progress in the bottom bar, a summary at the end
        self._runs_polled_at = 0.0

    # ---- the loop --------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Read and handle input until /quit or Ctrl+D."""
        if not self.plain:
            self.console.print(
                f"[bold]tui-chat[/] · model [cyan]{escape(self.session.model)}[/] (loads with your first message) · "
                "/help for commands · Ctrl+D to leave",
                highlight=False,
            )
            if self.session.conversation_id is not None:  # started with --conversation or --continue
                self.show_conversation()
        self.catch_up_runs()
        while not self.done:
            self.tell_ended_runs(self.runs.poll())
            try:
                text = self.read_message()
            except KeyboardInterrupt:
                continue  # Ctrl+C at the prompt clears the line, as in a shell
            except EOFError:
                break
            self.handle(text)

    def read_message(self) -> str:
        """The next message: a prompt in a terminal, a line of stdin otherwise (EOFError at the end)."""
        if self.plain:
            line = self.input_file.readline()
            if not line:
                raise EOFError
            return line.rstrip("\n")
        return self.prompt_session().prompt()

    def prompt_session(self) -> PromptSession:
        if self._prompt is None:
            self.home.ensure()
            history_path = self.home.history_path
            history_path.touch()
            self.home.secure_file(history_path)  # the history holds what you typed: private like the chats
            self._prompt = PromptSession(
                message=[("class:prompt", "› ")],
                multiline=True,
                prompt_continuation=lambda width, line_number, wrap_count: "· ".rjust(width),
                key_bindings=_key_bindings(),
                history=FileHistory(str(history_path)),
                completer=ReplCompleter(self._model_names),
                complete_in_thread=True,  # listing local models imports torch once: keep typing responsive
                complete_while_typing=True,
                enable_open_in_editor=True,
                bottom_toolbar=self._toolbar,
                input=self.prompt_input,
                output=self.prompt_output,
                refresh_interval=RUNS_POLL_S,  # redraws the bottom bar: a training run's progress moves on its own
            )
        return self._prompt

    def _toolbar(self) -> str:
        where = f"conversation {self.session.conversation_id}" if self.session.conversation_id else "new conversation"
        line = f" {self.session.model} · {where} │ {TOOLBAR_KEYS}"
        training = self._training_lines()
        return "\n".join([*training, line])

    def _training_lines(self) -> list[str]:
        """One progress line per run being followed; a run that ended is told above the prompt."""
        now = time.monotonic()
        if now - self._runs_polled_at >= RUNS_POLL_S:
            self._runs_polled_at = now
            ended = self.runs.poll()
            if ended:
                run_in_terminal(lambda: self.tell_ended_runs(ended))
        return [" " + progress_line(monitor.name, monitor.progress) for monitor in self.runs.active]

    # ---- training runs ---------------------------------------------------------------------------------------

    def catch_up_runs(self) -> None:
        """At start: tell how the runs that went on while the REPL was closed ended; follow those still going."""
        for run in self.runs.catch_up():
            self.tell_ended_runs([run], while_away=True)
        for monitor in self.runs.active:
            self.info(f"{monitor.name} is still training (the bottom bar shows its progress; /runs lists runs)")

    def tell_ended_runs(self, runs: list[TrainingRun], *, while_away: bool = False) -> None:
        for run in runs:
            style = {"finished": "bold green", "failed": "red"}.get(run.status, "yellow")
            prefix = "while you were away: " if while_away else ""
            self.console.print(Text(prefix + finish_summary(run), style=style), highlight=False)

    def ask(self, question: str, default: str = "") -> str:
        """A one-off answer (a confirmation, a correction); empty on Ctrl+C or Ctrl+D."""
        if self.plain:
            self.console.print(question, end="", markup=False)
            return self.input_file.readline().rstrip("\n")
        answer_session: PromptSession = PromptSession(
            multiline=True, key_bindings=_key_bindings(), input=self.prompt_input, output=self.prompt_output
        )
        try:
            return answer_session.prompt(question, default=default)
        except (KeyboardInterrupt, EOFError):
            return ""

    def handle(self, text: str) -> None:
        """One input: a slash command, or a message to the model. User errors print as one line."""
        if not text.strip():
            return
        try:
            if commands.is_command(text):
                parsed = commands.parse(text)
                getattr(self, parsed.command.handler_name)(parsed.args)
            else:
                self.send(text[1:] if text.startswith("//") else text)  # "//x" sends "/x" as a message
        except (ChatError, CommandError, EngineError, StoreError) as exc:
            self.error(str(exc))
        except KeyboardInterrupt:
            self.error("cancelled")  # Ctrl+C during a model load: nothing half-done is kept

    def error(self, line: str) -> None:
        self.status_console.print(Text.assemble(("error:", "red"), " ", line), highlight=False)

    def info(self, line: str) -> None:
        self.console.print(Text(line, style="dim"), highlight=False)

    # ---- replies ---------------------------------------------------------------------------------------------

    def send(self, text: str) -> Message:
        return self.stream(lambda on_chunk: self.session.send(text, on_chunk))

    def stream(self, action: Callable[[Callable[[Chunk], None]], Message]) -> Message:
        """Run a reply action, printing its text as it streams, then a line of stats."""
        printer = PlainStream(self.console.file) if self.plain else MarkdownStream(self.console)
        stats: list[GenerationStats] = []

        def on_chunk(chunk: Chunk) -> None:
            if isinstance(chunk, TextDelta):
                printer.feed(chunk.text)
            else:
                stats.append(chunk)

        try:
            # input_file is the keyboard's terminal (stdin) in both modes: Ctrl+C pressed there must not print ^C.
            with control_keys_unechoed(self.input_file), printer:
                message = action(on_chunk)
        finally:
            if stats:
                engine = self.session.engine
                line = _describe(stats[-1], engine.name if engine else self.session.model)
                self.status_console.print(Text(line, style="dim"), highlight=False)
        return message

    # ---- the commands (one per entry of commands.COMMANDS) ---------------------------------------------------

    def cmd_help(self, args: str) -> None:
        table = Table.grid(padding=(0, 2))
        for command in commands.COMMANDS:
            also = f" (also {', '.join('/' + alias for alias in command.aliases)})" if command.aliases else ""
            table.add_row(Text(command.usage, style="bold"), Text(command.help + also))
        table.add_row("", "")
        for keys, text in KEYS:
            table.add_row(Text(keys, style="bold"), Text(text))
        self.console.print(table)

    def cmd_new(self, args: str) -> None:
        self.session.new()
        self.info("new conversation: it is saved with your first message")

    def cmd_list(self, args: str) -> None:
        try:
            limit = int(args) if args else LIST_DEFAULT
        except ValueError:
            raise CommandError("/list [N]: N is how many conversations to show") from None
        conversations = self.store.list_conversations(limit=limit)
        if not conversations:
            self.info("no conversations yet")
            return
        table = Table("", "id", "updated", "model", "title", box=None, pad_edge=False)
        for conversation in conversations:
            current = "*" if conversation.id == self.session.conversation_id else ""
            updated = minute_text(conversation.updated_at)
            table.add_row(
                current, str(conversation.id), updated, Text(conversation.model or ""), Text(conversation.title)
            )
        self.console.print(table)

    def cmd_open(self, args: str) -> None:
        if not args.isdigit():
            raise CommandError("/open ID: ID is a number from /list")
        self.session.open(int(args))
        self.show_conversation()

    def show_conversation(self) -> None:
        """The current conversation's title and its last few messages, as a reminder of where it was."""
        conversation = self.session.conversation()
        branch = self.store.active_branch(conversation.id)
        self.info(f"conversation {conversation.id}: {conversation.title} ({len(branch)} messages)")
        if len(branch) > SHOWN_ON_OPEN:
            self.info(f"… {len(branch) - SHOWN_ON_OPEN} earlier messages")
        for message in branch[-SHOWN_ON_OPEN:]:
            self.show_message(message)

    def show_message(self, message: Message) -> None:
        if message.role == "assistant":
            if self.plain:
                self.console.print(message.content, markup=False)
            else:
                self.console.print(Markdown(message.content))
            if message.status != "complete":
                self.info(f"({message.status})")
        else:
            self.console.print(f"{message.role} › {message.content}", markup=False, style="bold")

    def cmd_rename(self, args: str) -> None:
        if not args:
            raise CommandError("/rename TITLE")
        conversation = self.store.rename_conversation(self.session.conversation().id, args)
        self.info(f"renamed to {conversation.title}")

    def cmd_delete(self, args: str) -> None:
        conversation = self.session.conversation()
        answer = self.ask(f"delete conversation {conversation.id} ({conversation.title})? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            self.info("kept")
            return
        self.store.delete_conversation(conversation.id)
        self.session.new()
        self.info(f"deleted conversation {conversation.id}; the next message starts a new one")

    def cmd_model(self, args: str) -> None:
        if not args:
            info = self.session.engine_info()
            if info is not None:
                self.info(f"model {self.session.model}: {info.name} on {info.device} ({info.dtype})")
            else:
                self.info(f"model {self.session.model} (loads with your next message)")
            self.info("switch with /model SPEC: " + ", ".join(self._model_names()) + ", a directory or a Hub id")
            return
        self.session.switch_model(args)

    def cmd_system(self, args: str) -> None:
        if args:
            self.session.set_system_prompt(None if args == "-" else args)
        prompt = self.session.system_prompt
        self.info(f"system prompt: {prompt}" if prompt else "no system prompt (the model's default applies)")

    def cmd_set(self, args: str) -> None:
        if args:
            name, _, value = args.partition(" ")
            if not value.strip():
                raise CommandError("/set NAME VALUE, e.g. /set temperature 0.2")
            try:
                self.session.set_param(name, value.strip())
            except ValueError as exc:
                raise CommandError(str(exc)) from None
        for name, value in self.session.params.to_dict().items():
            self.info(f"{name} = {value}")

    def cmd_retry(self, args: str) -> None:
        message = self.stream(self.session.retry)
        versions = self.store.siblings(message.id)
        self.info(f"version {len(versions)} of {len(versions)}")

    def cmd_edit(self, args: str) -> None:
        text = args or self.ask("edit › ", default=self.session.last_user_message().content)
        if not text.strip():
            self.info("unchanged")
            return
        self.stream(lambda on_chunk: self.session.edit(text, on_chunk))

    def cmd_rate(self, args: str) -> None:
        ratings = {"+": 1, "up": 1, "1": 1, "+1": 1, "-": -1, "down": -1, "-1": -1, "0": 0, "clear": 0}
        if args not in ratings:
            raise CommandError("/rate +|-|0 (up, down, or clear)")
        message = self.store.set_rating(self.session.last_reply().id, ratings[args])
        self.info({1: "rated up", -1: "rated down", 0: "rating cleared"}[message.rating])

    def cmd_correct(self, args: str) -> None:
        reply = self.session.last_reply()
        text = args or self.ask("ideal answer (Alt+Enter for a new line) › ", default=reply.correction or reply.content)
        if not text.strip():
            self.info("unchanged")
            return
        self.store.set_correction(reply.id, None if text == "-" else text)
        self.info("correction cleared" if text == "-" else "correction saved: it is used as the target in training")

    def cmd_copy(self, args: str) -> None:
        text = self.session.last_reply().content
        path = self.home.ensure().root / COPY_FILE
        path.write_text(text, encoding="utf-8")
        self.home.secure_file(path)
        if not self.plain and self.console.is_terminal:
            # OSC 52: the terminal puts the text on the clipboard, which also works over ssh where supported.
            encoded = base64.b64encode(text.encode()).decode()
            self.console.file.write(f"\x1b]52;c;{encoded}\x07")
            self.console.file.flush()
        self.info(f"copied the last reply (also written to {path})")

    def cmd_exclude(self, args: str) -> None:
        conversation = self.session.conversation()
        if args not in ("", "on", "off"):
            raise CommandError("/exclude [on|off]")
        exclude = not conversation.exclude_from_training if not args else args == "on"
        self.store.update_conversation(conversation.id, exclude_from_training=exclude)
        self.info("left out of training" if exclude else "included in training")

    def cmd_export(self, args: str) -> None:
        import click

        from tui_chat.cli.sessions import run_export_command

        argv = commands.parse(f"/export {args}").argv()
        try:
            self.info(run_export_command(self.store, self.home, argv))
        except click.ClickException as exc:
            raise CommandError(exc.format_message()) from None

    def cmd_train(self, args: str) -> None:
        # Imported on use: the trainer's settings import torch.
        from tui_chat.training.launch import start_training
        from tui_chat.training.options import train_help, wants_help
        from tui_chat.training.plan import plan_training

        argv = commands.parse(f"/train {args}").argv()
        if wants_help(argv):
            self.console.print(train_help(), markup=False, highlight=False)
            return
        self.info("exporting a snapshot of your conversations and counting tokens…")
        plan = plan_training(self.store, self.home, argv, current_model=self.session.model)
        for line in plan.preview_lines():
            self.console.print(line, markup=False, highlight=False)
        if not plan.options.yes:
            answer = self.ask("start training? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                plan.discard()
                self.info("not started")
                return
        monitor = start_training(self.store, self.home, plan)
        self.runs.follow(monitor)
        where = "/runs shows" if self.plain else "the bottom bar shows"
        self.info(
            f"training {monitor.name} in the background: keep chatting. {where.capitalize()} its progress, /runs "
            f"cancel stops it. Log: {monitor.log_path}"
        )

    def cmd_runs(self, args: str) -> None:
        self.tell_ended_runs(self.runs.poll())
        action, _, name = args.partition(" ")
        if action == "cancel":
            from tui_chat.training.launch import cancel_run

            run = cancel_run(self.store, self.runs.find(name.strip() or None))
            self.info(
                f"stopping {run.name}: it finishes its current step and saves a checkpoint "
                "(/runs cancel again stops it at once, without one)"
            )
            return
        if args:
            run = self.runs.find(args)
            progress = self.runs.progress_of(run)
            self.info(progress_line(run.name, progress) if progress else finish_summary(run))
            self.info(f"base {run.base_model} · {len(run.conversation_ids)} conversations · dataset "
                      f"{run.dataset_path} · log {run.log_path}")
            return
        runs = self.store.list_training_runs()
        if not runs:
            self.info("no training runs yet: /train starts one")
            return
        for run in runs:
            self.console.print(run_line(run, self.runs.progress_of(run)), markup=False, highlight=False)

    def cmd_quit(self, args: str) -> None:
        self.done = True


def _describe(stats: GenerationStats, model: str) -> str:
    """One line under a reply: model, tokens, speed, and why it ended if that is news."""
    parts = [model, f"{stats.new_tokens} tokens", f"{stats.tokens_per_s:.1f} tokens/s", f"{stats.duration_s:.1f} s"]
    if stats.finish_reason == "stopped":
        parts.append("stopped (the partial reply is kept)")
    elif stats.finish_reason == "length":
        parts.append("cut at max_new_tokens (/set max_new_tokens N for more)")
    if stats.dropped_messages:
        parts.append(f"{stats.dropped_messages} oldest messages left out to fit {stats.context_limit} tokens")
    return " · ".join(parts)
