"""bench/learn.py's rows: each is the trainer's command line for what it names."""

from __future__ import annotations

from bench.learn import flags
from trainer.schedule import auto_lr, auto_replay_weight


def test_the_one_pass_row_is_the_defaults_before_two_passes_and_left_out_where_they_are_the_same() -> None:
    assert flags("new", 54) == []
    assert flags("one-pass", 18) is None  # a small set: several passes, now as then
    assert flags("one-pass", 54) == ["--epochs", "1", "--lr", "0.002", "--replay-weight", "2"]
    assert auto_lr("lora", 54) == 1e-3 and auto_replay_weight(54) == 6  # what "new" runs there instead
    assert "--no-replay" in flags("no-replay", 54) and "--replay" in flags("today", 54)
