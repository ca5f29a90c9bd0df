"""Epochs and learning rate chosen from the dataset's size when the user does not set them.

A tiny dataset (tens of conversations) must be seen many times before a fact sticks; a large one learns in a pass or
two and over-fits (and forgets more) with more. The anchor is measured on the bundled 135M model, CPU, 20
conversations teaching 4 made-up facts (18 trained on after the validation split), default replay, recall asked in
words the data does not contain (tests/test_teach_fact.py; 2 shared cores, so times are noisy):

- LoRA lr 1e-3, 5 epochs: 5 of 12 probes recalled (loss 0.18: not yet learned).
- LoRA lr 1e-3, 8 epochs: 11 of 12 recalled.

Away from the anchor, epochs shrink with the square root of the dataset (each conversation is seen fewer times, but
there are more examples of each kind), down to one pass from about 1,300 conversations: ``epochs = 8 * sqrt(20 / n)``,
rounded, within [1, 8]. Only the anchor is measured; the curve is a rule of thumb.
"""

from __future__ import annotations

import math

ANCHOR_CONVERSATIONS = 20
ANCHOR_EPOCHS = 8
MAX_EPOCHS = 8
# Peak learning rates (AdamW, cosine decay), measured at the anchor (8 epochs, replay): LoRA rank 16 at 3e-4
# recalled 0 of 8 probes, at 1e-3 all 8; at the default rank 4 (config.py) 1e-3 recalled 7 of 12 and 2e-3 all 12.
# Full fine-tuning at 5e-5 recalled 6 of 8. A LoRA update moves few directions, so it needs the larger step.
LEARNING_RATES = {"lora": 2e-3, "full": 5e-5}


def auto_epochs(n_conversations: int) -> float:
    """Passes over the data for ``n_conversations`` user conversations (replay not counted)."""
    n = max(1, n_conversations)
    return float(min(MAX_EPOCHS, max(1, round(ANCHOR_EPOCHS * math.sqrt(ANCHOR_CONVERSATIONS / n)))))


def auto_schedule(n_conversations: int, method: str) -> tuple[float, float, str]:
    """(epochs, peak learning rate, a one-line reason to print) for ``n_conversations`` user conversations
    (replay not counted) trained with ``method`` (``lora`` or ``full``)."""
    if method not in LEARNING_RATES:
        raise ValueError(f"unknown method {method!r}; use lora or full")
    n = max(1, n_conversations)
    epochs = auto_epochs(n)
    lr = LEARNING_RATES[method]
    size = "a small dataset needs several passes" if epochs > 2 else "a large dataset needs few passes"
    reason = f"{n} conversations: {epochs:g} epochs at lr {lr:g} ({method}; {size}; set --epochs / --lr to override)"
    return epochs, lr, reason
