"""Every chat action in one table: its key, its footer and command-palette title, and its slash command.

The chat screen's bindings, the command palette and the help screen are all built from ``CHAT_ACTIONS``, so a key
is described in exactly one place (the slash commands themselves are described in ``commands.COMMANDS``).
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class ChatAction:
    action: str  # ChatScreen.action_<action>
    keys: str  # Textual key names, comma-separated
    title: str  # footer label and command-palette entry
    help: str  # one line, in the palette and the help screen
    command: str | None = None  # the slash command that does the same
    footer: bool = False  # shown in the footer (the rest are in the palette and on the help screen)


CHAT_ACTIONS: tuple[ChatAction, ...] = (
    ChatAction("stop", "escape", "Stop", "Stop the reply being generated (the partial reply is kept)", footer=True),
    ChatAction("new_chat", "ctrl+n", "New chat", "Start a new conversation", "new", footer=True),
    ChatAction("regenerate", "ctrl+r", "Regenerate", "Generate another version of the reply", "retry", footer=True),
    ChatAction("previous_version", "alt+left", "Previous version", "Show the previous version of a reply"),
    ChatAction("next_version", "alt+right", "Next version", "Show the next version of a reply"),
    ChatAction("edit_last", "alt+e", "Edit message", "Rewrite your last message (a new branch)", "edit"),
    ChatAction("rate_up", "alt+up", "Rate reply +", "Rate the reply up (again to clear)", "rate"),
    ChatAction("rate_down", "alt+down", "Rate reply -", "Rate the reply down (again to clear)", "rate"),
    ChatAction("correct", "alt+c", "Correct reply", "Write the ideal answer for the reply", "correct"),
    ChatAction("compare", "alt+v", "Compare answers",
               "Answer the last prompt twice, side by side, and pick the better (/compare SPEC: another model)",
               "compare"),
    ChatAction("copy", "alt+y", "Copy message", "Copy the selected message, else the last reply", "copy"),
    ChatAction("rename", "f2", "Rename", "Rename this conversation", "rename", footer=True),
    ChatAction("delete", "f8", "Delete chat", "Delete this conversation (asks first)", "delete"),
    ChatAction("system_prompt", "alt+s", "System prompt", "Edit this conversation's system prompt", "system"),
    ChatAction("params", "alt+p", "Generation settings", "Temperature, top-k, ... for this conversation", "set"),
    ChatAction("switch_model", "alt+m", "Switch model", "Bundled model, trained runs, a path or a Hub id", "model"),
    ChatAction("export", "alt+x", "Export", "Export sessions as a dataset (same options as the CLI)", "export"),
    ChatAction("toggle_exclude", "alt+t", "Exclude from training", "Leave this conversation out of training", "exclude"),
    ChatAction("search", "ctrl+f", "Search", "Search every conversation", footer=True),
    ChatAction("toggle_sidebar", "ctrl+b", "Sidebar", "Show or hide the conversation list"),
    ChatAction("help", "f1", "Help", "Every key and slash command", "help", footer=True),
)

# Keys handled by widgets rather than the screen, listed on the help screen.
INPUT_KEYS: tuple[tuple[str, str], ...] = (
    ("Enter", "Send the message (text starting with / runs a command; // sends a literal /)"),
    ("Shift+Enter, Ctrl+J", "New line in the message"),
    ("Tab, Shift+Tab", "Move between the search box, the conversations, the messages and the input"),
    ("Up, Down (messages)", "Select a message: copy, rate, correct and versions then act on it"),
    ("Home (messages)", "Show the whole conversation from its first message"),
    ("Ctrl+P", "Command palette: every action, and the theme"),
    ("Ctrl+Q", "Quit"),
)


def chat_bindings() -> list[Binding]:
    """The chat screen's bindings. Priority, so they work while the input has focus; Escape is not, so a focused
    widget (the search box) may use it first."""
    return [
        Binding(action.keys, action.action, action.title, show=action.footer, priority=action.action != "stop")
        for action in CHAT_ACTIONS
    ]
