"""bench/learn.py's rows: each is the trainer's command line for what it names."""

from __future__ import annotations

from bench.learn import flags
from trainer.replay import default_replay_count
from trainer.schedule import auto_replay_weight


def test_the_whole_row_is_the_defaults_one_session_before() -> None:
    assert flags("new", 54) == []
    # whole answers, two a conversation, weighed 2 below ~50 conversations and 6 from there
    assert flags("whole", 18) == ["--replay-sentences", "0", "--replay", "36", "--replay-weight", "2"]
    assert flags("whole", 54) == ["--replay-sentences", "0", "--replay", "108", "--replay-weight", "6"]
    assert flags("whole", 180)[3] == "128"
    # what "new" runs instead: first sentences, three a conversation below ~50, weighed 4 from there
    assert default_replay_count(18) == 54 and auto_replay_weight(54) == 4
    today = flags("today", 54)
    assert "--no-replay" in flags("no-replay", 54) and "--replay" in today
    assert today[today.index("--replay-sentences") + 1] == "0"  # the defaults before issue 17 replayed whole answers
