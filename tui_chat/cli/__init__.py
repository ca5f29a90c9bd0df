"""The `tui-chat` command. With no subcommand it opens the chat window.

Each subcommand lives in its own module of this package, with the code it drives; they share ``context``.
"""

from __future__ import annotations

from typing import Any

import click

from trainer.home import DataHome

from tui_chat.cli.chat import ask_command, repl_command
from tui_chat.cli.context import CliContext, api_base_option, engine_options, engine_settings, pass_context  # noqa: F401  (CliContext: tests build one)
from tui_chat.cli.endpoints import endpoints_group
from tui_chat.cli.models import models_group
from tui_chat.cli.serve import serve_command
from tui_chat.cli.sessions import backup_command, import_command, sessions_group
from tui_chat.cli.train import train_command
from tui_chat.chat.export import export_command


@click.group(invoke_without_command=True)
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    envvar="TUI_CHAT_HOME",
    help="Data directory (chat.db, models/, datasets/, runs/). Default: TUI_CHAT_HOME or the user data dir.",
)
@engine_options
@click.version_option(package_name="tui-chat")
@click.pass_context
def main(ctx: click.Context, home: str | None, **options: Any) -> None:
    """Chat with a local language model, keep every session, and fine-tune the model on them.

    Run with no command to open the chat.
    """
    if not isinstance(ctx.obj, CliContext):  # tests hand in their own (a fake engine, an in-memory store)
        ctx.obj = CliContext(DataHome.locate(home))
    ctx.obj.engine_settings.update(engine_settings(options))
    if ctx.invoked_subcommand is None:
        ctx.invoke(chat_command)


@main.command("chat")
@click.option(
    "-m",
    "--model",
    help="Model: `default` (the bundled SmolLM2-135M-Instruct), a trained run's name, a model or adapter "
    "directory, or a Hub id. Default: the model used last in the chat window, else `default`.",
)
@api_base_option
@engine_options
@pass_context
def chat_command(ctx: CliContext, model: str | None, **options: Any) -> None:
    """Open the chat window (the default command). The model loads in the background while you type."""
    from tui_chat.tui.app import make_app  # Textual is imported on use: `tui-chat --help` and the other commands stay fast
    from tui_chat.tui.state import TuiState

    spec = model or TuiState.load(ctx.home).model or "default"
    make_app(ctx.store, spec, home=ctx.home, engine_factory=ctx.engine_factory(options)).run()


for command in (ask_command, repl_command, sessions_group, export_command, import_command, backup_command,
                train_command, models_group, serve_command, endpoints_group):
    main.add_command(command)
