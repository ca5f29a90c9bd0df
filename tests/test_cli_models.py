"""`tui-chat models` and `tui-chat models show` through click's CliRunner, on runs recorded in a memory store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sessions import Store, memory_database
from trainer.home import DataHome
from tui_chat.cli import CliContext, main

from .train_fixtures import add_chat, step_event


@pytest.fixture
def home(tmp_path: Path) -> DataHome:
    return DataHome(tmp_path / "home").ensure()


@pytest.fixture
def store() -> Store:
    return Store(memory_database())


@pytest.fixture
def invoke(home: DataHome, store: Store):
    def run(*args: str, input: str | None = None):
        context = CliContext(home, _store=store)
        return CliRunner(env={"COLUMNS": "200"}).invoke(main, list(args), input=input, obj=context)

    return run


def finished_run(store: Store, home: DataHome, name: str, conversation_ids: list[int]) -> None:
    run = store.create_training_run(
        name, base_model="smollm2", conversation_ids=conversation_ids, dataset_path=str(home.datasets / name),
        dataset_sha256="ab" * 32, params={"method": "lora", "total_steps": 6, "lr": 3e-4},
        output_dir=str(home.models / name), log_path=str(home.runs / f"{name}.log"),
    )
    metrics = {"steps": 6, "wall_s": 75.0, "before": {"val_ppl": 9.5, "bleu": 2.0, "rouge_l": 0.2},
               "after": {"val_ppl": 4.25, "bleu": 8.0, "rouge_l": 0.4}}
    store.update_training_run(run.id, status="finished", metrics=metrics, finished_at=run.created_at + 75)
    (home.models / name).mkdir()
    (home.models / name / "config.json").write_text("{}")


def test_models_lists_the_bundled_model_runs_with_status_and_other_local_models(invoke, store, home) -> None:
    finished_run(store, home, "smollm2-sft-1", [])
    failed = store.create_training_run("smollm2-sft-2", base_model="smollm2")
    store.update_training_run(failed.id, status="failed", error="RuntimeError: out of memory")
    running = store.create_training_run("smollm2-sft-3", base_model="smollm2", log_path=str(home.runs / "r3.log"))
    # The store says running, but its process is gone (a pid beyond pid_max): `models` catches up and says failed.
    store.update_training_run(running.id, status="running", pid=2**22 + 999)
    (home.runs / "r3.log").write_text(json.dumps(step_event(2, 8, 1.5)) + "\n")
    (home.models / "my-import").mkdir()
    (home.models / "my-import" / "config.json").write_text("{}")
    result = invoke("models")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()

    def entry(name: str) -> tuple[str, str]:
        """A model's line and the line under it (its result)."""
        index = next(i for i, line in enumerate(lines) if line.startswith(name + "  "))
        return lines[index], lines[index + 1]

    assert entry("smollm2")[0].startswith("smollm2  bundled  converted on first use")  # not converted in this home
    line, result_line = entry("smollm2-sft-1")
    assert line.startswith("smollm2-sft-1  run  finished  from smollm2")
    assert result_line.strip().startswith("validation perplexity 9.50 -> 4.25")
    line, result_line = entry("smollm2-sft-2")
    assert "  run  failed  " in line and result_line.strip() == "RuntimeError: out of memory"
    line, result_line = entry("smollm2-sft-3")
    assert "  run  failed  " in line and "stopped without finishing" in result_line
    assert entry("my-import")[0].startswith("my-import  model  ready  ")
    assert invoke("models", "list").output == result.output


def test_models_show_gives_the_lineage_both_ways(invoke, store, home) -> None:
    used = [add_chat(store, [(f"question {n}", f"answer {n}")], model="smollm2") for n in range(3)]
    finished_run(store, home, "smollm2-sft-1", used)
    store.delete_conversation(used[2])
    talk = store.create_conversation(model="smollm2-sft-1")
    store.add_message(talk.id, "user", "hi")
    store.add_message(talk.id, "assistant", "Hello from the trained model", model="smollm2-sft-1")
    result = invoke("models", "show", "smollm2-sft-1")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "smollm2-sft-1 finished in 1 min 15 s (6 steps): BLEU 2.0 -> 8.0" in out
    assert "Your held-out chats: 55% less surprising to the model (perplexity 9.50 -> 4.25)" in out
    assert "Trained on 3 conversations:" in out
    assert f"#{used[0]}  question 0" in out and f"#{used[2]}  (deleted since)" in out
    assert "Replies written by smollm2-sft-1:" in out and f"#{talk.id}" in out
    assert "Hello from the trained model" in out
    assert f"dataset: {home.datasets / 'smollm2-sft-1'} (sha256 {'ab' * 32})" in out

    base = invoke("models", "show", "smollm2").output
    assert "Runs trained from smollm2:" in base and "smollm2-sft-1  finished" in base
    assert base.count("answer") == 2  # the replies the base model wrote (the deleted chat's went with it)


def test_models_show_an_unknown_name_is_one_line(invoke) -> None:
    result = invoke("models", "show", "nobody")
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: no run or model called 'nobody' has trained or replied; `tui-chat models` lists them"
    )


@pytest.fixture
def trainer_process():
    """A live process that passes for a trainer (its command line says so), for runs that are still going."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "trainer"])
    yield process
    process.kill()
    process.wait()


def running_run(store: Store, home: DataHome, name: str, pid: int) -> None:
    run = store.create_training_run(name, base_model="smollm2", output_dir=str(home.models / name),
                                    log_path=str(home.runs / f"{name}.log"))
    store.update_training_run(run.id, status="running", pid=pid)
    (home.runs / f"{name}.log").write_text(json.dumps(step_event(2, 8, 1.5)) + "\n")


def test_a_run_without_a_model_says_why_instead_of_asking_the_hub(home, store, trainer_process) -> None:
    def no_engine(spec: str, home: DataHome, **options):
        raise AssertionError(f"{spec} has no model: nothing should try to load it")

    def ask(model: str):
        context = CliContext(home, _store=store, open_engine=no_engine)
        return CliRunner().invoke(main, ["ask", "--model", model, "hello"], obj=context)

    running_run(store, home, "sft-running", trainer_process.pid)  # no folder yet: the trainer is loading the model
    result = ask("sft-running")
    assert result.exit_code == 1
    assert result.output.startswith("Error: run sft-running is still training (step 2/8), so it has no model yet; "
                                    "wait for it to finish")
    running_run(store, home, "sft-died", 2**22 + 999)  # the store says running; its trainer is gone
    assert ask("sft-died").output.startswith("Error: run sft-died failed (")
    assert store.get_training_run("sft-died").status == "failed"  # and the store now says so
    cancelled = store.create_training_run("sft-cancelled", base_model="smollm2")
    store.update_training_run(cancelled.id, status="cancelled", finished_at=cancelled.created_at + 5)
    assert "was cancelled before it finished, so it has no model; continue it with `tui-chat train --resume --out " \
        f"{home.models / 'sft-cancelled'}`" in ask("sft-cancelled").output
    failed = store.create_training_run("sft-failed", base_model="smollm2")
    store.update_training_run(failed.id, status="failed", error="RuntimeError: out of memory")
    assert ask("sft-failed").output.startswith("Error: run sft-failed failed (RuntimeError: out of memory)")


def test_models_delete_asks_then_frees_the_disk_and_keeps_the_lineage(invoke, store, home) -> None:
    used = [add_chat(store, [("question", "answer")], model="smollm2")]
    finished_run(store, home, "smollm2-sft-1", used)
    (home.models / "smollm2-sft-1" / "model.safetensors").write_bytes(b"\0" * 3_000_000)
    folder = home.models / "smollm2-sft-1"

    result = invoke("models", "delete", "smollm2-sft-1", input="n\n")
    assert result.exit_code == 1 and f"Delete {folder} (3 MB)? [y/N]" in result.output
    assert folder.is_dir() and store.get_training_run("smollm2-sft-1").status == "finished"

    result = invoke("models", "delete", "smollm2-sft-1", input="y\n")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == (
        "deleted smollm2-sft-1: 3 MB freed; its lineage stays in `tui-chat models show`"
    )
    assert not folder.exists() and store.get_training_run("smollm2-sft-1").status == "deleted"
    assert "smollm2-sft-1" not in invoke("models").output  # nothing left to load
    assert "Trained on 1 conversation:" in invoke("models", "show", "smollm2-sft-1").output
    result = CliRunner().invoke(
        main, ["ask", "--model", "smollm2-sft-1", "hi"],
        obj=CliContext(home, _store=store, open_engine=lambda *a, **k: pytest.fail("loaded a deleted run")),
    )
    assert result.output.startswith("Error: run smollm2-sft-1's model was deleted")
    assert invoke("models", "delete", "smollm2-sft-1", "--yes").output.strip() == (
        "Error: run smollm2-sft-1's model is already deleted"
    )


def test_models_delete_refuses_what_must_stay(invoke, store, home, trainer_process) -> None:
    running_run(store, home, "sft-running", trainer_process.pid)
    (home.models / "sft-running").mkdir()
    (home.models / "sft-running" / "train_config.json").write_text("{}")
    result = invoke("models", "delete", "sft-running", "--yes")
    assert result.exit_code == 1
    assert result.output.strip() == ("Error: run sft-running is still training; stop it first (/runs cancel "
                                     "sft-running in the chat, or wait for it to finish), then delete it")
    assert (home.models / "sft-running").is_dir()
    for name in ("default", "smollm2", "smollm2-135m-instruct"):
        assert "the bundled model cannot be deleted" in invoke("models", "delete", name, "--yes").output
    assert invoke("models", "delete", "nobody", "--yes").output.strip() == (
        "Error: no run or model called 'nobody'; `tui-chat models` lists them"
    )
    assert "is not a model name" in invoke("models", "delete", "../home", "--yes").output
    # A run dir no chat recorded (`tui-chat train` in another terminal) whose log has no end may still be training.
    other = home.models / "cli-run"
    other.mkdir()
    (other / "train_config.json").write_text("{}")
    (other / "progress.jsonl").write_text(json.dumps(step_event(1, 8, 2.0)) + "\n")
    assert "cli-run may still be training" in invoke("models", "delete", "cli-run", "--yes").output
    (other / "progress.jsonl").write_text(json.dumps({"event": "stopped", "step": 1}) + "\n")
    assert invoke("models", "delete", "cli-run", "--yes").exit_code == 0 and not other.exists()


def test_models_delete_removes_an_unrecorded_model_folder(invoke, home) -> None:
    (home.models / "my-import").mkdir()
    (home.models / "my-import" / "config.json").write_text("{}")
    result = invoke("models", "delete", "my-import", "--yes")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "deleted my-import: 0 kB freed"
    assert not (home.models / "my-import").exists()
