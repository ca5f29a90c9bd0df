"""`/train` and `/runs` in the REPL: the real trainer on a tiny model (its imports take ~15 s on a busy 2-core
machine), and scripted fake trainers for the paths that need a precise timing."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from sessions import Store, memory_database
from trainer.home import DataHome
from tui_chat.chat.session import ChatSession
from tui_chat.repl.app import Repl
from tui_chat.training.monitor import trainer_alive

from .fakes import FakeEngine
from .train_fixtures import QUICK, fake_trainer, fill_store, home, models_home, step_event, wait_for  # noqa: F401  (fixtures)


class TrainingRepl:
    """A REPL on a memory store full of chats, whose data home holds the tiny model; the chat's model is ``tiny``."""

    def __init__(self, home: DataHome, engine_factory=None) -> None:
        self.home = home
        self.store = Store(memory_database())
        fill_store(self.store, 8)
        self.session = ChatSession(self.store, engine_factory or (lambda spec: FakeEngine(name=spec)), model="tiny")
        self.console = Console(file=io.StringIO(), width=200)

    def repl(self, **options) -> Repl:
        return Repl(self.session, self.home, self.console, model_names=lambda: ["default"], **options)

    def run(self, keys: str) -> str:
        start = len(self.console.file.getvalue())
        with create_pipe_input() as pipe:
            pipe.send_text(keys + "\x04")
            self.repl(prompt_input=pipe, prompt_output=DummyOutput()).run()
        return self.output(start)

    def output(self, start: int = 0) -> str:
        return self.console.file.getvalue()[start:]


def test_train_runs_in_the_background_while_the_prompt_waits_then_the_run_chats(home: DataHome) -> None:
    from tui_chat.inference.hf_engine import HFEngine

    chat = TrainingRepl(home, engine_factory=lambda spec: HFEngine(spec, home.models, device="cpu", dtype="float32"))
    with create_pipe_input() as pipe:
        pipe.send_text(f"/train --yes {' '.join(QUICK)}\r")

        def type_when_finished() -> None:
            wait_for(lambda: "finished in" in chat.output(), timeout_s=180)
            pipe.send_text("/runs\r\x04")

        typist = threading.Thread(target=type_when_finished)
        typist.start()
        chat.repl(prompt_input=pipe, prompt_output=DummyOutput()).run()
        typist.join()
    output = chat.output()
    assert "Train on: 8 conversations (7 to train on, 1 held out to measure it), 16 messages" in output
    assert "Left out: 1 conversation excluded from training, 1 reply rated thumbs-down" in output
    assert "Base model: tiny" in output and "Time: about" in output
    (run,) = chat.store.list_training_runs()
    assert f"training {run.name} in the background: keep chatting" in output
    # The bottom bar's poll told the end above the prompt, while the prompt waited for input.
    assert f"{run.name} finished in" in output and "Your held-out chats:" in output
    assert f"Chat with it: /model {run.name}" in " ".join(output.split())  # the line wraps at the terminal's width
    assert run.status == "finished" and run.metrics["steps"] == 2 and run.metrics["after"]["val_ppl"] > 0
    assert run.base_model == "tiny" and len(run.conversation_ids) == 8
    assert output.rstrip().splitlines()[-1].split()[2:4] == [run.name, "finished"]  # the /runs line

    # Chat with the trained run: the replies record its name (lineage for `tui-chat models show`).
    chat.run(f"/set max_new_tokens 4\r/model {run.name}\rhello\r")
    reply = chat.store.active_branch(chat.session.conversation_id)[-1]
    assert reply.role == "assistant" and reply.model == run.name
    assert [m.id for m in chat.store.messages_by_model(run.name)] == [reply.id]


def test_train_asks_first_and_no_leaves_nothing_behind(home: DataHome) -> None:
    chat = TrainingRepl(home)
    output = chat.run("/train --max-steps 2\rn\r")
    assert "Train on: 8 conversations" in output and "not started" in output
    assert chat.store.list_training_runs() == [] and list(home.datasets.iterdir()) == []


def test_plain_mode_reads_the_answer_from_the_next_line(home: DataHome, monkeypatch: pytest.MonkeyPatch) -> None:
    import tui_chat.training.launch as launch

    chat = TrainingRepl(home)
    chat.repl(plain=True, input_file=io.StringIO("/train --epochs 2\nno\n/runs\n")).run()
    assert "start training? [y/N] not started" in chat.output()
    assert "no training runs yet: /train starts one" in chat.output()

    fake = fake_trainer(home.root, ["wait-for-signal"])
    real_start = launch.start_training
    monkeypatch.setattr(launch, "start_training", lambda store, home, plan: real_start(store, home, plan, python=fake))
    chat.repl(plain=True, input_file=io.StringIO("/train --max-steps 1\nyes\n")).run()
    (run,) = chat.store.list_training_runs()
    assert f"training {run.name} in the background: keep chatting. /runs shows its progress" in chat.output()
    launch.cancel_run(chat.store, run)
    wait_for(lambda: not trainer_alive(run.pid), timeout_s=30)


def test_train_errors_and_help_are_lines(home: DataHome) -> None:
    chat = TrainingRepl(home)
    output = chat.run("/train --epochs lots\r/train --base ./nowhere\r/train --help\r/runs cancel\r/runs nope\r")
    assert "error: /train: argument --epochs: invalid float value: 'lots'" in output
    assert "error: --base: no model directory at ./nowhere" in output
    assert "--lora-r LORA_R" in output
    assert "error: no run is training; /runs lists them" in output
    assert "error: no training run 'nope'" in output


def test_runs_shows_progress_and_cancel_stops_the_run(home: DataHome, monkeypatch: pytest.MonkeyPatch) -> None:
    import tui_chat.training.launch as launch

    fake = fake_trainer(home.root, [{"event": "start", "total_steps": 9}, step_event(3, 9, 1.5), "wait-for-signal"])
    real_start = launch.start_training
    monkeypatch.setattr(launch, "start_training", lambda store, home, plan: real_start(store, home, plan, python=fake))
    chat = TrainingRepl(home)
    with create_pipe_input() as pipe:
        pipe.send_text("/train -y\r")

        def type_along() -> None:
            wait_for(lambda: chat.store.list_training_runs())
            run = chat.store.list_training_runs()[0]
            wait_for(lambda: '"event": "step"' in Path(run.log_path).read_text())
            pipe.send_text("/runs\r/runs cancel\r")
            wait_for(lambda: "was cancelled at step 1" in chat.output(), timeout_s=30)
            pipe.send_text(f"/runs {run.name}\r\x04")

        typist = threading.Thread(target=type_along)
        typist.start()
        chat.repl(prompt_input=pipe, prompt_output=DummyOutput()).run()
        typist.join()
    output = chat.output()
    (run,) = chat.store.list_training_runs()
    assert f"{run.name}  running  (from tiny, 8 conversations)  step 3/9" in output
    assert f"stopping {run.name}: it finishes its current step and saves a checkpoint" in output
    assert f"{run.name} was cancelled at step 1; its checkpoint is in /runs/ckpt" in output
    assert run.status == "cancelled" and not trainer_alive(run.pid)
