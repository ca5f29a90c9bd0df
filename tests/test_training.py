"""`/train`'s neutral core: options, the preview, estimates, launching, following and stopping runs.

Runs here use scripted fake trainers (fast and exact); the real trainer runs in the REPL and TUI tests.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sessions import Store
from trainer.schedule import LEARNING_RATES as DEFAULT_LR
from trainer.home import DataHome
from trainer.replay import default_replay_count
from trainer.schedule import auto_epochs
from tui_chat.training.errors import TrainingError
from tui_chat.training.estimate import (
    GIB,
    REFERENCE,
    RunWork,
    count_parameters,
    estimate_time,
    plan_device,
    replay_tokens_each,
)
from tui_chat.training.launch import cancel_run, start_training
from tui_chat.training.monitor import RunMonitor, RunWatch, reconcile_runs
from tui_chat.training.options import parse_train_options, train_help
from tui_chat.training.plan import plan_training
from tui_chat.training.summary import finish_summary, progress_line, run_line, sparkline

from .train_fixtures import (
    add_chat,
    done_event,
    fake_trainer,
    fill_store,
    home,  # noqa: F401  (a fixture)
    models_home,  # noqa: F401  (a fixture)
    step_event,
    store,  # noqa: F401  (a fixture)
    wait_for,
)


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


def test_the_preview_knows_what_the_base_models_cache_holds(store: Store, home: DataHome) -> None:
    from trainer.config import SFTConfig
    from trainer.progress import ProgressReporter
    from trainer.sft import run_sft

    fill_store(store, 10)
    first = plan(store, home)
    assert first.work.replay_answers > 0 and not first.work.baseline_cached and not first.work.eval_before_cached
    assert first.work.eval_samples == 1 and first.estimate.first_time_s > 0
    assert "(tui-chat's 2-core test machine; your first run measures this one)" in "\n".join(first.preview_lines())
    # A run of the same base model on the same conversations fills the cache (and the timings) ...
    run_sft(SFTConfig(data=str(first.export.paths["all"]), model="tiny", home=str(home.root), max_steps=1,
                      out=str(home.models / "filled"), progress="none"), ProgressReporter("none"))
    first.discard()
    # ... so the next preview knows only training is left to pay for, and times it from that run.
    again = plan(store, home)
    assert (again.work.replay_answers, again.work.baseline_cached, again.work.eval_before_cached) == (0, True, True)
    assert again.estimate.first_time_s == 0 and again.estimate.source == "from your last run of tiny on this machine"
    assert "(from your last run of tiny on this machine)" in "\n".join(again.preview_lines())


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


def timing(base: str, parameters: int, *, train_s: float = 10.0, cached: bool = True) -> dict:
    """A runs/timings.jsonl line as the trainer writes it: 1,000 tokens trained, 0.5 s outside the phases."""
    phases = {"load": {"s": 1.0}, "replay": {"generated": 0 if cached else 10, "s": 0.0 if cached else 5.0},
              "baseline": {"cached": cached, "generated": 0 if cached else 48, "s": 0.5 if cached else 8.0},
              "distill": {"tokens": 1000, "s": 1.0}, "train": {"tokens": 1000, "s": train_s},
              "retention": {"prompts": 48, "s": 6.0}, "save": {"s": 1.0}}
    return {"base_model": base, "base_parameters": parameters, "method": "lora", "device": "cpu", "startup_s": 4.0,
            "total_s": 4.5 + sum(p["s"] for p in phases.values()), "replay_tokens_each": 80.0, "phases": phases}


WARM = RunWork(trained_tokens=2000, replay_tokens=1000, replay_answers=0, retention=True, baseline_cached=True,
               eval_samples=0, eval_before_cached=False)


def test_the_estimate_comes_from_this_machines_runs_then_other_models_then_the_reference() -> None:
    options = {"base_name": "small", "method": "lora", "device": "cpu", "parameters": 100}
    assert estimate_time([], WARM, **{**options, "device": "cuda"}) is None  # a GPU never measured: no guess
    first = estimate_time([], WARM, **options)
    assert "2-core test machine" in first.source and "your first run measures this one" in first.source
    # Another model's runs, scaled by size: one twice this one's size trains this one twice as fast.
    scaled = estimate_time([timing("big", 200)], WARM, **options)
    assert scaled.train_s == pytest.approx(2000 * 10.0 / 1000 / 2) and "scaled by model size" in scaled.source
    # This model's own runs: the median of the last ones, phase by phase. 4 s start-up + 1 load + 1 distill
    # (1,000 replay tokens) + training + 0.5 cached baseline + 6 retention + 1 save + 0.5 left over from the runs.
    own = [timing("small", 100, train_s=t) for t in (50.0, 10.0, 20.0)]
    estimate = estimate_time(own, WARM, **options)
    assert estimate.source == "from your last 3 runs of small on this machine"
    assert estimate.train_s == pytest.approx(2000 * 20.0 / 1000) and estimate.tokens_per_s == pytest.approx(50.0)
    assert estimate.seconds == pytest.approx(4 + 1 + 1 + 40 + 0.5 + 6 + 1 + 0.5) and estimate.first_time_s == 0
    assert estimate_time(own[:1], WARM, **options).source == "from your last run of small on this machine"
    # Only the last HISTORY runs count, so the estimate follows the machine.
    old = [timing("small", 100, train_s=500.0)] * 10
    assert estimate_time(old + own + own[1:], WARM, **options).train_s == estimate.train_s  # the newest 5
    assert replay_tokens_each(own, "small") == 80.0 and replay_tokens_each([], "small") == REFERENCE["replay_tokens_each"]


def test_the_estimate_adds_what_the_base_models_cache_does_not_hold() -> None:
    options = {"base_name": "small", "method": "lora", "device": "cpu", "parameters": 100}
    runs = [timing("small", 100, cached=False), timing("small", 100)]  # the first run generated, the second not
    warm = estimate_time(runs, WARM, **options)
    cold = estimate_time(runs, dataclasses.replace(WARM, replay_answers=20, baseline_cached=False), **options)
    # 20 replay answers at 0.5 s each, and the retention baseline measured whole (8 s) instead of read (0.5 s).
    assert cold.first_time_s == pytest.approx(20 * 0.5 + 8.0)
    assert cold.seconds - warm.seconds == pytest.approx(20 * 0.5 + 8.0 - 0.5)
    evaluated = estimate_time(runs, dataclasses.replace(WARM, eval_samples=2), **options)
    assert evaluated.seconds > warm.seconds  # no run measured evaluation: the reference's rate per sample


def test_the_estimate_counts_choosing_the_kept_share_only_when_the_run_chooses() -> None:
    options = {"base_name": "small", "method": "lora", "device": "cpu", "parameters": 100}
    run = timing("small", 100)
    run["phases"].update({"check": {"generated": 0, "s": 0.2}, "interpolate": {"s": 3.0}})
    run["total_s"] += 0.2 + 3.0
    keeps_all = estimate_time([run], WARM, **options)  # not chosen: the whole update is kept, unmeasured
    chooses = estimate_time([run], dataclasses.replace(WARM, chooses_scale=True), **options)
    assert chooses.seconds - keeps_all.seconds == pytest.approx(0.2 + 3.0)
    # The check's answers not cached yet: generated at replay's rate (0.5 s each in the first run), once.
    first = estimate_time([timing("small", 100, cached=False), run],
                          dataclasses.replace(WARM, chooses_scale=True, check_answers=60), **options)
    assert first.first_time_s == pytest.approx(60 * 0.5)


def test_gpu_memory_decides_where_training_runs() -> None:
    fits = plan_device("cuda", None, 100_000_000, cpu_count=8, gpu_memory=(20 * GIB, 80 * GIB))
    assert fits.device == "cuda" and "both fit" in fits.notes[0] and fits.env == {}
    full = plan_device("cuda", "full", 3_000_000_000, cpu_count=8, gpu_memory=(20 * GIB, 80 * GIB))
    assert full.device == "cpu" and full.env == {"CUDA_VISIBLE_DEVICES": ""} and full.nice > 0
    assert "only 20.0 GiB is free" in full.notes[0] and "runs on the CPU instead" in full.notes[0]
    cpu = plan_device("cpu", None, None, cpu_count=2)
    assert cpu.device == "cpu" and "the 2 cores" in cpu.notes[0] and "one fewer while the chat" in cpu.notes[0]
    assert "1 of 2 cores" in plan_device("cpu", None, None, cpu_count=2, threads=1).notes[0]
    assert len(cpu.notes) == 1  # a quiet machine: nothing about load
    busy = plan_device("cpu", None, None, cpu_count=2, load=5.8)
    assert busy.notes[1].startswith("this machine is busy now (load 5.8 on 2 cores)")
    moved = plan_device("cuda", "full", 3_000_000_000, cpu_count=2, gpu_memory=(20 * GIB, 80 * GIB), load=3.0)
    assert any("busy now" in note for note in moved.notes)


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
    assert "BLEU 3.0 -> 9.5, ROUGE-L 0.100 -> 0.250. Your held-out chats: 34% less surprising" in summary
    assert summary.endswith(f"Chat with it: /model {run.name}")


def test_the_summary_tells_retention_and_its_warning(store: Store) -> None:
    run = store.create_training_run("r", base_model="smollm2")
    retention = {"retention": 0.75, "facts_kept": 15, "facts_total": 20, "warning": "retention 75% is below 90%"}
    run = store.update_training_run(run.id, status="finished", metrics={**done_event()["metrics"], "retention": retention})
    summary = finish_summary(run)
    assert "ROUGE-L 0.100 -> 0.250. Warning: retention 75% is below 90%" in summary
    assert "General knowledge kept: 15 of 20 answers (75%)" in summary and summary.count("15") == 1


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


def test_planning_a_run_leaves_torch_out_of_the_callers_process(store: Store, home: DataHome, tmp_path: Path) -> None:
    """`/train`'s preview runs in the chat window's process, which never imports torch: the part that needs the
    base model (its tokenizer, the device, the trainer's cache) runs in a child. Checked in a fresh interpreter, as
    this test process has torch already."""
    db = tmp_path / "chat.db"
    file_store = Store.open(db)
    fill_store(file_store, 3)
    file_store.close()
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from sessions import Store\n"
        "from trainer.home import DataHome\n"
        "from tui_chat.training.plan import plan_training\n"
        f"plan = plan_training(Store.open({str(db)!r}), DataHome(Path({str(home.root)!r})), [], current_model='tiny')\n"
        "print(plan.data.train_conversations + plan.data.val_conversations, plan.data.tokens > 0)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    counted, loaded = result.stdout.strip().splitlines()[-2:]
    assert counted == "3 True"  # the preview was worked out, tokens counted with the tiny model's tokenizer
    assert loaded == "[]"


def test_the_preview_says_how_much_disk_the_run_takes(store: Store, home: DataHome) -> None:
    from trainer.rundir import estimated_run_bytes

    fill_store(store, 4)
    for method in ("lora", "full"):
        preview = plan(store, home, "--method", method)
        size = estimated_run_bytes(preview.base_parameters, method=method)
        (line,) = [line for line in preview.preview_lines() if line.startswith("Disk: ")]
        assert line == (f"Disk: about {size.final / 1e6:,.0f} MB for the trained model, up to {size.peak / 1e6:,.0f} MB "
                        "while it trains (its checkpoint); `tui-chat models delete NAME` frees it later")
        preview.discard()
