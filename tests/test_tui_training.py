"""`/train` in the Textual chat, through Pilot: the real trainer on a tiny model (one run, ~20 s on a busy 2-core
machine: mostly the trainer's imports), and scripted fake trainers for the form, the panel, cancel and failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from textual.widgets import Button, Input, Label, OptionList, ProgressBar, Sparkline, Static

from sessions import Store, memory_database
from trainer.home import DataHome
from trainer.schedule import auto_epochs
from tui_chat.tui.screens.confirm import ConfirmScreen
from tui_chat.tui.screens.model_picker import ModelPickerScreen
from tui_chat.tui.screens.runs_list import RunsScreen
from tui_chat.tui.screens.train_dialog import TrainDialogScreen
from tui_chat.tui.widgets.training_panel import RunRow

from .fakes import FakeEngine
from .train_fixtures import (
    QUICK,
    done_event,
    fake_trainer,
    fill_store,
    home,  # noqa: F401  (a fixture)
    models_home,  # noqa: F401  (a fixture)
    step_event,
)
from .tui_helpers import (
    SIZE,
    build_app,
    chat_screen,
    idle,
    notifications,
    ready,
    send,
    wait_for,
)


@pytest.fixture
def store() -> Store:
    store = Store(memory_database())
    fill_store(store, 8)
    return store


@pytest.fixture
def fake_python(home: DataHome, monkeypatch: pytest.MonkeyPatch):
    """Make `/train` launch a scripted fake trainer: call the fixture with the script's steps."""
    import tui_chat.training.launch as launch

    real = launch.start_training

    def use(steps: list) -> None:
        fake = fake_trainer(home.root, steps)
        monkeypatch.setattr(launch, "start_training", lambda store, home, plan: real(store, home, plan, python=fake))

    return use


def option_ids(options: OptionList) -> list[str | None]:
    return [options.get_option_at_index(i).id for i in range(options.option_count)]


def row_text(row: RunRow) -> str:
    return " ".join(str(static.render()) for static in row.query(Static))


async def test_train_runs_to_completion_and_the_chat_switches_to_the_new_model(home, store):
    from tui_chat.inference.hf_engine import HFEngine

    def open_engine(spec: str):
        return HFEngine(spec, home.models, device="cpu", dtype="float32")

    async with build_app(FakeEngine(name="tiny"), home=home, store=store, factory=open_engine).run_test(
        size=SIZE
    ) as pilot:
        screen = await ready(pilot)
        await send(pilot, "/train --yes " + " ".join(QUICK))
        panel = screen.training
        await wait_for(pilot, lambda: panel.rows, timeout=120, what="the run to start")
        row = panel.rows[0]
        assert panel.display and row.run.status == "running"
        await wait_for(pilot, lambda: row.has_class("-finished"), timeout=180, what="the run to finish")
        (run,) = store.list_training_runs()
        assert run.status == "finished" and run.metrics["steps"] == 2 and run.metrics["after"]["val_ppl"] > 0
        assert row.monitor.progress.losses and len(row.monitor.progress.losses) == 2
        assert f"{run.name} finished in" in row_text(row) and "Your held-out chats:" in row_text(row)
        assert any(f"Chat with it: /model {run.name}" in n for n in notifications(pilot)), notifications(pilot)

        await pilot.click(".run-switch")
        await wait_for(pilot, lambda: screen.engine is not None and screen.engine.name == run.name,
                       timeout=60, what="the trained model to load")
        assert panel.rows == [] and not panel.display
        await send(pilot, "/set max_new_tokens 3")
        await send(pilot, "hello")
        await idle(pilot, timeout=60)
        reply = store.active_branch(screen.conversation.id)[-1]
        assert reply.role == "assistant" and reply.model == run.name and reply.status == "complete"


async def test_the_form_previews_then_starts_the_panel_follows_and_cancel_stops(home, store, fake_python):
    fake_python([{"event": "info", "message": "loading tiny"}, {"event": "start", "total_steps": 8},
                 step_event(1, 8, 3.0), step_event(2, 8, 2.0), "wait-for-signal"])
    async with build_app(FakeEngine(name="tiny"), home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "/train --epochs 2 --lora-r 8")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, TrainDialogScreen), timeout=60, what="the form")
        form = pilot.app.screen
        preview = form.query_one("#train-preview", Static)
        start = form.query_one("#train-start", Button)
        await wait_for(pilot, lambda: not start.disabled, timeout=60, what="the preview")
        text = str(preview.render())
        assert "Train on: 8 conversations (7 to train on, 1 held out to measure it)" in text
        assert "1 conversation excluded from training" in text and "2 epochs" in text
        assert form.query_one("#train-more", Input).value == "--lora-r 8"
        first_snapshot = form.plan.snapshot_dir

        form.query_one("#train-epochs", Input).value = "4"
        await pilot.pause()
        assert start.disabled  # the preview no longer says what would start
        await pilot.click("#train-refresh")
        await wait_for(pilot, lambda: not start.disabled and "4 epochs" in str(preview.render()), timeout=60,
                       what="the new preview")
        assert not first_snapshot.exists()  # the replaced preview's snapshot is gone
        await pilot.click("#train-start")

        panel = screen.training
        await wait_for(pilot, lambda: panel.rows, what="the panel row")
        row = panel.rows[0]
        await wait_for(pilot, lambda: row.query_one(ProgressBar).progress == 2, timeout=30, what="step 2")
        assert row.query_one(ProgressBar).total == 8
        assert list(row.query_one(Sparkline).data) == [3.0, 2.0]
        assert "loss 2.000" in row_text(row) and "200 tok/s" in row_text(row) and "ETA 3 s" in row_text(row)
        (run,) = store.list_training_runs()
        assert run.params["trainer_args"] == ["--lora-r", "8", "--epochs", "4.0"]

        await pilot.click(".run-cancel")
        await wait_for(pilot, lambda: row.has_class("-cancelled"), timeout=30, what="the run to stop")
        assert f"{run.name} was cancelled at step 1" in row_text(row)
        assert store.get_training_run(run.id).status == "cancelled"
        await pilot.click(".run-dismiss")
        await pilot.pause()
        assert not panel.display


async def test_the_forms_blank_epochs_say_what_the_run_will_do(home, store):
    async with build_app(FakeEngine(name="tiny"), home=home, store=store).run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "/train")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, TrainDialogScreen), timeout=60, what="the form")
        form = pilot.app.screen
        epochs = form.query_one("#train-epochs", Input)
        preview = form.query_one("#train-preview", Static)
        start = form.query_one("#train-start", Button)
        await wait_for(pilot, lambda: not start.disabled, timeout=60, what="the preview")
        assert epochs.value == ""
        # The trainer's own choice for 7 conversations, in the form and the preview alike.
        chosen = auto_epochs(7)
        assert epochs.placeholder == f"{chosen:g} (chosen for 7 conversations)"
        assert f"{chosen:g} epochs (chosen for 7 conversations)" in str(preview.render())
        form.query_one("#train-max-steps", Input).value = "2"
        await pilot.click("#train-refresh")
        await wait_for(pilot, lambda: not start.disabled and "= 2 steps" in str(preview.render()), timeout=60,
                       what="the preview of 2 steps")
        assert epochs.placeholder == f"{form.plan.epochs:.3g} (from the max steps)" and form.plan.epochs < chosen
        await pilot.press("escape")


async def test_a_failed_run_shows_the_error_and_the_log(home, store, fake_python):
    fake_python([{"event": "start", "total_steps": 8}, 60.0])
    async with build_app(FakeEngine(name="tiny"), home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "/train -y")
        await wait_for(pilot, lambda: screen.training.rows, timeout=60, what="the run to start")
        row = screen.training.rows[0]
        await wait_for(pilot, lambda: row.monitor.progress.total == 8, what="the start event")
        os.kill(row.run.pid, signal.SIGKILL)
        await wait_for(pilot, lambda: row.has_class("-failed"), timeout=30, what="the failure")
        run = store.get_training_run(row.run.id)
        expected = f"{run.name} failed: the trainer was killed by SIGKILL. Log: {run.log_path}"
        assert expected in row_text(row) and expected in notifications(pilot)
        assert not row.query(".run-switch")  # nothing to chat with


async def test_train_errors_are_notifications(home, store):
    async with build_app(FakeEngine(name="tiny"), home=home, store=store).run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "/train --base ./nowhere")  # the form says what is wrong, where it can be fixed
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, TrainDialogScreen), timeout=60, what="the form")
        error = pilot.app.screen.query_one("#train-error", Label)
        await wait_for(pilot, lambda: "no model directory" in str(error.render()), timeout=60, what="the error")
        assert pilot.app.screen.query_one("#train-start", Button).disabled
        await pilot.press("escape")
        await pilot.pause()
        assert store.list_training_runs() == [] and not screen.training.display
        await send(pilot, "/train --epochs lots")  # options that do not parse: one line at once, no form
        assert any("--epochs" in n for n in notifications(pilot)) and not isinstance(pilot.app.screen, TrainDialogScreen)
        await send(pilot, "/runs cancel")
        assert "no run is training; /runs lists them" in notifications(pilot)


async def test_runs_finished_while_closed_are_told_and_offered_in_the_switcher(home, store):
    run = store.create_training_run("tiny-sft-1", base_model="tiny", conversation_ids=[1, 2],
                                    log_path=str(home.runs / "tiny-sft-1.log"), output_dir=str(home.models / "tiny"))
    store.update_training_run(run.id, status="running", pid=2**22 + 7)  # its process is long gone
    (home.runs / "tiny-sft-1.log").write_text(json.dumps({"time": run.created_at + 60, **done_event()}) + "\n")
    (home.models / "tiny-sft-1").symlink_to(home.models / "tiny", target_is_directory=True)
    async with build_app(FakeEngine(name="tiny"), home=home, store=store).run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert any(n.startswith("While the app was closed: tiny-sft-1 finished in 1 min 00 s") for n in
                   notifications(pilot))
        assert store.get_training_run(run.id).status == "finished"

        await pilot.press("alt+m")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, ModelPickerScreen), what="the switcher")
        models = pilot.app.screen.query_one("#models", OptionList)
        await wait_for(pilot, lambda: "tiny-sft-1" in option_ids(models), what="the run listed")
        description = str(models.get_option("tiny-sft-1").prompt)
        assert "trained from tiny on 2 conversations" in description and "validation perplexity 12.50 -> 8.25" in description
        await pilot.press("escape")

        await send(pilot, "/runs")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, RunsScreen), what="the runs list")
        runs = pilot.app.screen.query_one("#runs", OptionList)
        assert "tiny-sft-1  finished" in str(runs.get_option("tiny-sft-1").prompt)
        runs.highlighted = runs.get_option_index("tiny-sft-1")
        await pilot.press("enter")
        await wait_for(pilot, lambda: chat_screen(pilot).engine.name == "tiny-sft-1", what="the switch")


async def test_runs_list_deletes_a_finished_runs_folder_after_asking_and_refuses_a_running_one(home, store):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "trainer"])  # passes for one
    try:
        running = store.create_training_run("tiny-sft-2", base_model="tiny", log_path=str(home.runs / "r2.log"))
        store.update_training_run(running.id, status="running", pid=sleeper.pid)
        (home.runs / "r2.log").write_text(json.dumps(step_event(1, 8, 2.0)) + "\n")
        folder = home.models / "tiny-sft-1"
        run = store.create_training_run("tiny-sft-1", base_model="tiny", output_dir=str(folder))
        store.update_training_run(run.id, status="finished", metrics=done_event()["metrics"])
        folder.mkdir()
        for name in ("train_config.json", "config.json", "COMPLETE"):
            (folder / name).write_text("{}")
        (folder / "model.safetensors").write_bytes(b"\0" * 2_000_000)
        async with build_app(FakeEngine(name="tiny"), home=home, store=store).run_test(size=SIZE) as pilot:
            await ready(pilot)
            await send(pilot, "/runs")
            await wait_for(pilot, lambda: isinstance(pilot.app.screen, RunsScreen), what="the runs list")
            runs = pilot.app.screen.query_one("#runs", OptionList)

            runs.highlighted = runs.get_option_index("tiny-sft-2")
            await pilot.press("d")
            await wait_for(pilot, lambda: any("run tiny-sft-2 is still training; stop it first" in n
                                              for n in notifications(pilot)), what="the refusal")
            assert isinstance(pilot.app.screen, RunsScreen)  # nothing asked

            runs.highlighted = runs.get_option_index("tiny-sft-1")
            await pilot.press("d")
            await wait_for(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen), what="the question")
            assert "Delete run tiny-sft-1's model folder (2 MB)?" in str(
                pilot.app.screen.query_one(".dialog-title", Label).render())
            await pilot.press("escape")  # no: nothing happens
            await wait_for(pilot, lambda: isinstance(pilot.app.screen, RunsScreen), what="the list again")
            assert folder.is_dir()

            await pilot.press("d")
            await wait_for(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen), what="the question")
            await pilot.press("y")
            await wait_for(pilot, lambda: "deleted tiny-sft-1's model folder: 2 MB freed" in notifications(pilot),
                           what="the deletion")
            assert not folder.exists() and store.get_training_run(run.id).status == "deleted"
            assert "tiny-sft-1  deleted" in str(runs.get_option("tiny-sft-1").prompt)
            await pilot.press("enter")  # a deleted run has nothing to chat with
            await wait_for(pilot, lambda: "tiny-sft-1 is deleted: only a finished run has a model to chat with"
                           in notifications(pilot), what="the warning")
            assert isinstance(pilot.app.screen, RunsScreen)
    finally:
        sleeper.kill()
        sleeper.wait()
