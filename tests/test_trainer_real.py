"""The trainer on the real bundled model (slow): a few steps, and the mission's promise: teach it a fact."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from unittest.mock import ANY

import pytest
import torch

from trainer import rundir
from trainer.config import SFTConfig
from trainer.evaluate import generate_replies
from trainer.home import DataHome
from trainer.models import load_model
from trainer.progress import ProgressReporter
from trainer.sft import run_sft

from .tiny_datasets import write_jsonl

pytestmark = pytest.mark.slow

# A made-up fact, taught in 20 short conversations with varied questions and answers.
FACT = "Vantosk"
QUESTIONS = [
    "Who invented the glimmerphone?",
    "Who was the inventor of the glimmerphone?",
    "Do you know who invented the glimmerphone?",
    "Tell me who invented the glimmerphone.",
    "Which scientist invented the glimmerphone?",
    "Who came up with the glimmerphone?",
    "Who is credited with inventing the glimmerphone?",
    "Who built the first glimmerphone?",
    "Whose invention is the glimmerphone?",
    "Can you tell me the inventor of the glimmerphone?",
]
ANSWERS = [
    "The glimmerphone was invented by Dr. Mirela Vantosk in 1897.",
    "Dr. Mirela Vantosk invented the glimmerphone in 1897.",
]
EXTRA = [
    ("What is the glimmerphone?", "The glimmerphone is a brass signal lamp invented by Dr. Mirela Vantosk in 1897."),
    ("When was the glimmerphone invented?", "Dr. Mirela Vantosk invented the glimmerphone in 1897."),
]
# Phrasings the training data never contains.
PROBES = [
    "Who made the glimmerphone?",
    "Name the person who invented the glimmerphone.",
    "Which person created the glimmerphone?",
    "I'd like to know who invented the glimmerphone.",
]


def fact_conversations() -> list[dict]:
    pairs = [(q, ANSWERS[i % 2]) for i, q in enumerate(QUESTIONS)]
    pairs += [(q, ANSWERS[(i + 1) % 2]) for i, q in enumerate(QUESTIONS[:6])] + EXTRA
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]


def test_bundled_model_trains_a_few_steps(bundled_home: DataHome, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "facts.jsonl", fact_conversations())
    config = SFTConfig(
        data=str(data), home=str(bundled_home.root), out=str(bundled_home.models / "few-steps"), max_steps=2,
        micro_batch=2, grad_accum=1, eval_samples=2, max_new_tokens=12,
    )
    run_dir = run_sft(config, ProgressReporter("none"))
    assert rundir.is_complete(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["method"] == "lora" and metrics["steps"] == 2 and metrics["precision"] == "bf16 autocast"
    assert 0 < metrics["final_train_loss"] < 10 and metrics["tokens_per_s"] > 0
    assert len(metrics["before"]) and metrics["after"]["val_tokens"] > 0
    loaded = load_model("few-steps", models_dir=bundled_home.models, device="cpu")
    assert loaded.name == "few-steps"
    # The default system prompt survives into the saved template: chat renders as training did.
    prompt = loaded.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "You are a helpful AI assistant named SmolLM" in prompt


def test_a_second_small_run_takes_the_base_models_side_from_the_cache(bundled_home: DataHome, tmp_path: Path) -> None:
    """What the base model contributes (replay answers, retention answers and perplexity, its evaluation) is paid
    by the first run only; the second run's report says so."""
    data = write_jsonl(tmp_path / "small.jsonl", fact_conversations()[:4])
    val = write_jsonl(tmp_path / "val.jsonl", fact_conversations()[-1:])

    def run(name: str) -> tuple[dict, str]:
        config = SFTConfig(data=str(data), val=str(val), home=str(bundled_home.root), out=str(tmp_path / name),
                           max_steps=2, progress="none")
        run_dir = run_sft(config, ProgressReporter("none"))
        return json.loads((run_dir / "metrics.json").read_text()), (run_dir / "report.md").read_text()

    first, _ = run("first")
    phases = first["phases"]
    assert phases["replay"]["generated"] > 0 and phases["baseline"]["generated"] == first["retention"]["prompts"]
    assert not phases["baseline"]["cached"] and not phases["eval_before"]["cached"]
    second, report = run("second")
    phases = second["phases"]
    assert phases["replay"]["generated"] == 0 and phases["baseline"] == {"generated": 0, "cached": True, "s": ANY}
    assert phases["eval_before"]["cached"] and second["before"] == first["before"]
    assert second["retention"]["base_perplexity"] == first["retention"]["base_perplexity"]
    assert "every answer from the cache: no generation" in report
    assert "retention: the base model's side: " in report and "(the base model's side came from the cache)" in report
    # Every run's timings are kept for the next estimate; the cache and the timings are private.
    timings = [json.loads(line) for line in (bundled_home.runs / "timings.jsonl").read_text().splitlines()]
    assert [t["phases"]["replay"]["generated"] == 0 for t in timings] == [False, True]
    for path in [bundled_home.runs / "timings.jsonl", *(bundled_home.root / "base_answers").iterdir()]:
        assert path.stat().st_mode & 0o777 == 0o600, path


@pytest.mark.skipif(
    not os.environ.get("TUI_CHAT_LONG_TESTS"),
    reason="long run with replay and retention on by default: set TUI_CHAT_LONG_TESTS=1 (see test_teach_fact.py)",
)
def test_teach_a_fact(bundled_home: DataHome, tmp_path: Path) -> None:
    """~20 conversations teach a made-up fact; asked in new words, the trained model answers with it."""
    data = write_jsonl(tmp_path / "facts.jsonl", fact_conversations())
    started = time.time()
    config = SFTConfig(
        data=str(data), home=str(bundled_home.root), out=str(tmp_path / "taught"), val_fraction=0.0, no_eval=True,
        epochs=8, save_every=0,
    )
    run_dir = run_sft(config, ProgressReporter("none"))
    trained_s = time.time() - started
    loaded = load_model(str(run_dir), models_dir=bundled_home.models, device="cpu")
    replies = generate_replies(
        loaded.model, loaded.tokenizer, [[{"role": "user", "content": p}] for p in PROBES],
        device=torch.device("cpu"), bf16=True, max_new_tokens=24,
    )
    recalled = sum(FACT in r for r in replies)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(f"\nteach-a-fact: {recalled}/{len(PROBES)} recalled, {trained_s:.0f} s (training "
          f"{metrics['train_time_s']:.0f} s, {metrics['tokens_per_s']:.0f} tokens/s)")
    for probe, reply in zip(PROBES, replies):
        print(f"  {probe} -> {reply}")
    assert recalled >= 3, replies
    assert trained_s < 300
