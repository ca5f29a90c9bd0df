"""Teach the bundled model a preference with default DPO settings: 20 pairs whose chosen reply opens with
"Short answer:" and whose rejected reply is the same without it; before, the model does not open its greedy replies
to prompts it was not trained on that way, after it does (slow: trains the real model on CPU).

The short version: one seed, five unseen prompts, no retention check. bench/teach_preference.py runs the full
measurement (three seeds, ten unseen prompts, retention, times) and the README quotes it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.teach_preference import UNSEEN, teach, trait_rate
from trainer.home import DataHome

PROMPTS = UNSEEN[:5]


@pytest.mark.slow
def test_default_dpo_teaches_the_opener(bundled_home: DataHome, tmp_path: Path) -> None:
    before, replies = trait_rate("default", bundled_home.models, PROMPTS)
    assert before < 0.2, replies
    result = teach(bundled_home.root, 0, tmp_path / "run", no_eval=True, prompts=PROMPTS)
    assert result["after"] >= 0.8, result["replies"]
    assert result["metrics"]["train_time_s"] < 300
