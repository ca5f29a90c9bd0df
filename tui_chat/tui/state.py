"""What the chat window remembers between runs: the conversation it showed last, the model and the theme.

A small JSON file in the data home (not the database: it is per-machine UI state, not chat history).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from trainer.home import DataHome

STATE_FILE = "tui_state.json"


@dataclass
class TuiState:
    conversation_id: int | None = None
    model: str | None = None  # the spec last loaded (by the switcher or --model), opened again next time
    theme: str | None = None

    @classmethod
    def load(cls, home: DataHome) -> TuiState:
        """The saved state, or a fresh one when the file is missing or unreadable (it is only a convenience)."""
        try:
            values = json.loads((home.root / STATE_FILE).read_text())
        except (OSError, ValueError):
            return cls()
        if not isinstance(values, dict):
            return cls()
        conversation_id = values.get("conversation_id")
        model, theme = values.get("model"), values.get("theme")
        return cls(
            conversation_id=conversation_id if isinstance(conversation_id, int) else None,
            model=model if isinstance(model, str) and model else None,
            theme=theme if isinstance(theme, str) else None,
        )

    def save(self, home: DataHome) -> Path:
        """Write atomically (a crash never leaves half a file), private to the user like the rest of the home."""
        home.root.mkdir(parents=True, exist_ok=True)
        path = home.root / STATE_FILE
        temporary = path.with_name(f".{STATE_FILE}.{os.getpid()}")
        temporary.write_text(json.dumps(asdict(self)))
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
        return path
