"""The slash commands: one registry that the REPL and the TUI share.

The registry says what each command is called, what it takes and what it does; each front end implements a
handler per command (``cmd_<name>``), and a test checks that both cover the whole registry. Completion, `/help`
and the TUI's help screen all read this table, so a command is described in exactly one place.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass


@dataclass(frozen=True)
class SlashCommand:
    name: str  # without the slash
    usage: str  # e.g. "/open ID"
    help: str  # one line
    aliases: tuple[str, ...] = ()

    @property
    def handler_name(self) -> str:
        return f"cmd_{self.name}"


COMMANDS: tuple[SlashCommand, ...] = (
    SlashCommand("help", "/help", "list the commands and keys", ("?",)),
    SlashCommand("new", "/new", "start a new conversation"),
    SlashCommand("list", "/list [N]", "show the newest conversations"),
    SlashCommand("open", "/open ID", "switch to conversation ID"),
    SlashCommand("rename", "/rename TITLE", "rename this conversation"),
    SlashCommand("delete", "/delete", "delete this conversation (asks first)"),
    SlashCommand("model", "/model [SPEC]", "show the model, or switch to SPEC (default, a path, a run, a Hub id)"),
    SlashCommand("system", "/system [TEXT]", "show or set this conversation's system prompt (`/system -` clears it)"),
    SlashCommand("set", "/set [NAME VALUE]", "show or change a generation setting (temperature, top_k, ...)"),
    SlashCommand("retry", "/retry", "generate another version of the last reply", ("regenerate",)),
    SlashCommand("edit", "/edit [TEXT]", "rewrite your last message (a new branch) and answer it again"),
    SlashCommand("rate", "/rate +|-|0", "rate the last reply up, down, or clear the rating"),
    SlashCommand("correct", "/correct [TEXT]", "write the ideal answer for the last reply"),
    SlashCommand("copy", "/copy", "copy the last reply to the clipboard (and to a file in the data home)"),
    SlashCommand("exclude", "/exclude [on|off]", "leave this conversation out of training (toggles)"),
    SlashCommand("export", "/export [OPTIONS]", "export sessions as a dataset (same options as `tui-chat export`)"),
    SlashCommand(
        "train", "/train [OPTIONS]",
        "fine-tune the model on your conversations in the background (preview first; /train --help for options)",
    ),
    SlashCommand("runs", "/runs [RUN | cancel [RUN]]", "list training runs, show one, or stop one"),
    SlashCommand("quit", "/quit", "leave", ("exit", "q")),
)

_BY_NAME = {alias: command for command in COMMANDS for alias in (command.name, *command.aliases)}


class CommandError(Exception):
    """Bad slash-command input; the message is one line saying what to type instead."""


@dataclass(frozen=True)
class ParsedCommand:
    command: SlashCommand
    args: str  # the raw text after the command name, stripped

    def argv(self) -> list[str]:
        """The arguments split like a shell would (for commands that take options)."""
        try:
            return shlex.split(self.args)
        except ValueError as exc:
            raise CommandError(f"{self.command.usage}: {exc}") from exc


def is_command(text: str) -> bool:
    return text.startswith("/") and not text.startswith("//")


def parse(text: str) -> ParsedCommand:
    """Parse ``/name args``; raises CommandError for an unknown command."""
    name, _, args = text.strip()[1:].partition(" ")
    command = _BY_NAME.get(name.lower())
    if command is None:
        raise CommandError(f"unknown command /{name}; type /help for the list")
    return ParsedCommand(command, args.strip())


def names() -> list[str]:
    """Every command as typed, aliases included (for completion)."""
    return sorted(f"/{alias}" for alias in _BY_NAME)


def help_lines() -> list[tuple[str, str]]:
    return [(command.usage, command.help) for command in COMMANDS]
