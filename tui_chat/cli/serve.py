"""`tui-chat serve`: the model behind an OpenAI-compatible HTTP API (``tui_chat.serve``), on uvicorn."""

from __future__ import annotations

import socket
import sys
from typing import Any

import click

from tui_chat.cli.chat import EXIT_INTERRUPTED
from tui_chat.cli.context import CliContext, engine_options, pass_context
from tui_chat.inference.contract import EngineError


@click.command("serve")
@click.option(
    "-m",
    "--model",
    default="default",
    show_default=True,
    help="The model loaded at start: `default` (the bundled SmolLM2-135M-Instruct), a trained run's name, a model "
    "or adapter directory, or a Hub id. Requests may name another model of GET /v1/models: it replaces this one.",
)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. There is no authentication: 0.0.0.0 lets anyone who reaches this machine "
              "use the model.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on; 0 picks a free one (the line saying where it serves names it).")
@engine_options
@pass_context
def serve_command(ctx: CliContext, model: str, host: str, port: int, **options: Any) -> None:
    """Serve a model over HTTP with the OpenAI chat completions API.

    \b
    Endpoints:
      POST /v1/chat/completions   messages, model, stream, temperature, top_p, max_tokens, seed, stop,
                                  stream_options.include_usage; extensions: top_k, repetition_penalty
      GET  /v1/models             the loaded model, the bundled one and every finished training run
      GET  /health

    Clients share the one loaded model: requests queue and run one at a time. Conversations sent to the server are
    not stored in the chat database (the chat window and `ask` keep theirs as before).

    \b
    Example:
      tui-chat serve --port 8000
      curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
           -d '{"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}]}'
    """
    from rich.console import Console

    from tui_chat.repl.load_progress import load_with_progress
    from tui_chat.serve.catalog import ModelCatalog, local_models
    from tui_chat.serve.scheduler import ModelScheduler
    from tui_chat.serve.server import ModelServer

    log = Console(stderr=True, highlight=False)
    try:  # the port first: a busy one fails before seconds of loading
        listener = socket.create_server((host, port))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port "
                                   "(0 picks a free one)") from exc
    scheduler = ModelScheduler(ctx.engine_factory(options), model,
                               load_engine=lambda engine: load_with_progress(engine, log, announce=True))
    catalog = ModelCatalog(model, lambda: local_models(ctx.home.models))
    try:
        info = scheduler.load()
    except EngineError as exc:
        listener.close()
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:  # Ctrl+C while the model loads
        log.print("cancelled")
        sys.exit(EXIT_INTERRUPTED)
    catalog.models()  # the listing's imports (torch, through the trainer), here rather than in the first request
    bound_host, bound_port = listener.getsockname()[:2]
    click.echo(f"serving {info.name} at http://{bound_host}:{bound_port}/v1 (OpenAI API; conversations are not "
               "stored) · Ctrl+C to stop", err=True)
    ModelServer(scheduler, catalog).serve_on(listener)
