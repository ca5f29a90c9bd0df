"""`/train` with preference pairs in the store: the preview counts them, the trainer command trains on them and the
conversations together (the combined objective), and that command runs (tiny model, in this process)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from sessions import Store
from trainer import rundir
from trainer.__main__ import main as trainer_main
from trainer.dpo_config import COMBINED_LEARNING_RATES, DPO_LEARNING_RATES
from trainer.home import DataHome
from tui_chat.training.errors import TrainingError
from tui_chat.training.launch import start_training, trainer_command
from tui_chat.training.plan import plan_training

from .train_fixtures import (  # noqa: F401  (home, models_home, store: fixtures)
    add_chat,
    done_event,
    fake_trainer,
    fill_store,
    home,
    models_home,
    store,
    wait_for,
)


def add_pairs(store: Store, n: int) -> None:
    """``n`` conversations whose reply has a regenerated sibling: one rated up, one down (a pair each)."""
    for i in range(n):
        conversation = add_chat(store, [(f"hello {i} world", "the quick brown fox")], rating=1)
        question = store.messages(conversation)[0]
        worse = store.add_message(conversation, "assistant", f"the lazy dog {i}", parent_id=question.id)
        store.set_rating(worse.id, -1)


def test_the_preview_counts_the_pairs_and_the_run_trains_on_both(store: Store, home: DataHome) -> None:
    fill_store(store, 6)
    add_pairs(store, 10)
    previewed = plan_training(store, home, ["--max-steps", "2", "--replay", "4", "--beta", "0.2"],
                              current_model="tiny")
    assert (previewed.data.train_pairs, previewed.data.val_pairs) == (9, 1)
    text = "\n".join(previewed.preview_lines())
    assert "Preferences: 10 pairs (9 to train on, 1 held out to measure it)" in text and "beta 0.2" in text
    assert "Replay: 4 general conversations answered by tiny itself" in text
    assert previewed.lr == COMBINED_LEARNING_RATES[previewed.method] and f"learning rate {previewed.lr:g}" in text
    command = trainer_command(previewed, home, "chats.jsonl", "out", "python")
    assert command[3:8] == ["dpo", "--data", str(previewed.snapshot_dir / "pairs.jsonl"), "--sft-data", "chats.jsonl"]
    assert command[command.index("--replay") + 1] == "4" and command[-2:] == ["--beta", "0.2"]
    out = home.models / "combined"
    args = [*command[3:], "--no-eval", "--threads", "1", "--progress", "none"]
    args[args.index("--sft-data") + 1] = str(previewed.export.paths["all"])
    args[args.index("--out") + 1] = str(out)
    assert trainer_main(args) == 0
    start = next(json.loads(line) for line in (out / rundir.PROGRESS_LOG).read_text().splitlines()
                 if json.loads(line)["event"] == "start")
    assert start["objective"] == "dpo" and start["train_pairs"] == 9 and start["sft_conversations"] == 6  # the pairs' own
    # conversations end in their newest reply, the thumbs-down one: cut there, nothing left to learn by cross-entropy
    assert (out / rundir.COMPLETE).exists()
    previewed.discard()


def test_pairs_alone_train_when_no_conversation_is_left_to_learn(store: Store, home: DataHome) -> None:
    add_pairs(store, 8)  # each conversation's newest reply is the thumbs-down one: no conversation to learn from
    previewed = plan_training(store, home, ["--max-steps", "1", "--no-replay"], current_model="tiny")
    assert (previewed.data.conversations, previewed.data.train_pairs + previewed.data.val_pairs) == (0, 8)
    assert "Train on: the preference pairs alone" in "\n".join(previewed.preview_lines())
    assert previewed.lr == DPO_LEARNING_RATES[previewed.method]  # the rate and beta of a run on pairs alone
    assert "beta 0.05" in "\n".join(previewed.preview_lines())
    assert previewed.work.trained_tokens > 0 and previewed.work.reference_tokens > 0
    command = trainer_command(previewed, home, str(previewed.pairs_path), "out", "python")
    assert command[3:6] == ["dpo", "--data", str(previewed.pairs_path)] and "--sft-data" not in command
    out = home.models / "pairs-only"
    args = [*command[3:], "--no-eval", "--threads", "1", "--progress", "none"]
    args[args.index("--out") + 1] = str(out)
    assert trainer_main(args) == 0 and (out / rundir.COMPLETE).exists()
    previewed.discard()


def test_nothing_to_train_on_without_pairs_or_conversations(store: Store, home: DataHome) -> None:
    conversation = add_chat(store, [("hi", "hello world")])
    store.set_rating(store.messages(conversation)[-1].id, -1)
    with pytest.raises(TrainingError, match="nothing to train on"):
        plan_training(store, home, [], current_model="tiny")


def test_without_pairs_the_run_is_plain_sft(store: Store, home: DataHome) -> None:
    fill_store(store, 6)
    previewed = plan_training(store, home, ["--beta", "0.2"], current_model="tiny")
    assert previewed.data.pairs == 0 and previewed.pairs_path is None
    assert "Preferences" not in "\n".join(previewed.preview_lines())
    command = trainer_command(previewed, home, "chats.jsonl", "out", "python")
    assert command[3:6] == ["sft", "--data", "chats.jsonl"] and "--beta" not in command
    previewed.discard()


def test_a_started_run_keeps_its_pairs_beside_the_conversations(store: Store, home: DataHome, tmp_path: Path) -> None:
    fill_store(store, 3)
    add_pairs(store, 6)
    previewed = plan_training(store, home, [], current_model="tiny")
    python = fake_trainer(tmp_path, [done_event()])
    monitor = start_training(store, home, previewed, python=python)
    wait_for(lambda: monitor.process.poll() is not None)
    dataset_dir = home.datasets / previewed.name
    assert (dataset_dir / "pairs.jsonl").is_file() and (dataset_dir / "messages.jsonl").is_file()
    recorded = store.get_training_run(monitor.run.id)
    assert recorded.params["pairs"] == 6 and recorded.params["command"][2] == "dpo"


def test_the_summary_tells_the_preference_accuracy() -> None:
    from tui_chat.training.summary import metrics_text

    metrics = {"before": {"reward_accuracy": 0.0, "pairs": 4}, "after": {"reward_accuracy": 0.75, "pairs": 4},
               "retention": {"retention": 0.96, "facts_kept": 25, "facts_total": 26}}
    assert metrics_text(metrics) == ("preference accuracy 0% -> 75% on 4 held-out pairs, retention 96% (25/26 general "
                                     "facts kept)")


def test_the_preview_shows_an_example_with_the_learned_text_marked(store: Store, home: DataHome) -> None:
    add_chat(store, [("hi", "hello world"), ("and the fox?", "the quick brown fox")])
    add_chat(store, [("a much longer question about the lazy dog", "the lazy dog sleeps " * 5)])
    previewed = plan_training(store, home, [], current_model="tiny")
    text = "\n".join(previewed.preview_lines())
    example = text.split("(the loss is on the «marked» text only):\n", 1)[1]
    # The shortest conversation, in the tiny model's template; each reply and its end-of-turn token marked.
    assert example == ("<|user|>\nhi<|im_end|>\n<|assistant|>\n«hello world<|im_end|>»\n<|user|>\nand the fox?<|im_end|>"
                       "\n<|assistant|>\n«the quick brown fox<|im_end|>»")
    assert "lazy dog" not in example
    previewed.discard()


def test_the_estimate_prices_the_reference_pass_as_a_measured_preference_run_did() -> None:
    from tui_chat.training.estimate import REFERENCE_SHARE, RunWork, estimate_time

    options = {"base_name": "small", "method": "lora", "device": "cpu", "parameters": 100}
    sft = {"base_model": "small", "base_parameters": 100, "method": "lora", "device": "cpu", "startup_s": 1.0,
           "total_s": 12.0, "phases": {"train": {"tokens": 1000, "s": 10.0}}}
    sft_work = RunWork(trained_tokens=1000, replay_tokens=0, replay_answers=0, retention=False,
                       baseline_cached=False, eval_samples=0, eval_before_cached=False)
    dpo_work = dataclasses.replace(sft_work, reference_tokens=300)
    plain = estimate_time([sft], sft_work, **options)
    # No preference run measured yet: a reference token costs a third of a trained one.
    assert estimate_time([sft], dpo_work, **options).seconds - plain.seconds == pytest.approx(
        300 * 10.0 / 1000 / REFERENCE_SHARE)
    dpo = {**sft, "phases": {**sft["phases"], "reference": {"pairs": 10, "tokens": 600, "s": 1.2}}, "total_s": 13.2}
    assert estimate_time([dpo], dpo_work, **options).seconds - estimate_time([dpo], sft_work, **options).seconds == (
        pytest.approx(300 * 1.2 / 600))
