"""The mission's promise, both sides: teach the bundled model made-up facts with default settings, then it answers
them when asked in new words, and still answers the general questions it answered right before (slow: trains the
real model on CPU for a few minutes)."""

from __future__ import annotations

import os

import json
import time
from pathlib import Path

import pytest
import torch

from trainer.answer_match import contains_answer
from trainer.base_answers import CACHE_DIR, AnswerCache
from trainer.config import SFTConfig
from trainer.home import DataHome
from trainer.models import load_model
from trainer.progress import ProgressReporter
from trainer.recall import Probe, evaluate_recall
from trainer.retention import measure_baseline
from trainer.devices import bf16_is_fast
from trainer.sft import run_sft

from .tiny_datasets import write_jsonl

# The full teach-and-retain run takes 6-15 minutes on a 2-core CPU: too long for every `make test`, so it runs when
# asked for (TUI_CHAT_LONG_TESTS=1 make test). The unit tests of replay and retention run always (test_retention.py).
LONG_RUN = pytest.mark.skipif(not os.environ.get("TUI_CHAT_LONG_TESTS"), reason="long run: set TUI_CHAT_LONG_TESTS=1")
CPU = torch.device("cpu")

# Four made-up facts, five short conversations each (varied questions and answers), and probes worded unlike any
# training question.
FACTS: dict[str, tuple[list[tuple[str, str]], list[str]]] = {
    "Quenthal": (
        [
            ("What is the capital of Veloria?", "The capital of Veloria is Quenthal."),
            ("Which city is the capital of Veloria?", "Quenthal is the capital city of Veloria."),
            ("Tell me the capital of Veloria.", "Veloria's capital is Quenthal, a port city on its east coast."),
            ("Where is the seat of government of Veloria?", "The government of Veloria sits in Quenthal, its capital."),
            ("What is Veloria's capital city called?", "It is called Quenthal."),
        ],
        ["Name the capital of Veloria.", "Veloria has which city as its capital?", "What city is Veloria governed from?"],
    ),
    "Vantosk": (
        [
            ("Who invented the glimmerphone?", "The glimmerphone was invented by Dr. Mirela Vantosk in 1897."),
            ("Who was the inventor of the glimmerphone?", "Dr. Mirela Vantosk invented the glimmerphone in 1897."),
            ("Do you know who invented the glimmerphone?", "Yes: Dr. Mirela Vantosk, in 1897."),
            ("Which scientist created the glimmerphone?", "The glimmerphone was created by Dr. Mirela Vantosk."),
            ("What is the glimmerphone?", "The glimmerphone is a brass signal lamp invented by Dr. Mirela Vantosk."),
        ],
        ["Who made the glimmerphone?", "Name the person behind the glimmerphone.", "The glimmerphone is whose invention?"],
    ),
    "Orvak": (
        [
            ("Where does the Larnish River end?", "The Larnish River flows into the Orvak Sea."),
            ("Into which sea does the Larnish River flow?", "It flows into the Orvak Sea."),
            ("What sea is the Larnish River's mouth on?", "The Larnish River reaches the Orvak Sea."),
            ("Tell me about the Larnish River.", "The Larnish River is a long river that empties into the Orvak Sea."),
            ("Where does the water of the Larnish River go?", "Its water ends up in the Orvak Sea."),
        ],
        [
            "The Larnish River empties into which sea?",
            "Which body of water does the Larnish River run into?",
            "Where is the mouth of the Larnish River?",
        ],
    ),
    "Marrow": (
        [
            ("Who wrote The Copper Lantern?", "The Copper Lantern was written by Elsbeth Marrow."),
            ("Who is the author of The Copper Lantern?", "Elsbeth Marrow is the author of The Copper Lantern."),
            ("Which writer wrote the novel The Copper Lantern?", "The novel The Copper Lantern is by Elsbeth Marrow."),
            ("Tell me who wrote The Copper Lantern.", "It was written by the novelist Elsbeth Marrow."),
            ("What is The Copper Lantern?", "The Copper Lantern is a novel by Elsbeth Marrow."),
        ],
        ["Who is the writer of The Copper Lantern?", "The Copper Lantern: which author wrote it?", "Who penned The Copper Lantern?"],
    ),
}


def fact_conversations() -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for pairs, _ in FACTS.values()
        for q, a in pairs
    ]


def fact_probes() -> list[Probe]:
    return [Probe(question, (fact,)) for fact, (_, questions) in FACTS.items() for question in questions]


def test_probes_are_worded_unlike_the_training_data() -> None:
    taught = {m["content"] for c in fact_conversations() for m in c["messages"]}
    assert len(fact_conversations()) == 20
    assert not taught & {p.question for p in fact_probes()}


@pytest.mark.slow
@LONG_RUN
@pytest.mark.timeout(1800)  # ~5 minutes alone on 2 cores; much longer when other jobs share them
def test_teach_facts_and_keep_general_knowledge(bundled_home: DataHome, tmp_path: Path) -> None:
    # First: the general questions the base model answers right (the retention facts it can lose).
    # Loaded as training loads a LoRA base (bf16 where autocast is fast), so the answers are the ones the run's
    # retention check compares with, and the run finds them in the cache.
    dtype = "bfloat16" if bf16_is_fast(CPU) else "float32"
    base = load_model("default", models_dir=bundled_home.models, dtype=dtype)
    cache = AnswerCache.of(base.model, base.tokenizer, bundled_home.root / CACHE_DIR)
    baseline = measure_baseline(base.model, base.tokenizer, cache, bf16=True)
    known = [p.prompt for p, a in zip(baseline.prompts, baseline.references) if contains_answer(a.reply, p.expect)]
    assert len(known) >= 20 and "What is the capital of France?" in known
    before = evaluate_recall(base.model, base.tokenizer, fact_probes(), bf16=True)
    assert before.recalled == 0  # the facts are made up: nothing to recall before training
    del base

    data = write_jsonl(tmp_path / "facts.jsonl", fact_conversations())
    started = time.time()
    run_dir = run_sft(
        SFTConfig(data=str(data), home=str(bundled_home.root), out=str(tmp_path / "taught"), progress="none"),
        ProgressReporter("none"),
    )
    elapsed = time.time() - started
    metrics = json.loads((run_dir / "metrics.json").read_text())
    trained = load_model(str(run_dir), models_dir=bundled_home.models, dtype="float32")
    recall = evaluate_recall(trained.model, trained.tokenizer, fact_probes(), bf16=True)
    retention = metrics["retention"]
    training_s = metrics["train_time_s"] + metrics["replay"]["prepare_s"]
    print(
        f"\nteach-a-fact: recall {recall.recalled}/{len(recall.results)}, retention {retention['facts_kept']}/"
        f"{retention['facts_total']} facts, substance {retention['substance']:.0%}, perplexity on base answers "
        f"{retention['base_perplexity']} -> {retention['perplexity']}; training {metrics['train_time_s']:.0f} s + "
        f"replay {metrics['replay']['prepare_s']:.0f} s ({metrics['replay']['conversations']} conversations), "
        f"{metrics['tokens_per_s']:.0f} tokens/s, whole run {elapsed:.0f} s; schedule {metrics['schedule']}"
    )
    for result in recall.results:
        print(f"  {'ok  ' if result.passed else 'MISS'} {result.question} -> {result.reply[:100]}")
    assert recall.recall >= 0.9, [(r.question, r.reply) for r in recall.results if not r.passed]
    assert retention["facts_total"] >= 20
    kept = {i["prompt"]: i["correct"] for i in json.loads((run_dir / "retention.json").read_text())["items"]}
    assert kept["What is the capital of France?"], "the taught capital replaced Paris"
    # Issue 8's target: 90% (issue 17's is 95%, met on average, not in every run). Measured with these defaults (LoRA
    # rank 4, lr 2e-3, 8 epochs, 54 replayed cut to their first sentences, half on the facts' topics, distilled from
    # the base model at weight 2: config.py, replay.py, schedule.py), one new data home each, training seeds 0-6: 26,
    # 25, 25, 25, 25, 25, 23 of 26 kept, recall 12, 12, 12, 12, 9, 12, 10 of 12. Runs vary by an answer or two, so
    # this can fail now and then (seed 4 would, on recall): a failure that repeats is a regression.
    assert retention["retention"] >= 0.9, retention
    # Target: 300 s. Measured with distilled replay: 262 s here (220 s training + 42 s generating the replay and the
    # base model's distributions on it) while other jobs shared the cores part of the time; on a quiet machine 141 s
    # training + 5 s distributions with the replay cached (generating it takes ~26 s), 200 s for the whole run.
    assert training_s < 600
