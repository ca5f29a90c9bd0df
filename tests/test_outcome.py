"""The one line a user reads about a finished run: gained on their held-out chats, kept of general knowledge."""

from __future__ import annotations

from sessions import Store, memory_database
from trainer.outcome import outcome_line
from tui_chat.training.summary import finish_summary

METRICS = {
    "before": {"val_ppl": 59.04}, "after": {"val_ppl": 46.8},
    "retention": {"retention": 25 / 26, "facts_kept": 25, "facts_total": 26},
}


def test_the_outcome_says_what_was_gained_and_what_was_kept() -> None:
    assert outcome_line(METRICS) == (
        "Your held-out chats: 21% less surprising to the model (perplexity 59 -> 47). "
        "General knowledge kept: 25 of 26 answers (96%)."
    )
    worse = {"before": {"val_ppl": 4.0}, "after": {"val_ppl": 5.0}}
    assert outcome_line(worse) == "Your held-out chats: 25% more surprising to the model (perplexity 4.00 -> 5.00)."
    assert outcome_line({"retention": METRICS["retention"]}) == "General knowledge kept: 25 of 26 answers (96%)."
    assert outcome_line({"before": None, "after": None, "retention": None}) is None


def test_the_finish_summary_says_it() -> None:
    store = Store(memory_database())
    run = store.create_training_run("r", base_model="smollm2")
    run = store.update_training_run(run.id, status="finished", metrics=METRICS)
    # each said once: in words where the outcome says it, the other measures as numbers
    assert finish_summary(run) == (
        "r finished. Your held-out chats: 21% less surprising to the model (perplexity 59 -> 47). General knowledge "
        "kept: 25 of 26 answers (96%). Chat with it: /model r"
    )
    scored = store.update_training_run(run.id, metrics={**METRICS, "before": {"val_ppl": 59.04, "bleu": 0.4},
                                                        "after": {"val_ppl": 46.8, "bleu": 2.9}})
    assert finish_summary(scored).startswith("r finished: BLEU 0.4 -> 2.9. Your held-out chats: 21% less surprising")
    alone = store.update_training_run(run.id, metrics={"retention": METRICS["retention"], "after": {"val_ppl": 9.0}})
    assert finish_summary(alone) == (
        "r finished: validation perplexity 9.00. General knowledge kept: 25 of 26 answers (96%). "
        "Chat with it: /model r"
    )
