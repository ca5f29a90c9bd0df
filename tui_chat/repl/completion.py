"""What the REPL's prompt completes (slash commands, then their arguments) and its Enter / Alt+Enter keys."""

from __future__ import annotations

from typing import Callable, Iterable

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

from trainer.home import DataHome
from trainer.model_names import list_local_models

from tui_chat.chat import commands


def local_model_names(home: DataHome) -> list[str]:
    """``default`` and every model the data home holds (for /model completion)."""
    names = ["default"]
    names.extend(model.name for model in list_local_models(home.models) if model.name not in names)
    return names


class ReplCompleter(Completer):
    """Completes slash commands, then the argument of the commands that take a known set of values."""

    def __init__(self, model_names: Callable[[], list[str]]) -> None:
        self.model_names = model_names

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        text = document.text_before_cursor
        if not commands.is_command(text) or "\n" in text:
            return
        head, space, argument = text.partition(" ")
        if not space:
            for name in commands.names():
                if name.startswith(head.lower()):
                    command = commands.find(name[1:])
                    assert command is not None
                    takes_arguments = " " in command.usage
                    yield Completion(
                        name + (" " if takes_arguments else ""),
                        start_position=-len(text),
                        display=name,
                        display_meta=command.help,
                    )
            return
        for choice in self._argument_choices(head[1:]):
            if choice.startswith(argument):
                yield Completion(choice, start_position=-len(argument))

    def _argument_choices(self, name: str) -> list[str]:
        command = commands.find(name)
        if command is None:
            return []
        if command.name == "model":
            return self.model_names()
        if command.name == "compare":  # the other model, or --blind
            return [*command.choices, *self.model_names()]
        return list(command.choices)


def key_bindings() -> KeyBindings:
    bindings = KeyBindings()

    @bindings.add("enter")
    def _send(event: KeyPressEvent) -> None:
        buffer = event.current_buffer
        if buffer.complete_state is not None and buffer.complete_state.current_completion is not None:
            buffer.complete_state = None  # Enter on a highlighted completion takes it; a second Enter sends
            return
        buffer.validate_and_handle()

    @bindings.add("escape", "enter")
    def _new_line(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    return bindings
