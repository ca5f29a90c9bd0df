"""The slash commands: one registry, parsed once into typed actions that every front end carries out.

``parse("/rate up")`` gives ``Rate(1)``; ``parse("/correct -")`` gives ``Correct(text=None, clear=True)``. Every
word a command accepts, and every one-line error for what it does not, is decided here, so the chat window and the
REPL cannot disagree about what a command means. A front end only chooses how to show the result, and what to do
for an argument the user left out (the window opens an editor, the REPL asks at the prompt).

Completion, `/help` and the window's help screen read ``COMMANDS`` too: a command is described in one place.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Callable, Union

from tui_chat.inference.contract import GenerationParams


class CommandError(Exception):
    """Bad slash-command input, or a command that makes no sense now; the message is one line saying what to do."""


# ---- the actions ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class New:
    pass


@dataclass(frozen=True)
class ListConversations:
    limit: int | None  # None: the front end's own page


@dataclass(frozen=True)
class Open:
    conversation_id: int


@dataclass(frozen=True)
class Rename:
    title: str | None  # None: ask for it


@dataclass(frozen=True)
class Delete:
    pass


@dataclass(frozen=True)
class SwitchModel:
    spec: str | None  # None: show the model and the choices


@dataclass(frozen=True)
class SystemPrompt:
    text: str | None  # None with clear=False: show it or ask for it
    clear: bool = False


@dataclass(frozen=True)
class SetParam:
    name: str | None  # None: every setting (show them, or open the editor)
    value: str | None  # None: show this one


@dataclass(frozen=True)
class Retry:
    pass


@dataclass(frozen=True)
class Edit:
    text: str | None  # None: ask for it, prefilled with the message


@dataclass(frozen=True)
class Rate:
    value: int  # 1 up, -1 down, 0 clear


@dataclass(frozen=True)
class Correct:
    text: str | None  # None with clear=False: ask for it, prefilled with the reply
    clear: bool = False


@dataclass(frozen=True)
class Compare:
    spec: str | None  # the other model; None: two samples of the current one
    blind: bool = False  # hide which model wrote which until the pick


@dataclass(frozen=True)
class Copy:
    pass


@dataclass(frozen=True)
class Exclude:
    value: bool | None  # None: toggle


@dataclass(frozen=True)
class Export:
    argv: list[str] | None  # None: ask for the options


@dataclass(frozen=True)
class Train:
    argv: list[str]


@dataclass(frozen=True)
class Runs:
    cancel: bool = False
    name: str | None = None  # without cancel: show this run (None: list them); with: this run (None: the only one)


@dataclass(frozen=True)
class Quit:
    pass


Action = Union[
    Help, New, ListConversations, Open, Rename, Delete, SwitchModel, SystemPrompt, SetParam, Retry, Edit, Rate,
    Correct, Compare, Copy, Exclude, Export, Train, Runs, Quit,
]

# The words /rate and /exclude take. One table each: both front ends complete and accept exactly these.
RATING_WORDS = {"+": 1, "up": 1, "+1": 1, "1": 1, "good": 1, "-": -1, "down": -1, "-1": -1, "bad": -1,
                "0": 0, "clear": 0, "none": 0}
SWITCH_WORDS = {"on": True, "yes": True, "off": False, "no": False}
CLEAR = "-"  # `/system -` and `/correct -` clear


# ---- parsing each command's argument --------------------------------------------------------------------------


def _no_argument(action: Action) -> Callable[[str, str], Action]:
    def parse(args: str, usage: str) -> Action:
        if args:
            raise CommandError(f"{usage} takes no argument")
        return action

    return parse


def split_options(args: str, usage: str) -> list[str]:
    """Options typed after a command, split as a shell would; CommandError naming the command if they do not split."""
    try:
        return shlex.split(args)
    except ValueError as exc:
        raise CommandError(f"{usage}: {exc}") from None


def _list(args: str, usage: str) -> Action:
    if args and not args.isdigit():
        raise CommandError(f"{usage}: N is how many conversations to show, e.g. /list 20")
    return ListConversations(int(args) if args else None)


def _open(args: str, usage: str) -> Action:
    if not args.isdigit():
        raise CommandError(f"{usage}: ID is a conversation number (#ID in the list)")
    return Open(int(args))


def _set(args: str, usage: str) -> Action:
    if not args:
        return SetParam(None, None)
    name, _, value = args.partition(" ")
    settings = GenerationParams().to_dict()
    if name not in settings:
        raise CommandError(f"unknown setting {name!r}; settings: {', '.join(settings)}")
    value = value.strip()
    if value:
        try:
            GenerationParams().with_value(name, value)
        except ValueError as exc:
            raise setting_error(name, exc) from None
    return SetParam(name, value or None)


def setting_error(name: str, error: ValueError) -> CommandError:
    """A refused `/set NAME VALUE` as one line that names the setting."""
    return CommandError(str(error) if name in str(error) else f"{name}: {error}")


def _rate(args: str, usage: str) -> Action:
    value = RATING_WORDS.get(args.lower())
    if value is None:
        raise CommandError(f"{usage}: + (or up) rates the reply up, - (or down) down, 0 (or clear) clears")
    return Rate(value)


def _exclude(args: str, usage: str) -> Action:
    if args and args.lower() not in SWITCH_WORDS:
        raise CommandError(f"{usage}: on leaves this conversation out of training, off puts it back")
    return Exclude(SWITCH_WORDS[args.lower()] if args else None)


def _compare(args: str, usage: str) -> Action:
    words = split_options(args, usage)
    blind = "--blind" in words
    rest = [word for word in words if word != "--blind"]
    if any(word.startswith("--") for word in rest) or len(rest) > 1:
        raise CommandError(f"{usage}: SPEC is one model (as /model takes it), and --blind hides which is which")
    return Compare(rest[0] if rest else None, blind)


def _runs(args: str, usage: str) -> Action:
    action, _, name = args.partition(" ")
    if action == "cancel":
        return Runs(cancel=True, name=name.strip() or None)
    return Runs(name=args or None)


@dataclass(frozen=True)
class SlashCommand:
    name: str  # without the slash
    usage: str  # e.g. "/open ID"
    help: str  # one line
    parse: Callable[[str, str], Action]  # (the text after the name, usage) -> the action; CommandError if bad
    aliases: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()  # the words its argument completes to


COMMANDS: tuple[SlashCommand, ...] = (
    SlashCommand("help", "/help", "list the commands and keys", _no_argument(Help()), ("?",)),
    SlashCommand("new", "/new", "start a new conversation", _no_argument(New())),
    SlashCommand("list", "/list [N]", "show the newest conversations", _list),
    SlashCommand("open", "/open ID", "switch to conversation ID", _open),
    SlashCommand("rename", "/rename TITLE", "rename this conversation", lambda a, u: Rename(a or None)),
    SlashCommand("delete", "/delete", "delete this conversation (asks first)", _no_argument(Delete())),
    SlashCommand("model", "/model [SPEC]", "show the model, or switch to SPEC (default, a path, a run, a Hub id)",
                 lambda a, u: SwitchModel(a or None)),
    SlashCommand("system", "/system [TEXT]", "show or set this conversation's system prompt (`/system -` clears it)",
                 lambda a, u: SystemPrompt(None, clear=True) if a == CLEAR else SystemPrompt(a or None)),
    SlashCommand("set", "/set [NAME VALUE]", "show or change a generation setting (temperature, top_k, ...)", _set,
                 choices=tuple(GenerationParams().to_dict())),
    SlashCommand("retry", "/retry", "generate another version of the last reply", _no_argument(Retry()),
                 ("regenerate",)),
    SlashCommand("edit", "/edit [TEXT]", "rewrite your last message (a new branch) and answer it again",
                 lambda a, u: Edit(a or None)),
    SlashCommand("rate", "/rate +|-|0", "rate the last reply up, down, or clear the rating", _rate,
                 choices=("+", "-", "0")),
    SlashCommand("correct", "/correct [TEXT]", "write the ideal answer for the last reply (`/correct -` clears it)",
                 lambda a, u: Correct(None, clear=True) if a == CLEAR else Correct(a or None)),
    SlashCommand(
        "compare", "/compare [SPEC] [--blind]",
        "answer the last prompt twice (this model and SPEC, or two samples) and pick the better one",
        _compare, choices=("--blind",),
    ),
    SlashCommand("copy", "/copy", "copy the last reply to the clipboard (and to a file in the data home)",
                 _no_argument(Copy())),
    SlashCommand("exclude", "/exclude [on|off]", "leave this conversation out of training (toggles)", _exclude,
                 choices=("on", "off")),
    SlashCommand("export", "/export [OPTIONS]", "export sessions as a dataset (same options as `tui-chat export`)",
                 lambda a, u: Export(split_options(a, u) if a else None)),
    SlashCommand(
        "train", "/train [OPTIONS]",
        "fine-tune the model on your conversations in the background (preview first; /train --help for options)",
        lambda a, u: Train(split_options(a, u)),
    ),
    SlashCommand("runs", "/runs [RUN | cancel [RUN]]", "list training runs, show one, or stop one", _runs),
    SlashCommand("quit", "/quit", "leave", _no_argument(Quit()), ("exit", "q")),
)

_BY_NAME = {alias: command for command in COMMANDS for alias in (command.name, *command.aliases)}


def is_command(text: str) -> bool:
    """A slash command, not a message ("//x" sends "/x" as a message)."""
    return text.startswith("/") and not text.startswith("//")


def message_text(text: str) -> str:
    """What to send for typed ``text`` that is not a command: "//x" is the message "/x"."""
    return text[1:] if text.startswith("//") else text


def find(name: str) -> SlashCommand | None:
    """The command called ``name`` (without the slash, any alias, any case)."""
    return _BY_NAME.get(name.lower())


def parse(text: str) -> Action:
    """``/name args`` as its action; CommandError (one line) for an unknown command or a bad argument."""
    name, _, args = text.strip()[1:].partition(" ")
    command = find(name)
    if command is None:
        raise CommandError(f"unknown command /{name}; type /help for the list")
    return command.parse(args.strip(), command.usage)


def names() -> list[str]:
    """Every command as typed, aliases included (for completion)."""
    return sorted(f"/{alias}" for alias in _BY_NAME)


def help_lines() -> list[tuple[str, str]]:
    return [(command.usage, command.help) for command in COMMANDS]
