"""`tui-chat ask` and `tui-chat repl`: chatting from the command line.

Both take the same model and sampling options. Heavy imports (torch, prompt-toolkit) happen inside the commands
so `tui-chat --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import click

from sessions import Store, StoreError, memory_database

from tui_chat.chat.session import ChatSession, EngineLoader
from tui_chat.cli.context import CliContext, api_base_option, engine_options, pass_context
from tui_chat.chat.commands import CommandError
from tui_chat.inference.contract import EngineError, GenerationStats, TextDelta

EXIT_INTERRUPTED = 130  # the shell's code for "ended by Ctrl+C" (128 + SIGINT)

# Option name -> GenerationParams field, for the sampling options that override a conversation's settings.
PARAM_OPTIONS = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "repetition_penalty": "repetition_penalty",
    "max_tokens": "max_new_tokens",
    "seed": "seed",
}


def chat_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The model, sampling and conversation options shared by `ask` and `repl`."""
    options = [
        click.option(
            "-m",
            "--model",
            help="Model: `default` (the bundled SmolLM2-135M-Instruct), a trained run's name, a model or adapter "
            "directory, or a Hub id. Default: the conversation's model, else `default`.",
        ),
        click.option("-s", "--system", "system_prompt", help="System prompt (`-` for none)."),
        click.option("--temperature", type=float, help="Sampling temperature; 0 = greedy. [default: 0.7]"),
        click.option("--top-k", type=int, help="Sample from the K likeliest tokens; 0 = off. [default: 50]"),
        click.option("--top-p", type=float, help="Nucleus sampling mass, in (0, 1]. [default: 0.9]"),
        click.option("--max-tokens", type=int, help="Most tokens in the reply. [default: 512]"),
        click.option("--seed", type=int, help="Random seed, for repeatable sampling."),
        click.option("--repetition-penalty", type=float, help="Penalty for repeated tokens; 1 = off. [default: 1.1]"),
        click.option(
            "--conversation",
            "conversation_id",
            type=int,
            metavar="ID",
            help="Continue conversation ID (its model, system prompt and settings apply unless overridden).",
        ),
        click.option("-c", "--continue", "continue_latest", is_flag=True, help="Continue the newest conversation."),
    ]
    command = api_base_option(engine_options(command))  # listed after these in --help
    for option in reversed(options):
        command = option(command)
    return command


@contextmanager
def user_errors() -> Iterator[None]:
    """Problems the user can fix become one line (exit 1) instead of a traceback."""
    try:
        yield
    except (CommandError, EngineError, StoreError) as exc:
        raise click.ClickException(str(exc)) from exc


def copy_conversation(source: Store, target: Store, conversation_id: int) -> int:
    """Copy a conversation's active branch into ``target`` (``ask --no-save`` continuing a saved conversation)."""
    conversation = source.get_conversation(conversation_id)
    copy = target.create_conversation(
        conversation.title,
        model=conversation.model,
        system_prompt=conversation.system_prompt,
        params=conversation.params,
    )
    for message in source.active_branch(conversation_id):
        target.add_message(copy.id, message.role, message.content, model=message.model, status=message.status)
    return copy.id


def open_session(ctx: CliContext, store: Store, options: dict[str, Any], load_engine: EngineLoader) -> ChatSession:
    """A ChatSession on ``store`` from the command's options: the conversation to continue, then the overrides."""
    session = ChatSession(store, ctx.engine_factory(options), load_engine=load_engine)
    if options["conversation_id"] is not None and options["continue_latest"]:
        raise click.UsageError("use --conversation ID or --continue, not both")
    conversation_id = options["conversation_id"]
    if options["continue_latest"]:
        latest = ctx.store.latest_conversation()
        if latest is None:
            raise click.ClickException("no conversation to continue yet; leave out --continue to start one")
        conversation_id = latest.id
    if conversation_id is not None:
        if store is not ctx.store:
            conversation_id = copy_conversation(ctx.store, store, conversation_id)
        session.open(conversation_id)
    overrides = {field: options[name] for name, field in PARAM_OPTIONS.items() if options[name] is not None}
    try:
        session.configure(model=options["model"], system_prompt=options["system_prompt"], params=overrides)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    return session


def read_question(question: str | None) -> str:
    """The question from the argument, or from stdin when it is missing or `-`."""
    if question is None or question == "-":
        stdin = sys.stdin
        if question is None and stdin.isatty():
            raise click.UsageError('give a question: tui-chat ask "..." (or pipe one in: echo ... | tui-chat ask)')
        question = stdin.read()
    if not question.strip():
        raise click.UsageError("the question is empty")
    return question.strip()


@click.command("ask")
@click.argument("question", required=False)
@chat_options
@click.option("--no-save", is_flag=True, help="Do not keep this exchange (nothing is written to the chat store).")
@pass_context
def ask_command(ctx: CliContext, question: str | None, no_save: bool, **options: Any) -> None:
    """Ask one QUESTION; the reply streams to stdout and the exchange is saved.

    QUESTION can be piped in instead (or given as `-`). Loading progress goes to stderr.

    \b
    Examples:
      tui-chat ask "What is the capital of France?" --temperature 0
      git diff | tui-chat ask --system "Review this diff"
      tui-chat ask -c "And of Spain?"
    """
    from rich.console import Console

    from tui_chat.repl.load_progress import load_with_progress
    from tui_chat.repl.markdown_stream import PlainStream

    text = read_question(question)
    errors = Console(stderr=True, highlight=False)
    store = Store(memory_database()) if no_save else ctx.store
    stats: list[GenerationStats] = []
    printer = PlainStream(sys.stdout)

    def on_chunk(chunk: TextDelta | GenerationStats) -> None:
        if isinstance(chunk, TextDelta):
            printer.feed(chunk.text)
        else:
            stats.append(chunk)

    with user_errors():
        session = open_session(ctx, store, options, lambda engine: load_with_progress(engine, errors))
        try:
            with printer:
                reply = session.send(text, on_chunk)
        except KeyboardInterrupt:  # Ctrl+C while the model loads (a reply in progress stops through its event)
            errors.print("cancelled")
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            # The reader left (`| head`): the reply stopped and was kept. Leave quietly, as Python's docs advise:
            # point stdout at devnull so the interpreter's final flush does not raise again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
    if stats and stats[-1].dropped_messages:
        errors.print(
            f"note: the {stats[-1].dropped_messages} oldest messages were left out to fit the model's context "
            f"({stats[-1].context_limit} tokens)"
        )
    if reply.status == "stopped":
        where = "" if no_save else f" in conversation {reply.conversation_id}"
        errors.print(f"stopped: the partial reply is kept{where}")
        sys.exit(EXIT_INTERRUPTED)


@click.command("repl")
@chat_options
@pass_context
def repl_command(ctx: CliContext, **options: Any) -> None:
    """Chat in this terminal: streamed Markdown replies, slash commands (/help), history and completion.

    Enter sends, Alt+Enter (or Esc then Enter) starts a new line, Ctrl+C stops a reply, Ctrl+D leaves.
    Without a terminal (piped input) it reads one message per line and prints plain text.
    """
    from tui_chat.repl.load_progress import load_with_progress
    from tui_chat.repl.app import Repl, repl_console

    plain = not (sys.stdin.isatty() and sys.stdout.isatty())
    console = repl_console(plain)
    # Without a terminal, loading and stats lines go to stderr so stdout holds only replies and command output.
    status = repl_console(plain, stderr=True) if plain else console
    with user_errors():
        session = open_session(
            ctx, ctx.store, options, lambda engine: load_with_progress(engine, status, announce=True)
        )
    Repl(session, ctx.home, console, plain=plain, status_console=status).run()
