"""The chat window's screens: the chat itself and its dialogs, one per file."""
