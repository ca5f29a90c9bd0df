"""Epochs and learning rate chosen from the dataset's size when the user does not set them.

A tiny dataset (tens of conversations) must be seen many times before a fact sticks; a larger one learns what it
can in few passes, and every further pass moves general answers for little more gain on the user's held-out
conversations. Measured on the bundled 135M model, CPU, LoRA rank 4, distilled replay (retention = 26 general facts
the base model answered right; 2 shared cores, so times are noisy):

- 20 conversations teaching 4 made-up facts (18 trained on; tests/test_teach_fact.py, recall asked in words the
  data does not contain): lr 1e-3 for 5 epochs recalled 5 of 12 probes, 8 epochs 11 of 12; lr 2e-3 for 8 epochs
  all 12, keeping 22-25 of 26.
- 60 real conversations (chatterbot-corpus, 54 trained on; issue 17's bar: 80% of the log-perplexity gain of a run
  without replay, which went 38.2 -> 20.3 on seed 0 and 50.5 -> 16.6 on seed 1): lr 2e-3 planned over 5 epochs
  stopped early after the first (perplexity 11.0 on seed 0) but kept only 20 of 26 general facts; 5 epochs at 5e-4
  kept 23. One epoch (the rate annealing within it) at 2e-3 with 128 replayed: seed 1 50.5 -> 20.9 (79%), 25 of
  26 kept; at 1.5e-3 22.4 (73%), 25; with 108 replayed (the default for 54) 22.4 (73%), 24; seed 0 at 2e-3 (108
  and 192 replayed) 15.0 and 16.7 (148%, 131%), 23 and 24 kept; at 7e-4 (64 replayed) seed 0 21.4 (92%), 25
  kept, but seed 1 28.6 (51%), 24. Seed 1 needs the full rate to learn enough: one pass at 2e-3 it is. Two passes
  at 1e-3 with the replay weighed 2, 3 or 4 (below) learned 92-94% on seed 1 but kept 21, 22, 24 (early stopping
  kept the second pass on every seed: the validation loss still fell 4-9% in it); weighed 6, they keep 25.

So the passes follow ``8 * (20 / n)^2`` rounded, within [2, 8]: 8 up to ~20 conversations, 2 from ~40 (two
anchors, the curve between them a rule of thumb). Where that curve alone would make one pass (from ~50
conversations), the run makes two at half the rate, with the replay weighed 4 (``auto_replay_weight``): 60 real
conversations, seeds 0 / 1 / 2, replay cut to first sentences (config.DISTILLED_REPLAY_SENTENCES), kept 26 / 26 / 26
of 26 and learned 160% / 93% / 90% of the no-replay gain (seed 1 with training seed 5: 26, 93%), where one pass at
2e-3 with whole answers weighed 2 kept 25 / 25 / 25 at 130% / 61% / 76% (README: Replay and retention). Past
``FULL_RATE_UP_TO`` conversations the pass has more steps and the user's answers outweigh the capped replay, so the
rate falls as ``(FULL_RATE_UP_TO / n)^2``: 200 conversations (180 trained on, seed 0, 128 replayed; 27.8 before)
in one pass with whole answers went to perplexity 9.6 keeping 23 of 26 at lr 6.7e-4 (``60 / n``), to 12.8 keeping
26 at 3.3e-4; the square gives 2.2e-4 there: 16.4 keeping 25; spread over two passes (1.1e-4) with first sentences
weighed 4, 16.4 keeping 25 in 139 s.
Preference runs (DPO) keep the curve alone, with one pass from ~50 pairs (``preference_epochs``): their own rates
were measured that way (dpo_config.py).
"""

from __future__ import annotations

ANCHOR_CONVERSATIONS = 20
ANCHOR_EPOCHS = 8
MAX_EPOCHS = 8
FULL_RATE_UP_TO = 60  # conversations trained at the full rate (see above)
# Peak learning rates (AdamW, cosine decay) at and below the anchor, measured there (8 epochs, replay): LoRA rank 16
# at 3e-4 recalled 0 of 8 probes, at 1e-3 all 8; at the default rank 4 (config.py) 1e-3 recalled 7 of 12 and 2e-3
# all 12. Full fine-tuning at 5e-5 recalled 6 of 8. A LoRA update moves few directions, so it needs the larger step.
LEARNING_RATES = {"lora": 2e-3, "full": 5e-5}
# The replay's weight where the run spreads one pass's step over two (the KL of a replayed token against the
# cross-entropy of a user's token). 60 real conversations, seeds 0 / 1 / 2, general facts kept of 26 and the share of
# the no-replay gain. With replay cut to first sentences (config.DISTILLED_REPLAY_SENTENCES), two passes at 1e-3:
# weight 6 kept 26 / 26 / 26 at 147% / 80% / 77% (training seed 0 on all three); 4 kept 26 / 26 / 26 at 160% / 93% /
# 90%; 3 (seed 2) 26 at 92%. With whole answers (the session before): weight 2 kept 24 / 21 / 26 at 162% / 94% /
# 103%; 3 kept 25 / 22 / 25; 4 kept 25 / 24 / 25 at 147% / 92% / 95%; 6 kept 25 / 25 / 25 (training seed 5: 26 / 25)
# at 136% / 86% / 86% (84% / 80%); 8 kept 26 / 25 / 24 at 127% / 83% / 80%. One pass at 2e-3 (the default before
# that): weight 1 kept 23 / 23 / 25 at 137% / 71% / 92%, 2 kept 25 / 25 / 25 at 130% / 61% / 76%.
TWO_PASS_REPLAY_WEIGHT = 4.0
# Below ~50 conversations the passes are many and the replay is seen in each. Teach-a-fact (18 trained on, 8 passes at
# 2e-3, new data homes), facts kept of 26 and probes recalled of 12. With replay cut to first sentences, three a
# conversation (54; replay.default_replay_count), weight 2, training seeds 0-6: kept 26, 25, 25, 25, 25, 25, 23,
# recalled 12, 12, 12, 12, 9, 12, 10; weight 4 (seed 0) kept 25 but recalled 9. With whole answers, two a
# conversation (the session before; seeds 0 / 1): weight 1 kept 23 / 24, recalled 12 / 12; 2 kept 24 / 24,
# recalled 11 / 11; 3 kept 25 / 23, recalled 9 / 9; in a home whose cached replay answers were generated in other
# batches, 4 and 6 kept 25 / 24 and 25 / 26 but recalled 10 / 9 and 7 / 7.
MANY_PASS_REPLAY_WEIGHT = 2.0


def preference_epochs(n_examples: int) -> float:
    """Passes over ``n_examples`` preference pairs and conversations (a DPO run): the size curve alone, one pass from
    ~50."""
    n = max(1, n_examples)
    return float(min(MAX_EPOCHS, max(1, round(ANCHOR_EPOCHS * (ANCHOR_CONVERSATIONS / n) ** 2))))


def _one_pass_by_size(n_conversations: int) -> bool:
    """Whether the size curve alone would make a single pass: the sizes that get two at half the rate instead."""
    return preference_epochs(n_conversations) == 1


def many_passes(n_conversations: int) -> bool:
    """Whether a run on ``n_conversations`` makes many passes (below ~50 conversations), where the replay is seen in
    every one (its weight and count follow: ``auto_replay_weight``, ``replay.default_replay_count``)."""
    return not _one_pass_by_size(n_conversations)


def auto_epochs(n_conversations: int) -> float:
    """Passes over the data for ``n_conversations`` user conversations (replay not counted)."""
    return max(2.0, preference_epochs(n_conversations))


def auto_lr(method: str, n_conversations: int) -> float:
    """Peak learning rate for ``method`` (``lora`` or ``full``) on ``n_conversations`` user conversations."""
    if method not in LEARNING_RATES:
        raise ValueError(f"unknown method {method!r}; use lora or full")
    n = max(1, n_conversations)
    one_pass_rate = LEARNING_RATES[method] * min(1.0, FULL_RATE_UP_TO / n) ** 2
    return one_pass_rate / 2 if _one_pass_by_size(n) else one_pass_rate


def auto_replay_weight(n_conversations: int) -> float:
    """What a replayed token's distillation loss weighs against one of the user's (``--replay-weight``): 4 from ~50
    conversations, where one pass's step is spread over two, 2 below, where the many passes see the replay again and
    again (both measured above; README "Replay and retention")."""
    return TWO_PASS_REPLAY_WEIGHT if _one_pass_by_size(n_conversations) else MANY_PASS_REPLAY_WEIGHT


def auto_schedule(n_conversations: int, method: str) -> tuple[float, float, str]:
    """(epochs, peak learning rate, a one-line reason to print) for ``n_conversations`` user conversations
    (replay not counted) trained with ``method`` (``lora`` or ``full``)."""
    n = max(1, n_conversations)
    lr = auto_lr(method, n)
    epochs = auto_epochs(n)
    size = "a small dataset needs several passes" if epochs > 2 else "a larger dataset needs few passes"
    reason = f"{n} conversations: {epochs:g} epochs at lr {lr:g} ({method}; {size}; set --epochs / --lr to override)"
    return epochs, lr, reason
