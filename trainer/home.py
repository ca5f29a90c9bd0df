"""The data home (shared by the app and the trainer): where the chat database, models, datasets and training logs live.

Chosen by ``--home DIR``, else ``TUI_CHAT_HOME``, else platformdirs' user data dir. Everything in it is created
private to the user (dirs 0700, files 0600): chats are personal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

HOME_ENV = "TUI_CHAT_HOME"


@dataclass(frozen=True)
class DataHome:
    root: Path

    @classmethod
    def locate(cls, explicit: str | Path | None = None) -> "DataHome":
        chosen = explicit or os.environ.get(HOME_ENV) or platformdirs.user_data_dir("tui-chat")
        return cls(Path(chosen).expanduser())

    @property
    def db_path(self) -> Path:
        return self.root / "chat.db"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def history_path(self) -> Path:
        return self.root / "repl_history"

    def ensure(self) -> "DataHome":
        """Create the home and its folders (0700) and make the database files 0600 if present."""
        for path in (self.root, self.models, self.datasets, self.runs):
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o700)
        return self

    def secure_file(self, path: Path) -> Path:
        """Make a file the app created readable by its owner only."""
        if path.exists():
            os.chmod(path, 0o600)
        return path
