"""The `tui-chat` command. With no subcommand it opens the chat.

Each subcommand lives with the code it drives and is registered at the bottom of this file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import click

from sessions import Store, StoreError

from trainer.home import DataHome

from .generation import Engine, EngineError, EngineFactory


def open_hf_engine(spec: str, home: DataHome, **options: Any) -> Engine:
    """The real engine, decoding in a child process: there it has a GIL (and on 2 cores a core) of its own instead
    of sharing them with the chat window's rendering, and this process never imports torch."""
    from .engine_process import ProcessEngine

    return ProcessEngine(spec, home.models, **options)


@dataclass
class CliContext:
    home: DataHome
    _store: Store | None = field(default=None, repr=False)
    # (spec, home, device=, dtype=, quantize=, compile=, trust_remote_code=) -> an unloaded engine; tests pass a fake.
    open_engine: Callable[..., Engine] = field(default=open_hf_engine, repr=False)
    # Engine settings given before the subcommand (`tui-chat --no-compile ask ...`); the subcommand's own win.
    engine_settings: dict[str, Any] = field(default_factory=dict)

    def engine_factory(self, options: dict[str, Any]) -> EngineFactory:
        """Model spec -> unloaded engine, with a command's ``engine_options`` over the group's. A spec naming a run
        with no model yet (training, cancelled, failed, deleted) is an EngineError saying so, before anything loads:
        the loader alone would take a name with no folder for a Hub id."""
        settings = {**self.engine_settings, **engine_settings(options)}

        def open_engine(spec: str) -> Engine:
            if self._store is not None or self.home.db_path.exists():  # `ask --no-save` in a new home creates no DB
                from .training.run_folder import unfinished_run_message

                message = unfinished_run_message(self.store, self.home, spec)
                if message:
                    raise EngineError(message)
            return self.open_engine(spec, self.home, **settings)

        return open_engine

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


def engine_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """How the model runs: --device, --dtype, --quantize, --compile/--no-compile, --trust-remote-code."""
    options = [
        click.option("--device", help="cuda, cuda:N, mps or cpu. Default: the best available."),
        click.option(
            "--dtype", help="float32, bfloat16 or float16. Default: bfloat16 (CUDA and CPU: measured fastest)."
        ),
        click.option(
            "--quantize",
            help="Weight quantization: int4 (CPU with bfloat16; ~2x faster decoding, answers can drift after the "
            "first sentence) or none. Default: int4 for the bundled model on CPU (its weights are 4-bit already), "
            "none for other models and devices.",
        ),
        click.option(
            "--compile/--no-compile",
            "compile_step",
            default=None,
            help="torch.compile the decode step in the background; replies start at once and use it once it is "
            "ready (on CPU a second model process compiles, 30-100 s of a core, and takes over between replies). "
            "Default: on in the chat and the REPL, off for `ask` (one reply never uses it).",
        ),
        click.option("--trust-remote-code", is_flag=True, help="Allow a Hub model to run its own Python code."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def engine_settings(options: dict[str, Any]) -> dict[str, Any]:
    """The ``open_engine`` keyword arguments among a command's ``engine_options`` values that were given."""
    given = {
        "device": options.get("device"),
        "dtype": options.get("dtype"),
        "quantize": options.get("quantize"),
        "compile": options.get("compile_step"),
        "trust_remote_code": options.get("trust_remote_code") or None,
    }
    return {name: value for name, value in given.items() if value is not None}


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
@engine_options
@pass_context
def chat_command(ctx: CliContext, model: str | None, **options: Any) -> None:
    """Open the chat window (the default command). The model loads in the background while you type."""
    from .app import make_app  # Textual is imported on use: `tui-chat --help` and the other commands stay fast
    from .tui_state import TuiState

    spec = model or TuiState.load(ctx.home).model or "default"
    make_app(ctx.store, spec, home=ctx.home, engine_factory=ctx.engine_factory(options)).run()


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
