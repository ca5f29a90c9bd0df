"""`tui-chat endpoints`: the remote OpenAI-compatible servers saved in the data home (``inference.endpoints``)."""

from __future__ import annotations

import re

import click

from tui_chat.cli.context import CliContext, pass_context
from tui_chat.inference.contract import EngineError
from tui_chat.inference.endpoints import Endpoint, load_endpoints, save_endpoints

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@click.group("endpoints")
def endpoints_group() -> None:
    """Remote OpenAI-compatible servers to chat with: `--model NAME:MODEL` (and the model picker) then uses MODEL
    as NAME serves it. Conversations with them are stored, rated, exported and trained on like local ones.

    \b
    Examples:
      tui-chat endpoints add llamacpp http://127.0.0.1:8080/v1
      tui-chat endpoints add groq https://api.groq.com/openai/v1 --key-env GROQ_API_KEY
      tui-chat repl --model groq:llama-3.1-8b-instant
    """


def _endpoints(ctx: CliContext) -> dict[str, Endpoint]:
    try:
        return load_endpoints(ctx.home.root)
    except EngineError as exc:
        raise click.ClickException(str(exc)) from exc


@endpoints_group.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--key-env", metavar="VAR", help="The environment variable that holds the API key (read when used).")
@click.option("--key-file", type=click.Path(dir_okay=False, exists=True), metavar="PATH",
              help="A file (chmod 600) that holds the API key (read when used).")
@pass_context
def add_command(ctx: CliContext, name: str, url: str, key_env: str | None, key_file: str | None) -> None:
    """Save endpoint NAME at URL (the API's base, usually ending in /v1). The key itself is never saved."""
    if not NAME.match(name) or name == "openai":
        raise click.UsageError(f"{name!r} cannot name an endpoint: use letters, digits, '.', '_' and '-' "
                               "(`openai` is OpenAI's own API, built in)")
    if not url.startswith(("http://", "https://")):
        raise click.UsageError(f"{url!r} is not an http(s) URL; e.g. http://127.0.0.1:8080/v1")
    if key_env and key_file:
        raise click.UsageError("give --key-env or --key-file, not both")
    endpoints = _endpoints(ctx)
    replaced = name in endpoints
    ctx.home.ensure()
    endpoints[name] = Endpoint(name, url.rstrip("/"), key_env=key_env,
                               key_file=str(click.format_filename(key_file)) if key_file else None)
    save_endpoints(ctx.home.root, endpoints)
    click.echo(f"{'replaced' if replaced else 'saved'} endpoint {name}: {url}; chat with --model {name}:MODEL")


@endpoints_group.command("list")
@pass_context
def list_command(ctx: CliContext) -> None:
    """The saved endpoints and where each key comes from (never the key)."""
    endpoints = _endpoints(ctx)
    if not endpoints:
        click.echo("no endpoints saved; add one with `tui-chat endpoints add NAME URL`")
    for endpoint in endpoints.values():
        key = (f"key from ${endpoint.key_env}" if endpoint.key_env else
               f"key from {endpoint.key_file}" if endpoint.key_file else "no key")
        click.echo(f"{endpoint.name}\t{endpoint.url}\t{key}")


@endpoints_group.command("remove")
@click.argument("name")
@pass_context
def remove_command(ctx: CliContext, name: str) -> None:
    """Forget endpoint NAME (its conversations stay)."""
    endpoints = _endpoints(ctx)
    if endpoints.pop(name, None) is None:
        raise click.ClickException(f"no endpoint named {name!r}; `tui-chat endpoints list` shows them")
    save_endpoints(ctx.home.root, endpoints)
    click.echo(f"removed endpoint {name}")
