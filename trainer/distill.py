"""Self-distillation targets for replay: the base model's next-token distribution on every replayed answer.

Why: replay (replay.py) is there so training keeps what the base model knew. Cross-entropy on the base model's
greedy text keeps one token per position and even moves the model (towards its own greedy pick, away from the rest
of what it weighed). ``KL(base || adapted)`` on the same positions is zero while the model is still the base model
and pulls back on every token the base model weighed. Measured on teach-a-fact (tests/test_teach_fact.py: bundled
model, LoRA rank 4, lr 2e-3, 8 epochs, 36 replayed; retention = the 26 general facts the base model answered right,
recall = 12 probes): distillation from the stored top 64 kept 24, 24, 24 and 22 of 26 (seeds 0, 1, 0 again, 2;
recall 12, 12, 12, 11), from the full distribution (a second forward every step, 40-55% more CPU) 25 and 24 (seeds 0,
1); cross-entropy on the text kept 20-23 over five runs (seed 1: 23, recall 10) and moved the model more (substance
48% vs 60-71%). A KL weight of 2 kept no more there (seed 2: 22), but does in a single pass over more data
(``--replay-weight``, schedule.py). CPU time: within ~10% of cross-entropy's (noisy).

With LoRA the base model is free: the same weights with the adapter switched off. Its distribution on a replayed
answer is the same in every epoch, so it is computed once before training (one no-grad pass over the replay, ~1/8
of what a second forward every step would cost over 8 epochs) and kept compactly: the ``TOP_K`` likeliest tokens at
each position and the mass of all the rest as one more outcome. The KL between these (k + 1)-outcome distributions
is still exactly zero at the base model and needs under 0.5% of the full distribution's memory.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from .batching import IGNORE_INDEX, Collator
from .loss import base_model_logits, kept_and_rest
from .render import RenderedExample, TeacherTargets

# Tokens kept per position. On its own replay answers the bundled model put 96.5% of its mass (mean) in its top 64;
# the rest stays one outcome, so the KL still sees it move.
TOP_K = 64


def targets_from_logits(logits: torch.Tensor, k: int = TOP_K) -> TeacherTargets:
    """Targets from the base model's logits at some positions (``[positions, vocab]``)."""
    logprobs = F.log_softmax(logits.float(), dim=-1)
    top = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1, sorted=False)
    return TeacherTargets(top.indices, kept_and_rest(logprobs, top.indices))


@torch.no_grad()
def teacher_targets(
    model: Any,
    examples: Sequence[RenderedExample],
    collate: Collator,
    micro_batch: int,
    autocast: Callable[[], contextlib.AbstractContextManager],
    k: int = TOP_K,
) -> list[TeacherTargets]:
    """The targets of ``examples`` (in order) from ``model``, a LoRA model, with its adapter switched off.

    Position t predicts token t + 1, so an example's targets cover the positions before each of its assistant
    tokens, in order. Batched by length (little padding); ``autocast`` as training runs, so the targets are the
    distribution the base model has during training.
    """
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    targets: dict[int, TeacherTargets] = {}
    for start in range(0, len(order), micro_batch):
        indices = order[start : start + micro_batch]
        batch = {name: t.to(device) for name, t in collate([examples[i] for i in indices]).items()}
        where = batch["labels"][:, 1:] != IGNORE_INDEX
        with autocast():
            logits = base_model_logits(model, batch["input_ids"], batch["attention_mask"], where)
        # The selected positions come row by row, so each example's share is the next run of rows.
        for index, part in zip(indices, logits.split(where.sum(dim=1).tolist())):
            found = targets_from_logits(part, k)
            targets[index] = TeacherTargets(found.ids.cpu(), found.logprobs.cpu())
    return [targets[i] for i in range(len(examples))]


def mass_outside_top_k(targets: Sequence[TeacherTargets]) -> float:
    """Mean probability the base model put outside its kept tokens: how coarse the truncation is."""
    positions = sum(len(t.logprobs) for t in targets)
    return float(sum(t.logprobs[:, -1].exp().sum() for t in targets) / positions) if positions else 0.0
