"""Shared pieces of the `/train` tests: a data home with a tiny model, chats in a store, scripted fake trainers."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from sessions import Store, memory_database
from trainer.home import DataHome
from trainer.progress import ProgressReporter

from .tiny_models import save_tiny_model

FAKE_LIFETIME_S = 120  # a fake trainer's longest life
# Options that keep a real trainer run on the tiny model to a few seconds after its imports.
QUICK = ["--max-steps", "2", "--eval-samples", "1", "--max-new-tokens", "4"]


def tiny_home(root: Path) -> DataHome:
    """A data home whose models/ holds a tiny Llama named ``tiny`` (saved with its tokenizer)."""
    home = DataHome(root).ensure()
    save_tiny_model(home.models / "tiny")
    return home


def home_sharing_tiny(root: Path, models_home: DataHome) -> DataHome:
    """A fresh data home whose models/tiny links to ``models_home``'s tiny model (built once per module)."""
    home = DataHome(root / "home").ensure()
    (home.models / "tiny").symlink_to(models_home.models / "tiny", target_is_directory=True)
    return home


@pytest.fixture(scope="module")
def models_home(tmp_path_factory: pytest.TempPathFactory) -> DataHome:
    """A data home holding the tiny model, built once per test module."""
    return tiny_home(tmp_path_factory.mktemp("tiny-models") / "shared")


@pytest.fixture
def home(tmp_path: Path, models_home: DataHome) -> DataHome:
    """A fresh data home per test whose models/tiny links to the module's tiny model."""
    return home_sharing_tiny(tmp_path, models_home)


@pytest.fixture
def store() -> Store:
    """An empty store in memory."""
    return Store(memory_database())


def add_chat(store: Store, turns: list[tuple[str, str]], *, model: str = "tiny", rating: int = 0,
             excluded: bool = False, status: str = "complete") -> int:
    """A conversation of (question, answer) turns; ``rating`` and ``status`` apply to its last reply."""
    conversation = store.create_conversation(turns[0][0], model=model)
    for index, (question, answer) in enumerate(turns):
        store.add_message(conversation.id, "user", question)
        reply = store.add_message(conversation.id, "assistant", answer, model=model,
                                  status=status if index == len(turns) - 1 else "complete")
    if rating:
        store.set_rating(reply.id, rating)
    if excluded:
        store.update_conversation(conversation.id, exclude_from_training=True)
    return conversation.id


def fill_store(store: Store, n: int = 10) -> list[int]:
    """``n`` usable chats plus one excluded, one rated thumbs-down (its only reply) and one unfinished."""
    words = "the quick brown fox jumps over the lazy dog".split()
    ids = [add_chat(store, [(f"hello {i} world", " ".join(words[: 2 + i % 7]))]) for i in range(n)]
    add_chat(store, [("private", "secret")], excluded=True)
    add_chat(store, [("bad question", "bad answer")], rating=-1)
    add_chat(store, [("cut short", "half an ans")], status="stopped")
    return ids


def fake_trainer(folder: Path, steps: list[Any]) -> str:
    """An executable standing in for ``python``: run as ``fake -m trainer sft ...`` it plays ``steps``:
    a dict is printed as an event line, a str as a text line, a float sleeps, ``("exit", code)`` exits,
    ``"wait-for-signal"`` sleeps until SIGINT, then prints a ``stopped`` event and exits 130. Whatever happens to
    the test, the fake exits within ``FAKE_LIFETIME_S``."""
    path = folder / f"fake-python-{time.monotonic_ns()}"
    body = f"""\
        import json, signal, sys, time
        steps = json.loads({json.dumps(json.dumps(steps))})
        stop = []
        signal.signal(signal.SIGINT, lambda *a: stop.append(1))
        signal.alarm({FAKE_LIFETIME_S})  # a test that failed before stopping it leaves no process behind
        for step in steps:
            if isinstance(step, dict):
                print(json.dumps({{"time": time.time(), **step}}), flush=True)
            elif isinstance(step, str) and step == "wait-for-signal":
                while not stop:
                    time.sleep(0.02)
                print(json.dumps({{"event": "stopped", "time": time.time(), "step": 1, "reason": "SIGINT",
                                  "checkpoint": "/runs/ckpt"}}), flush=True)
                sys.exit(130)
            elif isinstance(step, str):
                print(step, file=sys.stderr, flush=True)
            elif isinstance(step, list):
                sys.exit(step[1])
            else:
                time.sleep(step)
    """
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


def done_event(steps: int = 2) -> dict:
    metrics = {"method": "lora", "steps": steps, "device": "cpu", "tokens_per_s": 250.0, "train_time_s": 4.0,
               "before": {"val_ppl": 12.5, "bleu": 3.0, "rouge_l": 0.1},
               "after": {"val_ppl": 8.25, "bleu": 9.5, "rouge_l": 0.25}}
    return {"event": "done", "run_dir": "x", "elapsed_s": 6.0, "metrics": metrics}


def step_event(step: int, total: int, loss: float) -> dict:
    return {"event": "step", "step": step, "total": total, "epoch": step / total, "loss": loss, "lr": 1e-4,
            "tokens_per_s": 200.0, "eta_s": (total - step) * 0.5, "elapsed_s": step * 0.5}


def wait_for(condition: Callable[[], Any], timeout_s: float = 90.0, every_s: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"still waiting after {timeout_s} s")


def read_events(log: Path) -> list[dict]:
    events = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


class SignalAtStep(ProgressReporter):
    """Sends this process SIGTERM when the given step is reported, as `kill` would mid-run: the run saves a
    checkpoint and stops."""

    def __init__(self, step: int) -> None:
        super().__init__("none")
        self.at = step

    def emit(self, event: str, **fields) -> None:
        super().emit(event, **fields)
        if event == "step" and fields["step"] == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
