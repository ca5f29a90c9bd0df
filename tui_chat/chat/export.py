"""Exporting conversations as a dataset: `tui-chat export` and the chat's `/export`, one click command.

The chat parses `/export OPTIONS` with the very command the CLI registers, so the options, their help and their
checks exist once.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from sessions import Store, StoreError
from sessions.export import FORMATS, ExportFilters, export
from trainer.home import DataHome

from tui_chat.chat.commands import CommandError

DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]
SUFFIXES = {"messages": "jsonl", "preference": "jsonl", "markdown": "md"}


@click.command("export")
@click.option(
    "--format",
    "format_",
    type=click.Choice(FORMATS),
    default="messages",
    show_default=True,
    help="messages: JSONL for fine-tuning; preference: chosen/rejected pairs JSONL; markdown: transcripts.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write. Default: a timestamped file in the data home's datasets/.",
)
@click.option(
    "--min-rating",
    type=click.IntRange(-1, 1),
    help="Cut each conversation before the first reply rated below N (1: keep only replies rated up or corrected).",
)
@click.option(
    "--since",
    type=click.DateTime(DATE_FORMATS),
    help="Only conversations active on or after DATE (YYYY-MM-DD[ HH:MM[:SS]], local time).",
)
@click.option(
    "--conversation",
    "conversation_ids",
    type=int,
    multiple=True,
    metavar="ID",
    help="Only this conversation (repeat for several).",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Share of records for validation: writes NAME.train.jsonl and NAME.val.jsonl (split by content hash).",
)
@click.pass_obj
def export_command(obj: Any, **options: object) -> None:
    """Export conversations as a dataset, with a manifest (counts, filters, sha256) next to it.

    Thumbs-down and unfinished replies (and what follows them) and conversations marked not for training are left
    out; corrections replace the replies they correct.
    """
    try:
        click.echo(_export(obj.store, obj.home, **options))
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc


def _export(
    store: Store,
    home: DataHome,
    *,
    format_: str,
    out: Path | None,
    min_rating: int | None,
    since: datetime | None,
    conversation_ids: tuple[int, ...],
    val_fraction: float,
) -> str:
    if out is None:
        home.ensure()
        out = home.datasets / f"{format_}-{time.strftime('%Y%m%d-%H%M%S')}.{SUFFIXES[format_]}"
    filters = ExportFilters(
        min_rating=min_rating,
        since=since.timestamp() if since else None,
        conversation_ids=tuple(conversation_ids),
        val_fraction=val_fraction,
    )
    return export(store, format_, out, filters).summary()


def export_help() -> str:
    """The options, as `tui-chat export --help` lists them (the chat's export dialog shows this)."""
    return export_command.get_help(click.Context(export_command, info_name="/export"))


def run_export(store: Store, home: DataHome, argv: list[str]) -> str:
    """`/export [OPTIONS]` from the chat: the `tui-chat export` options, parsed by the same command.

    Returns the one-line summary (or the help text for ``--help``); raises CommandError (one line) for bad options
    or a failed export. Nothing is printed.
    """
    if "--help" in argv:
        return export_help()
    try:
        with export_command.make_context("/export", list(argv)) as ctx:
            return _export(store, home, **ctx.params)
    except click.UsageError as exc:
        raise CommandError(exc.format_message().splitlines()[0]) from None
    except StoreError as exc:
        raise CommandError(str(exc)) from None
