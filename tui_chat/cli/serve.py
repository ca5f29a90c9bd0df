"""`tui-chat serve`: the model behind an OpenAI-compatible HTTP API (``tui_chat.serve``), on uvicorn."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from pathlib import Path
from typing import Any

import click

from tui_chat.cli.chat import EXIT_INTERRUPTED
from tui_chat.cli.context import CliContext, engine_options, engine_settings, pass_context
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
              help="Address to listen on. Any address but loopback needs --api-key: 0.0.0.0 lets anyone who reaches "
              "this machine use the model.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on; 0 picks a free one (the line saying where it serves names it).")
@click.option("--api-key", envvar="TUI_CHAT_API_KEY", show_envvar=True,
              help="Require this key (`Authorization: Bearer KEY`); requests without it get 401. Needed for any "
              "--host but loopback.")
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False),
              help="Listen on this Unix socket (made 0600) instead of TCP, and load models only when a client asks: "
              "how the chat window, the REPL and `ask` run their data home's server.")
@click.option("--log", "log_requests", is_flag=True,
              help="Keep each answered request as a conversation in the chat database (rated, exported and trained "
              "on like the chat's own). Default: nothing is written.")
@click.option("--keep-alive", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Exit after this many seconds without a request. Default: run until Ctrl+C.")
@engine_options
@pass_context
def serve_command(ctx: CliContext, model: str, host: str, port: int, api_key: str | None, socket_path: str | None,
                  keep_alive: float | None, log_requests: bool, **options: Any) -> None:
    """Serve a model over HTTP with the OpenAI chat completions API.

    \b
    Endpoints:
      POST /v1/chat/completions   messages, model, stream, temperature, top_p, max_tokens, seed, stop,
                                  stream_options.include_usage; extensions: top_k, repetition_penalty
      GET  /v1/models             the loaded model, the bundled one and every finished training run
      GET  /health                the model, its load progress, the app version and engine settings
      POST /load, POST /tokenize  extensions: load a model now; count a conversation's tokens

    Clients share the one loaded model: requests queue and run one at a time. Conversations sent to the server are
    not stored in the chat database unless --log is given.

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

    if socket_path is not None:
        _serve_home(ctx, model, Path(socket_path), api_key, keep_alive, options)
        return
    if not _loopback(host) and not api_key:
        raise click.ClickException(f"--host {host} lets anyone who reaches this machine use the model; give "
                                   "--api-key KEY (or TUI_CHAT_API_KEY), or listen on 127.0.0.1")
    log = Console(stderr=True, highlight=False)
    try:  # the port first: a busy one fails before seconds of loading
        listener = socket.create_server((host, port))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port "
                                   "(0 picks a free one)") from exc
    scheduler = ModelScheduler(ctx.engine_factory(options, serving=True), model,
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
    log_to = None
    if log_requests:
        from tui_chat.serve.request_log import RequestLog

        log_to = RequestLog(ctx.store)
    stored = "each request is stored as a conversation" if log_requests else "conversations are not stored"
    bound_host, bound_port = listener.getsockname()[:2]
    click.echo(f"serving {info.name} at http://{bound_host}:{bound_port}/v1 (OpenAI API; {stored}) · Ctrl+C "
               "to stop", err=True)
    ModelServer(scheduler, catalog, api_key=api_key, keep_alive_s=keep_alive, log=log_to).serve_on(listener)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any address
        return False


def _serve_home(ctx: CliContext, model: str, path: Path, api_key: str | None, keep_alive: float | None,
                options: dict[str, Any]) -> None:
    """The data home's server (``serve.local`` starts it): on a private Unix socket, loading what clients ask for,
    with its identity (app version, engine settings) in /health."""
    from tui_chat.serve.catalog import ModelCatalog, local_models
    from tui_chat.serve.local import private_dir, server_identity
    from tui_chat.serve.scheduler import ModelScheduler
    from tui_chat.serve.server import ModelServer

    private_dir(path.parent)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.connect(str(path))
    except OSError:  # nothing answers: a socket left by a server that was killed, or none
        path.unlink(missing_ok=True)
    else:
        listener.close()
        raise click.ClickException(f"a server already answers on {path}; stop it first")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(64)
    bound = path.stat().st_ino
    settings = {**ctx.engine_settings, **engine_settings(options)}
    scheduler = ModelScheduler(ctx.engine_factory(options, serving=True), model)
    scheduler.start()
    catalog = ModelCatalog(model, lambda: local_models(ctx.home.models), any_spec=True)
    idle = f"exits after {keep_alive:g} s idle" if keep_alive is not None else "runs until stopped"
    click.echo(f"serving at unix:{path} (pid {os.getpid()}, {idle})", err=True)
    try:
        ModelServer(scheduler, catalog, identity=server_identity(settings), api_key=api_key,
                    keep_alive_s=keep_alive).serve_on(listener)
    finally:
        if path.exists() and path.stat().st_ino == bound:  # still ours, not a successor's
            path.unlink()
