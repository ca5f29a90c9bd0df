"""`tui-chat models` and `tui-chat models show` through click's CliRunner, on runs recorded in a memory store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sessions import Store, memory_database
from trainer.home import DataHome
from tui_chat.cli import CliContext, main

from .training_helpers import add_chat, step_event


@pytest.fixture
def home(tmp_path: Path) -> DataHome:
    return DataHome(tmp_path / "home").ensure()


@pytest.fixture
def store() -> Store:
    return Store(memory_database())


@pytest.fixture
def invoke(home: DataHome, store: Store):
    def run(*args: str):
        return CliRunner(env={"COLUMNS": "200"}).invoke(main, list(args), obj=CliContext(home, _store=store))

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
    assert "smollm2-sft-1 finished in 1 min 15 s (6 steps): validation perplexity 9.50 -> 4.25" in out
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
