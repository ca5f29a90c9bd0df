"""What every `tui-chat` subcommand shares: the data home, the store (opened on first use), how a model spec
becomes an engine, and the options that say how the model runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import click

from sessions import Store, StoreError
from trainer.home import DataHome

from tui_chat.inference.contract import Engine, EngineError, EngineFactory
from tui_chat.inference.endpoints import remote_engine


def open_model_engine(spec: str, home: DataHome, **options: Any) -> Engine:
    """The model itself, in this process: how the server runs it."""
    from tui_chat.inference.hf_engine import open_engine

    return open_engine(spec, home, **options)


def open_server_engine(spec: str, home: DataHome, **options: Any) -> Engine:
    """The model as the front ends use it: through the data home's server (started when none runs), so this
    process never imports torch and a second window finds the model loaded."""
    from tui_chat.serve.local import LocalServer, LocalServerEngine

    return LocalServerEngine(spec, LocalServer(home, options))


@dataclass
class CliContext:
    home: DataHome
    _store: Store | None = field(default=None, repr=False)
    # (spec, home, device=, dtype=, quantize=, compile=, trust_remote_code=) -> an unloaded engine, for the front
    # ends and the server alike; None: the real ones (open_server_engine, open_model_engine). Tests pass a fake.
    open_engine: Callable[..., Engine] | None = field(default=None, repr=False)
    # Engine settings given before the subcommand (`tui-chat --no-compile ask ...`); the subcommand's own win.
    engine_settings: dict[str, Any] = field(default_factory=dict)
    def engine_factory(self, options: dict[str, Any], *, serving: bool = False,
                       overrides: dict[str, Any] | None = None) -> EngineFactory:
        """Model spec -> unloaded engine, with a command's ``engine_options`` over the group's, and ``overrides``
        over both. ``serving``: for `tui-chat serve`, the model in this process instead of through the home's server.

        ``openai:MODEL`` and ``ENDPOINT:MODEL`` (a saved endpoint) are remote models. A spec naming a run with no
        model yet (training, cancelled, failed, deleted) is an EngineError saying so, before anything loads: the
        loader alone would take a name with no folder for a Hub id."""
        settings = {**self.engine_settings, **engine_settings(options), **(overrides or {})}
        opener = self.open_engine or (open_model_engine if serving else open_server_engine)

        def open_engine(spec: str) -> Engine:
            if not serving:
                remote = remote_engine(spec, self.home.root, options.get("api_base"))
                if remote is not None:
                    return remote
            if self._store is not None or self.home.db_path.exists():  # `ask --no-save` in a new home creates no DB
                from tui_chat.training.run_folder import unfinished_run_message

                message = unfinished_run_message(self.store, self.home, spec)
                if message:
                    raise EngineError(message)
            return opener(spec, self.home, **settings)

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
            "ready (on CPU a second server process compiles, 30-100 s of a core, and takes over between replies; "
            "the server keeps it for the next window). Default: on.",
        ),
        click.option("--trust-remote-code", is_flag=True, help="Allow a Hub model to run its own Python code."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def api_base_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """--api-base, for the commands that chat: where `--model openai:MODEL` is served."""
    return click.option(
        "--api-base", metavar="URL",
        help="The OpenAI-compatible API that serves `--model openai:MODEL` (llama.cpp's llama-server, vLLM, Ollama: "
        "e.g. http://127.0.0.1:8080/v1). Default: OpenAI's, with the key in OPENAI_API_KEY. Saved endpoints: "
        "`tui-chat endpoints`.",
    )(command)


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
