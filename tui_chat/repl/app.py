"""`tui-chat repl`: a prompt-toolkit chat for any terminal (ssh included), or plain lines when there is no terminal.

The REPL keeps its state in a ``ChatSession`` (conversation, model, settings) and has one thin handler per slash
command of ``commands.COMMANDS``: a store or session call, then printing. Replies stream through
``MarkdownStream`` (a line rendered once, when it is finished); Ctrl+C while a reply streams stops it and keeps
the partial reply (the terminal does not echo it as ^C meanwhile), Ctrl+C at the prompt clears the line, Ctrl+D
leaves.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Callable

from prompt_toolkit import PromptSession
from prompt_toolkit.application import run_in_terminal
from prompt_toolkit.history import FileHistory
from prompt_toolkit.input import Input
from prompt_toolkit.output import Output
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from sessions import Message, StoreError, TrainingRun
from trainer.home import DataHome
from trainer.model_names import engine_name

from tui_chat.chat import commands
from tui_chat.chat.commands import CommandError
from tui_chat.chat.session import ChatSession
from tui_chat.inference.contract import Chunk, EngineError, GenerationStats, TextDelta
from tui_chat.repl.commands import ReplCommands
from tui_chat.repl.completion import ReplCompleter, key_bindings, local_model_names
from tui_chat.repl.markdown_stream import MarkdownStream, PlainStream
from tui_chat.repl.terminal_echo import control_keys_unechoed
from tui_chat.training.monitor import RunWatch
from tui_chat.training.summary import finish_summary, progress_line

TOOLBAR_KEYS = "Enter send · Alt+Enter new line · Ctrl+C stop · Ctrl+D quit · /help"
RUNS_POLL_S = 0.5  # how often the bottom bar reads a training run's log while the prompt waits


def repl_console(plain: bool, *, stderr: bool = False) -> Console:
    """Rich output for a terminal; plain text (no colours, no wrapping) for pipes."""
    if plain:
        return Console(no_color=True, highlight=False, emoji=False, soft_wrap=True, force_terminal=False, stderr=stderr)
    return Console(highlight=False, stderr=stderr)


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
        self.model_names = model_names or (lambda: local_model_names(home))
        self.runs = RunWatch(self.store)  # training runs followed: progress in the bottom bar, a summary at the end
        self._runs_polled_at = 0.0
        self.commands = ReplCommands(self)

    # ---- the loop --------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Read and handle input until /quit or Ctrl+D."""
        if not self.plain:
            self.console.print(
                f"[bold]tui-chat[/] · model [cyan]{escape(engine_name(self.session.model))}[/] (loads with your first message) · "
                "/help for commands · Ctrl+D to leave",
                highlight=False,
            )
            if self.session.conversation_id is not None:  # started with --conversation or --continue
                self.commands.show_conversation()
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
                key_bindings=key_bindings(),
                history=FileHistory(str(history_path)),
                completer=ReplCompleter(self.model_names),
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
        line = f" {engine_name(self.session.model)} · {where} │ {TOOLBAR_KEYS}"
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
            multiline=True, key_bindings=key_bindings(), input=self.prompt_input, output=self.prompt_output
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
                self.commands.run(commands.parse(text))
            else:
                self.send(commands.message_text(text))
        except (CommandError, EngineError, StoreError) as exc:
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

    def stream(self, action: Callable[[Callable[[Chunk], None]], Message], *, model: str | None = None) -> Message:
        """Run a reply action, printing its text as it streams, then a line of stats (naming ``model``, else the
        session's)."""
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
                model = model or (engine.name if engine else engine_name(self.session.model))
                line = _describe(stats[-1], model)
                self.status_console.print(Text(line, style="dim"), highlight=False)
        return message

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
