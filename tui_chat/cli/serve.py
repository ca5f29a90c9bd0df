"""`tui-chat serve`: the model behind an OpenAI-compatible HTTP API (``tui_chat.serve``), on uvicorn."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tui_chat.cli.chat import EXIT_INTERRUPTED
from tui_chat.cli.context import CliContext, engine_options, engine_settings, pass_context

if TYPE_CHECKING:
    from tui_chat.serve.scheduler import ModelScheduler
from tui_chat.inference.contract import Engine, EngineError, EngineInfo


GIL_SWITCH_S = 0.0005


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
@click.option("--successor-of", type=int, hidden=True, metavar="PID",
              help="Internal: run as the compiled successor of the server PID (serve/handover.py).")
@click.option("--listen-fd", type=int, hidden=True, metavar="FD",
              help="Internal: serve on this inherited listening socket.")
@engine_options
@pass_context
def serve_command(ctx: CliContext, model: str, host: str, port: int, api_key: str | None, socket_path: str | None,
                  keep_alive: float | None, log_requests: bool, successor_of: int | None, listen_fd: int | None,
                  **options: Any) -> None:
    """Serve a model over HTTP with the OpenAI chat completions API.

    \b
    Endpoints:
      POST /v1/chat/completions   messages, model, stream, temperature, top_p, max_tokens, seed, stop,
                                  stream_options.include_usage; extensions: top_k, repetition_penalty
      GET  /v1/models             the loaded model, the bundled one and every finished training run
      GET  /health                the model, its load progress, the app version and engine settings
      POST /load, POST /tokenize  extensions: load a model now; count a conversation's tokens

    Clients share the one loaded model: requests queue and run one at a time. Conversations sent to the server are
    not stored in the chat database unless --log is given. On CPU, replies start with the eager decode step while a
    second server process compiles it; that process takes over the socket between two replies.

    \b
    Example:
      tui-chat serve --port 8000
      curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
           -d '{"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}]}'
    """
    from tui_chat.serve.catalog import ModelCatalog, local_models
    from tui_chat.serve.handover import Successor, serving_overrides
    from tui_chat.serve.local import serve_command_line, server_identity
    from tui_chat.serve.scheduler import ModelScheduler
    from tui_chat.serve.server import ModelServer

    # The decode thread and the event loop's thread pass the GIL back and forth for every token; at Python's default
    # 5 ms switch interval the decode thread waited for it: replies over HTTP decoded at 0.75-0.81x the in-process
    # speed, and at 0.92-1.01x with 0.5 ms (`python -m bench serve`, load 3.5 on 2 cores).
    sys.setswitchinterval(GIL_SWITCH_S)
    home = socket_path is not None  # the data home's own server, started by the front ends
    if not home and not _loopback(host) and not api_key:
        raise click.ClickException(f"--host {host} lets anyone who reaches this machine use the model; give "
                                   "--api-key KEY (or TUI_CHAT_API_KEY), or listen on 127.0.0.1")
    settings = {**ctx.engine_settings, **engine_settings(options)}
    if listen_fd is not None:
        listener = socket.socket(fileno=listen_fd)  # the serving process's, inherited: see serve/handover.py
    elif home:
        listener = _bind_private_socket(Path(socket_path))
    else:
        listener = _bind_port(host, port)  # before seconds of loading: a busy port fails at once
    bound = Path(socket_path).stat().st_ino if home else None

    def command(spec: str) -> list[str]:
        """This server's command line, for ``spec``: what its compiled successor runs."""
        where = ["--socket", str(socket_path)] if home else []
        keep = ["--keep-alive", f"{keep_alive:g}"] if keep_alive is not None else []
        return [*serve_command_line(ctx.home, spec, settings), *where, *keep, *(["--log"] if log_requests else [])]

    successor = Successor(command, listener.fileno(), settings,
                          env={**os.environ, "TUI_CHAT_API_KEY": api_key} if api_key else None)
    scheduler = ModelScheduler(
        ctx.engine_factory(options, serving=True, overrides=serving_overrides(settings)), model,
        load_engine=None if home or successor_of is not None else _load_in_terminal, successor=successor,
    )
    catalog = ModelCatalog(model, lambda: local_models(ctx.home.models), any_spec=home)
    log_to = None
    if log_requests:
        from tui_chat.serve.request_log import RequestLog

        log_to = RequestLog(ctx.store)
    server = ModelServer(scheduler, catalog, identity=server_identity(settings) if home else None, api_key=api_key,
                         keep_alive_s=keep_alive, log=log_to, successor=successor)
    if successor_of is not None:
        _compile_and_take_over(ctx, scheduler, model, options, successor_of)
    elif home:
        scheduler.start()  # models load when a client asks (POST /load)
        idle = f"exits after {keep_alive:g} s idle" if keep_alive is not None else "runs until stopped"
        click.echo(f"serving at unix:{socket_path} (pid {os.getpid()}, {idle})", err=True)
    else:
        _load_first(scheduler, listener)
        catalog.models()  # the listing's imports (torch, through the trainer), here rather than in the first request
        stored = "each request is stored as a conversation" if log_requests else "conversations are not stored"
        bound_host, bound_port = listener.getsockname()[:2]
        click.echo(f"serving {scheduler.model} at http://{bound_host}:{bound_port}/v1 (OpenAI API; {stored}) · "
                   "Ctrl+C to stop", err=True)
    try:
        server.serve_on(listener)
    except KeyboardInterrupt:  # uvicorn raises the Ctrl+C it caught once it has shut down
        if successor.state != "handed over":
            raise
        # It reached the successor too, which serves: its exit is the command's (below).
    finally:
        handed_over = successor.state == "handed over"
        if home and not handed_over:  # the socket file goes with the last server using it, not with a new one's
            path = Path(socket_path)
            if path.exists() and path.stat().st_ino == bound:
                path.unlink()
    if handed_over and not home:  # `tui-chat serve` in a terminal: it ends when its successor does
        sys.exit(successor.wait())


def _bind_port(host: str, port: int) -> socket.socket:
    try:
        return socket.create_server((host, port))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port "
                                   "(0 picks a free one)") from exc


def _bind_private_socket(path: Path) -> socket.socket:
    """The data home's server socket (``serve.local`` starts the server), made 0600; one left by a server that was
    killed is replaced, one that answers is an error."""
    from tui_chat.serve.local import private_dir

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
    return listener


def _load_in_terminal(engine: Engine) -> EngineInfo:
    from rich.console import Console

    from tui_chat.repl.load_progress import load_with_progress

    return load_with_progress(engine, Console(stderr=True, highlight=False), announce=True)


def _load_first(scheduler: ModelScheduler, listener: socket.socket) -> None:
    """Load the model given at start, before serving; its errors are the command's."""
    try:
        scheduler.load()
    except EngineError as exc:
        listener.close()
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:  # Ctrl+C while the model loads
        click.echo("cancelled", err=True)
        sys.exit(EXIT_INTERRUPTED)


def _compile_and_take_over(ctx: CliContext, scheduler: ModelScheduler, model: str, options: dict[str, Any],
                           parent: int) -> None:
    """A compiled successor: load ``model`` with its decode step compiled, then take over from ``parent``."""
    import signal
    import threading
    import time

    from tui_chat.serve.handover import take_over, wait_for_compile, watch_parent

    started = time.monotonic()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in the terminal is the serving process's until we serve
    handed_over = threading.Event()
    watch_parent(parent, handed_over)
    try:
        engine = ctx.engine_factory(options, serving=True, overrides={"compile": True})(model)
        engine.load()
        wait_for_compile(engine)
    except EngineError as exc:
        raise click.ClickException(str(exc)) from exc
    scheduler.adopt(model, engine)
    scheduler.start()
    if not take_over(parent, handed_over):
        raise click.ClickException("the serving process ended before the compiled one was ready")
    click.echo(f"the compiled decode step is ready after {time.monotonic() - started:.0f} s: pid {os.getpid()} "
               f"serves now (pid {parent} leaves once its replies are done)", err=True)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any address
        return False
