"""`/train`'s neutral core: options, the preview, estimates, launching, following and stopping runs.

Runs here use scripted fake trainers (fast and exact); the real trainer runs in the REPL and TUI tests.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest

from sessions import Store, memory_database
from trainer.config import DEFAULT_LR
from trainer.home import DataHome
from trainer.replay import default_replay_count
from trainer.schedule import auto_epochs
from tui_chat.training.errors import TrainingError
from tui_chat.training.estimate import (
    GIB,
    REFERENCE_OVERHEAD_S,
    REFERENCE_PARAMETERS,
    REFERENCE_TOKENS_PER_S,
    count_parameters,
    estimate_speed,
    plan_device,
)
from tui_chat.training.launch import cancel_run, start_training
from tui_chat.training.monitor import RunMonitor, RunWatch, reconcile_runs
from tui_chat.training.options import parse_train_options, train_help
from tui_chat.training.plan import plan_training
from tui_chat.training.summary import finish_summary, progress_line, run_line, sparkline

from .training_helpers import (
    add_chat,
    done_event,
    fake_trainer,
    fill_store,
    home_sharing_tiny,
    step_event,
    tiny_home,
    wait_for,
)


@pytest.fixture(scope="module")
def models_home(tmp_path_factory: pytest.TempPathFactory) -> DataHome:
    return tiny_home(tmp_path_factory.mktemp("training") / "shared")


@pytest.fixture
def home(tmp_path: Path, models_home: DataHome) -> DataHome:
    """A fresh home whose models/tiny links to the module's tiny model."""
    return home_sharing_tiny(tmp_path, models_home)


@pytest.fixture
def store() -> Store:
    return Store(memory_database())


def plan(store: Store, home: DataHome, *argv: str):
    return plan_training(store, home, list(argv), current_model="tiny")


# ---- options ------------------------------------------------------------------------------------------------


def test_options_pass_the_changed_trainer_settings_on_and_keep_the_chats_own() -> None:
    options = parse_train_options(["--epochs", "5", "--method", "full", "--base", "my-run", "--lora-r", "8", "-y"])
    assert options.base == "my-run" and options.yes
    assert options.config.epochs == 5 and options.config.method == "full"
    assert options.trainer_args == ("--method", "full", "--lora-r", "8", "--epochs", "5.0")
    assert parse_train_options(["--lora-r", "4"]).trainer_args == ()  # 4 is the default: nothing to pass on
    assert parse_train_options([]).trainer_args == ()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "many"], "argument --epochs: invalid float value: 'many'"),
        (["--method", "qlora"], "unknown --method 'qlora'; use lora or full"),
        (["--data", "x.jsonl"], "unrecognized arguments: --data x.jsonl"),
        (["--max-steps", "0"], "--max-steps must be at least 1"),
    ],
)
def test_bad_options_are_one_line_before_anything_happens(argv: list[str], message: str) -> None:
    with pytest.raises(TrainingError) as caught:
        parse_train_options(argv)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_help_lists_the_chats_options_and_the_trainers() -> None:
    text = train_help()
    assert "--base SPEC" in text and "--yes" in text and "--lora-r" in text and "--epochs" in text
    assert "--data" not in text and "--out" not in text


# ---- the preview --------------------------------------------------------------------------------------------


def test_preview_counts_what_is_trained_on_and_what_is_left_out(store: Store, home: DataHome) -> None:
    fill_store(store, 10)
    previewed = plan(store, home, "--max-steps", "3")
    data = previewed.data
    assert (data.train_conversations, data.val_conversations) == (9, 1)  # 10 usable, a tenth held out
    assert data.messages == 20
    assert data.left_out["excluded"] == 1 and data.left_out["thumbs_down"] == 1 and data.left_out["unfinished"] == 1
    assert data.tokens > data.assistant_tokens > 0 and data.token_note == ""  # the tiny model's own tokenizer
    assert data.over_long == 0
    assert previewed.total_steps == 3 and previewed.method == "lora" and previewed.lr == DEFAULT_LR["lora"]
    text = "\n".join(previewed.preview_lines())
    assert "Train on: 10 conversations (9 to train on, 1 held out to measure it), 20 messages" in text
    assert "1 conversation excluded from training" in text and "1 reply rated thumbs-down" in text
    assert "1 unfinished reply" in text
    assert "Base model: tiny" in text and "LoRA (rank 4, alpha 8)" in text and "3 steps" in text
    assert "CPU: training uses" in text and "low priority" in text
    # Replay: the base model's own answers to general prompts, as many as the trainer mixes in by default.
    replay = default_replay_count(9)
    assert previewed.schedule.replay == replay
    assert f"Replay: {replay} general conversations answered by tiny itself are mixed in" in text
    assert f"Run: {previewed.name}" in text
    # The snapshot is exactly what will be trained on, waiting in a pending folder of datasets/.
    snapshot = previewed.export.paths["all"]
    assert snapshot.parent.parent == home.datasets and snapshot.parent.name.startswith(".pending-")
    assert len(snapshot.read_text().splitlines()) == 10
    previewed.discard()
    assert not snapshot.parent.exists()


def test_preview_follows_the_trainers_schedule(store: Store, home: DataHome) -> None:
    fill_store(store, 10)
    automatic = plan(store, home)
    assert automatic.schedule.automatic and automatic.epochs == auto_epochs(9)
    assert f"{auto_epochs(9):g} epochs (chosen for 9 conversations)" in "\n".join(automatic.preview_lines())
    # 9 conversations and the replayed ones a pass, in steps of 4 x 2 conversations.
    per_pass = 9 + default_replay_count(9)
    assert automatic.total_steps == auto_epochs(9) * math.ceil(math.ceil(per_pass / 4) / 2)
    alone = plan(store, home, "--no-replay", "--epochs", "2")
    assert alone.schedule.replay == 0 and alone.total_steps == 2 * math.ceil(math.ceil(9 / 4) / 2)
    assert "Replay: off" in "\n".join(alone.preview_lines())
    assert plan(store, home, "--replay", "40").schedule.replay == 40


def test_preview_finds_over_long_conversations_with_the_base_tokenizer(store: Store, home: DataHome) -> None:
    fill_store(store, 6)
    add_chat(store, [("tell me everything " * 40, "the quick brown fox " * 40)])
    data = plan(store, home, "--max-length", "64").data
    assert data.over_long == 1
    assert "1 conversation too long" in "\n".join(plan(store, home, "--max-length", "64").preview_lines())


def test_preview_estimates_tokens_when_the_tokenizer_is_not_here(store: Store, home: DataHome) -> None:
    fill_store(store, 6)
    (home.models / "no-tokenizer").mkdir()
    (home.models / "no-tokenizer" / "config.json").write_text("{}")
    data = plan(store, home, "--base", "no-tokenizer").data
    assert data.assistant_tokens is None and data.over_long is None
    assert "estimated at ~4 characters a token" in data.token_note


def test_preview_errors_are_one_line(store: Store, home: DataHome) -> None:
    with pytest.raises(TrainingError, match="nothing to train on"):
        plan(store, home)
    add_chat(store, [("q", "a")])
    with pytest.raises(TrainingError, match="--base: no model directory at ./missing"):
        plan(store, home, "--base", "./missing")
    assert list(home.datasets.iterdir()) == []  # nothing left behind


def test_speed_comes_from_the_newest_comparable_run_then_scaled_then_the_reference(store: Store) -> None:
    def finished(name: str, base: str, tokens_per_s: float, parameters: int) -> None:
        run = store.create_training_run(name, base_model=base, params={"base_parameters": parameters})
        store.update_training_run(run.id, status="finished", metrics={
            "method": "lora", "device": "cpu", "tokens_per_s": tokens_per_s, "train_time_s": 100.0, "wall_s": 160.0,
            "after": {"val_ppl": 3.0}})

    assert estimate_speed([], base_name="x", method="lora", device="cuda", parameters=None) is None
    reference = estimate_speed([], base_name="x", method="lora", device="cpu", parameters=REFERENCE_PARAMETERS * 2)
    assert reference.tokens_per_s == REFERENCE_TOKENS_PER_S["lora"] / 2 and "test machine" in reference.source
    finished("big-run", "big", 100.0, 400)
    scaled = estimate_speed(store.list_training_runs(), base_name="small", method="lora", device="cpu",
                            parameters=100)
    assert scaled.tokens_per_s == 400.0 and "scaled by model size from run big-run" in scaled.source
    finished("small-run", "small", 300.0, 100)
    same = estimate_speed(store.list_training_runs(), base_name="small", method="lora", device="cpu", parameters=100)
    assert (same.tokens_per_s, same.overhead_s, same.source) == (300.0, 60.0, "measured in run small-run")
    assert same.seconds(3000) == 70.0
    quick = estimate_speed(store.list_training_runs(), base_name="small", method="lora", device="cpu",
                           parameters=REFERENCE_PARAMETERS, evaluate=False)
    assert quick.tokens_per_s == 300.0 and quick.overhead_s == REFERENCE_OVERHEAD_S[False]  # that run evaluated


def test_gpu_memory_decides_where_training_runs() -> None:
    fits = plan_device("cuda", None, 100_000_000, cpu_count=8, gpu_memory=(20 * GIB, 80 * GIB))
    assert fits.device == "cuda" and "both fit" in fits.notes[0] and fits.env == {}
    full = plan_device("cuda", "full", 3_000_000_000, cpu_count=8, gpu_memory=(20 * GIB, 80 * GIB))
    assert full.device == "cpu" and full.env == {"CUDA_VISIBLE_DEVICES": ""} and full.nice > 0
    assert "only 20.0 GiB is free" in full.notes[0] and "runs on the CPU instead" in full.notes[0]
    cpu = plan_device("cpu", None, None, cpu_count=2)
    assert cpu.device == "cpu" and "the 2 cores" in cpu.notes[0] and "one fewer while the chat" in cpu.notes[0]
    assert "1 of 2 cores" in plan_device("cpu", None, None, cpu_count=2, threads=1).notes[0]


def test_parameters_are_counted_from_safetensors_headers(models_home: DataHome) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(models_home.models / "tiny")
    assert count_parameters(models_home.models / "tiny") == sum(p.numel() for p in model.parameters())
    assert count_parameters(models_home.models / "nothing-here") is None


# ---- launching and following runs ----------------------------------------------------------------------------


def start(store: Store, home: DataHome, steps: list, *argv: str) -> RunMonitor:
    fill_store(store, 6)
    return start_training(store, home, plan(store, home, *argv), python=fake_trainer(home.root, steps))


def follow(monitor: RunMonitor) -> list[str]:
    kinds: list[str] = []
    wait_for(lambda: kinds.extend(e.kind for e in monitor.poll()) or monitor.ended, timeout_s=30)
    return kinds


def test_a_run_is_recorded_launched_followed_and_finished(store: Store, home: DataHome) -> None:
    steps = [{"event": "info", "message": "loading tiny"},
             {"event": "start", "total_steps": 2, "start_step": 0},
             step_event(1, 2, 3.0), step_event(2, 2, 2.5), done_event()]
    monitor = start(store, home, steps, "--lora-r", "8")
    run = monitor.run
    assert run.status == "running" and run.pid == monitor.process.pid
    assert run.base_model == "tiny" and len(run.conversation_ids) == 6
    dataset = Path(run.dataset_path)
    assert dataset.parent == home.datasets / run.name and dataset.is_file()
    assert (dataset.parent / "messages.manifest.json").is_file()
    import hashlib
    assert run.dataset_sha256 == hashlib.sha256(dataset.read_bytes()).hexdigest()
    assert run.output_dir == str(home.models / run.name) and run.log_path == str(home.runs / f"{run.name}.log")
    assert run.params["command"][:3] == ["-m", "trainer", "sft"] and "--lora-r" in run.params["command"]
    assert oct(os.stat(run.log_path).st_mode & 0o777) == "0o600"

    kinds = follow(monitor)
    assert kinds == ["info", "start", "step", "step", "done", "finished"]
    assert monitor.progress.losses == [3.0, 2.5] and monitor.progress.step == 2
    stored = store.get_training_run(run.id)
    assert stored.status == "finished" and stored.finished_at and stored.metrics["tokens_per_s"] == 250.0
    assert 0 <= stored.metrics["wall_s"] < 30  # launch to done
    summary = finish_summary(stored)
    assert "validation perplexity 12.50 -> 8.25, BLEU 3.0 -> 9.5, ROUGE-L 0.100 -> 0.250" in summary
    assert summary.endswith(f"Chat with it: /model {run.name}")


def test_the_summary_tells_retention_and_its_warning(store: Store) -> None:
    run = store.create_training_run("r", base_model="smollm2")
    retention = {"retention": 0.75, "facts_kept": 15, "facts_total": 20, "warning": "retention 75% is below 90%"}
    run = store.update_training_run(run.id, status="finished", metrics={**done_event()["metrics"], "retention": retention})
    summary = finish_summary(run)
    assert "ROUGE-L 0.100 -> 0.250, retention 75% (15/20 general facts kept). Warning: retention 75% is below 90%" \
        in summary


def test_a_trainer_error_line_fails_the_run(store: Store, home: DataHome) -> None:
    monitor = start(store, home, [{"event": "error", "message": "tiny: cannot load the model"}, ["exit", 1]])
    assert follow(monitor)[-1] == "failed"
    run = store.get_training_run(monitor.run.id)
    assert run.status == "failed" and run.error == "tiny: cannot load the model"
    assert finish_summary(run) == f"{run.name} failed: tiny: cannot load the model. Log: {run.log_path}"


def test_a_crash_fails_the_run_with_the_traceback_s_last_line(store: Store, home: DataHome) -> None:
    traceback = ["Traceback (most recent call last):", '  File "x.py", line 1, in <module>',
                 "RuntimeError: CUDA out of memory", ["exit", 1]]
    monitor = start(store, home, ["some warning", *traceback])
    follow(monitor)
    assert store.get_training_run(monitor.run.id).error == "RuntimeError: CUDA out of memory"


def test_a_killed_trainer_fails_the_run_and_says_so(store: Store, home: DataHome) -> None:
    monitor = start(store, home, [{"event": "start", "total_steps": 9}, 60.0])
    wait_for(lambda: monitor.poll() or monitor.progress.total)
    os.kill(monitor.run.pid, signal.SIGKILL)
    follow(monitor)
    run = store.get_training_run(monitor.run.id)
    assert run.status == "failed" and run.error == "the trainer was killed by SIGKILL"
    assert run.log_path in finish_summary(run)


def test_cancel_stops_the_trainer_with_a_checkpoint(store: Store, home: DataHome) -> None:
    monitor = start(store, home, [{"event": "start", "total_steps": 9}, step_event(1, 9, 2.0), "wait-for-signal"])
    wait_for(lambda: monitor.poll() or monitor.progress.step == 1)
    assert cancel_run(store, monitor.run).status == "cancelled"
    assert follow(monitor)[-2:] == ["stopped", "cancelled"]
    run = store.get_training_run(monitor.run.id)
    assert run.status == "cancelled" and run.finished_at and run.metrics["checkpoint"] == "/runs/ckpt"
    assert finish_summary(run) == f"{run.name} was cancelled at step 1; its checkpoint is in /runs/ckpt"
    with pytest.raises(TrainingError, match="is not running"):
        cancel_run(store, run)


def test_the_run_goes_on_after_the_app_and_is_caught_up_with_later(store: Store, home: DataHome) -> None:
    monitor = start(store, home, [{"event": "start", "total_steps": 2}, 1.0, step_event(2, 2, 1.0), done_event()])
    process, run = monitor.process, monitor.run
    del monitor  # the app closes; nobody follows the run
    assert reconcile_runs(store)[0].ended is False  # still running
    process.wait(timeout=30)
    monitors = reconcile_runs(store)  # the next start
    assert [m.ended for m in monitors] == [True]
    assert store.get_training_run(run.id).status == "finished"
    assert reconcile_runs(store) == []  # told once


def test_a_run_whose_process_vanished_is_caught_up_as_failed(store: Store, home: DataHome) -> None:
    run = store.create_training_run("ghost", base_model="tiny", log_path=str(home.runs / "ghost.log"))
    store.update_training_run(run.id, status="running", pid=2**22 + 12345)  # beyond pid_max: no such process
    (home.runs / "ghost.log").write_text(json.dumps(step_event(1, 4, 2.0)) + "\n")
    watch = RunWatch(store)
    (ended,) = watch.catch_up()
    assert ended.status == "failed" and "stopped without finishing" in ended.error and watch.active == []
    pending = store.create_training_run("never-started", base_model="tiny")
    assert reconcile_runs(store)[0].run.error == "the app stopped before the trainer started"
    assert store.get_training_run(pending.id).status == "failed"


def test_the_watch_names_the_run_to_cancel(store: Store, home: DataHome) -> None:
    watch = RunWatch(store)
    with pytest.raises(TrainingError, match="no run is training"):
        watch.find(None)
    monitor = start(store, home, [60.0])
    watch.follow(monitor)
    assert watch.find(None).name == monitor.name
    cancel_run(store, watch.find(None))
    wait_for(lambda: watch.poll())
    assert watch.active == [] and store.get_training_run(monitor.run.id).status == "cancelled"


# ---- words ---------------------------------------------------------------------------------------------------


def test_progress_and_run_lines(store: Store) -> None:
    monitor = RunMonitor(store, store.create_training_run("r1", base_model="smollm2", status="running"))
    assert progress_line("r1", monitor.progress) == "training r1: starting the trainer…"
    monitor._apply({"event": "start", "total_steps": 4, "start_step": 0})
    for step, loss in enumerate([3.0, 2.0, 1.0], start=1):
        monitor._apply(step_event(step, 4, loss))
    line = progress_line("r1", monitor.progress)
    assert line.startswith("training r1 ") and "3/4" in line and "loss 1.000 █▅▁" in line
    assert "200 tokens/s" in line and "ETA 0 s" in line
    assert "running" in run_line(monitor.run, monitor.progress) and "step 3/4" in run_line(monitor.run, monitor.progress)
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█" and sparkline([]) == ""
