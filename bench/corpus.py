"""Real dialogue no one here wrote, for the learning benchmark: the English part of the ``chatterbot-corpus`` package
on PyPI, fetched at bench time into a temporary directory (never installed, never committed) and turned into
``{"messages": [...]}`` conversations.

Its YAML files hold ``conversations:`` lists of turns; a conversation alternates user and assistant from its first
turn, and a last user turn nobody answered is dropped.
"""

from __future__ import annotations

import random
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import yaml

PACKAGE = "chatterbot-corpus"
ENGLISH = "chatterbot_corpus/data/english/"
DOWNLOAD_TIMEOUT_S = 180


def fetch(into: Path) -> Path | None:
    """The package's wheel downloaded into ``into``; None (with the reason printed) when PyPI cannot be reached."""
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(into), PACKAGE],
            check=True, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        reason = exc.stderr.strip().splitlines()[-1] if getattr(exc, "stderr", None) else str(exc)
        print(f"learn: cannot download {PACKAGE} from PyPI ({reason}): skipping the real-dialogue rows", flush=True)
        return None
    return next(into.glob("*.whl"))


def _conversation(turns: Any) -> dict[str, Any] | None:
    if not isinstance(turns, list) or not all(isinstance(t, str) and t.strip() for t in turns):
        return None
    turns = turns[: len(turns) // 2 * 2]  # a last question nobody answered is not a training example
    if not turns:
        return None
    roles = ("user", "assistant")
    return {"messages": [{"role": roles[i % 2], "content": t.strip()} for i, t in enumerate(turns)]}


def conversations(wheel: Path) -> list[dict[str, Any]]:
    """Every English conversation of the corpus, in file order."""
    found = []
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(n for n in archive.namelist() if n.startswith(ENGLISH) and n.endswith(".yml")):
            document = yaml.safe_load(archive.read(name).decode("utf-8")) or {}
            found += [c for turns in document.get("conversations", []) if (c := _conversation(turns))]
    return found


def sample(pool: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` conversations drawn from every file (a seeded shuffle, so sizes differ in how many, not which kind)."""
    order = list(pool)
    random.Random(seed).shuffle(order)
    return order[:n]
