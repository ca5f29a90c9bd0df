"""The `tui-chat` command. With no subcommand it opens the chat.

Each subcommand lives with the code it drives and is registered at the bottom of this file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import click

from sessions import Store, StoreError

from trainer.home import DataHome

from .generation import Engine


def open_hf_engine(spec: str, home: DataHome, **options: Any) -> Engine:
    """The real engine (imported here, on use, because torch takes seconds to import)."""
    from .engine import open_engine

    return open_engine(spec, home, **options)


@dataclass
class CliContext:
    home: DataHome
    _store: Store | None = field(default=None, repr=False)
    # (spec, home, device=, dtype=, trust_remote_code=) -> an unloaded engine; tests pass a fake one.
    open_engine: Callable[..., Engine] = field(default=open_hf_engine, repr=False)

    @property
    def store(self) -> Store:
        """The chat store in the data home, opened (and migrated) on first use."""
        if self._store is None:
            self.home.ensure()
            try:
                self._store = Store.open(self.home.db_path)
            except StoreError as exc:
                raise click.ClickException(str(exc)) from exc
            for suffix in ("", "-wal", "-shm"):
                self.home.secure_file(self.home.db_path.with_name(self.home.db_path.name + suffix))
        return self._store


pass_context = click.make_pass_decorator(CliContext)


@click.group(invoke_without_command=True)
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    envvar="TUI_CHAT_HOME",
    help="Data directory (chat.db, models/, datasets/, runs/). Default: TUI_CHAT_HOME or the user data dir.",
)
@click.version_option(package_name="tui-chat")
@click.pass_context
def main(ctx: click.Context, home: str | None) -> None:
    """Chat with a local language model, keep every session, and fine-tune the model on them.

    Run with no command to open the chat.
    """
    if not isinstance(ctx.obj, CliContext):  # tests hand in their own (a fake engine, an in-memory store)
        ctx.obj = CliContext(DataHome.locate(home))
    if ctx.invoked_subcommand is None:
        ctx.invoke(chat_command)


@main.command("chat")
@click.option(
    "-m",
    "--model",
    help="Model: `default` (the bundled SmolLM2-135M-Instruct), a trained run's name, a model or adapter "
    "directory, or a Hub id. Default: the model used last in the chat window, else `default`.",
)
@click.option("--device", help="cuda, cuda:N, mps or cpu. Default: the best available.")
@click.option("--dtype", help="float32, bfloat16 or float16. Default: the fastest measured for the device.")
@click.option("--trust-remote-code", is_flag=True, help="Allow a Hub model to run its own Python code.")
@pass_context
def chat_command(
    ctx: CliContext, model: str | None, device: str | None, dtype: str | None, trust_remote_code: bool
) -> None:
    """Open the chat window (the default command). The model loads in the background while you type."""
    from .app import make_app  # Textual is imported on use: `tui-chat --help` and the other commands stay fast
    from .tui_state import TuiState

    def engine_factory(spec: str) -> Engine:
        return ctx.open_engine(spec, ctx.home, device=device, dtype=dtype, trust_remote_code=trust_remote_code)

    spec = model or TuiState.load(ctx.home).model or "default"
    make_app(ctx.store, spec, home=ctx.home, engine_factory=engine_factory).run()


from .cli_chat import ask_command, repl_command  # noqa: E402  (registered last: they import this module)

main.add_command(ask_command)
main.add_command(repl_command)

from .cli_sessions import backup_command, export_command, import_command, sessions_group  # noqa: E402

main.add_command(sessions_group)
main.add_command(export_command)
main.add_command(import_command)
main.add_command(backup_command)

from .cli_train import train_command  # noqa: E402

main.add_command(train_command)

from .cli_models import models_group  # noqa: E402

main.add_command(models_group)
