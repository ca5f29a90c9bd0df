"""`tui-chat sessions ...`, `export`, `import` and `backup`: the saved conversations from the command line.

`export` itself lives in the chat core (``tui_chat.chat.export``): `/export` in the chat parses its options with
the same click command, so the options and their checks exist once.

The commands take the ``CliContext`` through ``click.pass_obj`` rather than importing `tui_chat.cli`, so this
module can be imported on its own (the REPL does, lazily) without a circular import.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sessions import Message, StoreError, counted, minute_text
from sessions.importers import import_file

if TYPE_CHECKING:
    from tui_chat.cli.context import CliContext

RATING_MARKS = {1: "👍", -1: "👎"}


@contextmanager
def _user_errors() -> Iterator[None]:
    """Store and export errors are the user's to fix: one line, no traceback."""
    try:
        yield
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc


def _console() -> Console:
    # Made per call so CliRunner's captured stdout is the one written to.
    return Console(highlight=False)


# ---- sessions -----------------------------------------------------------------------------------------------


@click.group("sessions", invoke_without_command=True)
@click.pass_context
def sessions_group(ctx: click.Context) -> None:
    """List, show, search, rename and delete saved conversations (alone: list the newest)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_command)


@sessions_group.command("list")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True, help="Conversations per page.")
@click.option("--offset", type=click.IntRange(0), default=0, help="Skip this many (for the next pages).")
@click.pass_obj
def list_command(obj: CliContext, limit: int, offset: int) -> None:
    """List conversations, most recently active first."""
    store = obj.store
    with _user_errors():
        total = store.count_conversations()
        page = store.list_conversations(limit=limit, offset=offset)
        counts = store.message_counts([c.id for c in page])
    if not page:
        click.echo(
            "no conversations yet; start one with `tui-chat`" if not total else f"no conversations past {offset}"
        )
        return
    # User text goes into cells as Text: a plain str would be read as rich markup ("[there]" would vanish).
    table = Table(box=None, header_style="bold")
    for name, justify in (
        ("ID", "right"),
        ("Title", "left"),
        ("Updated", "left"),
        ("Msgs", "right"),
        ("Model", "left"),
    ):
        table.add_column(name, justify=justify, overflow="fold" if name == "Title" else "ellipsis")
    for conversation in page:
        title = Text(conversation.title)
        if conversation.exclude_from_training:
            title.append(" (not for training)", style="dim")
        table.add_row(
            str(conversation.id),
            title,
            minute_text(conversation.updated_at),
            str(counts[conversation.id]),
            Text(conversation.model or ""),
        )
    console = _console()
    console.print(table)
    shown = f"{offset + 1}-{offset + len(page)} of {total}"
    more = f"; next page: --offset {offset + len(page)}" if offset + len(page) < total else ""
    console.print(Text(f"{shown}{more}", style="dim"))


@sessions_group.command("show")
@click.argument("conversation_id", metavar="ID", type=int)
@click.pass_obj
def show_command(obj: CliContext, conversation_id: int) -> None:
    """Print conversation ID's active branch, with ratings, corrections and reply versions."""
    store = obj.store
    with _user_errors():
        conversation = store.get_conversation(conversation_id)
        branch = store.active_branch(conversation_id)
        every = store.messages(conversation_id)
    versions: dict[int | None, list[int]] = {}
    for message in every:
        versions.setdefault(message.parent_id, []).append(message.id)
    console = _console()
    console.print(Text(f"{conversation.title}", style="bold"), Text(f"(conversation {conversation.id})", style="dim"))
    details = [f"created {minute_text(conversation.created_at)}", f"updated {minute_text(conversation.updated_at)}"]
    if conversation.model:
        details.append(f"model {conversation.model}")
    if conversation.exclude_from_training:
        details.append("left out of training")
    console.print(Text(" · ".join(details), style="dim"))
    if conversation.system_prompt:
        console.print(Text("system: ", style="bold magenta") + Text(conversation.system_prompt))
    if not branch:
        console.print(Text("(no messages)", style="dim"))
    for message in branch:
        console.print()
        console.print(_message_heading(message, versions[message.parent_id]))
        console.print(Text(message.content))
        if message.correction:
            console.print(Text("correction: ", style="bold green") + Text(message.correction))


def _message_heading(message: Message, siblings: list[int]) -> Text:
    style = {"user": "bold cyan", "assistant": "bold yellow"}.get(message.role, "bold magenta")
    heading = Text(message.role, style=style)
    details = [f"#{message.id}"]
    if len(siblings) > 1:
        details.append(f"version {siblings.index(message.id) + 1}/{len(siblings)}")
    if message.model:
        details.append(message.model)
    if message.rating:
        details.append(RATING_MARKS[message.rating])
    if message.status != "complete":
        details.append(message.status + (f": {message.error}" if message.error else ""))
    return heading + Text(" · " + " · ".join(details), style="dim")


@sessions_group.command("search")
@click.argument("query", nargs=-1, required=True)
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True, help="Most results to show.")
@click.pass_obj
def search_command(obj: CliContext, query: tuple[str, ...], limit: int) -> None:
    """Full-text search over every message; best matches first (words match as prefixes)."""
    with _user_errors():
        hits = obj.store.search(" ".join(query), limit=limit)
    if not hits:
        click.echo(f"no messages match {' '.join(query)!r}")
        return
    table = Table(box=None, header_style="bold")
    table.add_column("ID", justify="right")
    table.add_column("Conversation", overflow="fold", max_width=28)
    table.add_column("Role")
    table.add_column("Match", overflow="fold")
    for hit in hits:
        table.add_row(str(hit.conversation_id), Text(hit.title), hit.role, _highlighted(hit.snippet))
    _console().print(table)


def _highlighted(snippet: str) -> Text:
    """The store marks matches as [word]; show them bold instead (as Text, so brackets are never markup)."""
    text = Text()
    position = 0
    for match in re.finditer(r"\[([^\[\]]*)\]", snippet):
        text.append(snippet[position : match.start()])
        text.append(match.group(1), style="bold reverse")
        position = match.end()
    text.append(snippet[position:])
    return text


@sessions_group.command("rename")
@click.argument("conversation_id", metavar="ID", type=int)
@click.argument("title", nargs=-1, required=True)
@click.pass_obj
def rename_command(obj: CliContext, conversation_id: int, title: tuple[str, ...]) -> None:
    """Give conversation ID a new TITLE (the words are joined; quotes optional)."""
    new_title = " ".join(" ".join(title).split())
    if not new_title:
        raise click.BadParameter("the title is empty", param_hint="TITLE")
    with _user_errors():
        obj.store.rename_conversation(conversation_id, new_title)
    click.echo(f"conversation {conversation_id} is now {new_title!r}")


@sessions_group.command("delete")
@click.argument("conversation_id", metavar="ID", type=int)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def delete_command(obj: CliContext, conversation_id: int, yes: bool) -> None:
    """Delete conversation ID and all its messages for good (asks first)."""
    store = obj.store
    with _user_errors():
        conversation = store.get_conversation(conversation_id)
        count = store.message_counts([conversation_id])[conversation_id]
        if not yes:
            click.confirm(
                f"Delete conversation {conversation_id} {conversation.title!r} and its {counted(count, 'message')}?",
                abort=True,
            )
        store.delete_conversation(conversation_id)
    click.echo(f"deleted conversation {conversation_id} ({counted(count, 'message')})")


# ---- export, import, backup ---------------------------------------------------------------------------------


@click.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_obj
def import_command(obj: CliContext, path: Path) -> None:
    """Import conversations from messages JSONL or a ChatGPT export (conversations.json or its .zip).

    A malformed file is refused with the line or conversation at fault, and nothing is imported.
    """
    with _user_errors():
        click.echo(import_file(obj.store, path).summary())


@click.command("backup")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def backup_command(obj: CliContext, path: Path) -> None:
    """Write a consistent copy of the whole chat database to PATH (safe while the app runs)."""
    store = obj.store
    with _user_errors():
        target = store.backup(path)
        conversations = store.count_conversations()
    obj.home.secure_file(target)
    size_mb = target.stat().st_size / 1e6
    click.echo(f"backed up {counted(conversations, 'conversation')} to {target} ({size_mb:.1f} MB)")
