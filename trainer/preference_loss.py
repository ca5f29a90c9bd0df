"""DPO: the sigmoid loss of Rafailov et al. (2023) on preference pairs, its batches, its reference and its metrics.

The loss is written here, in a few lines, rather than taken from TRL: TRL is not a dependency (its DPOTrainer is a
whole training loop of its own, and our loop already has progress events, checkpoints and --resume, replay and the
retention check), and its ``dpo_loss`` needs a trainer instance around it. For a pair with prompt x, chosen reply
y_w and rejected reply y_l, with log pi(y|x) summed over the reply's tokens (its end-of-turn token included):

    margin = beta * ((log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x)))
    loss   = -log sigmoid(margin)

``beta * (log pi - log ref)`` is a reply's *implicit reward*; the margin is the chosen reply's reward minus the
rejected one's. The reference is the base model, and its log-probabilities never change, so they are computed once
before training (``reference_logps``): with LoRA as the model with its adapter switched off (no second copy in
memory), for a full fine-tune before the first step changes the weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from .batching import IGNORE_INDEX, Collator, LengthGroupedBatches
from .loss import logits_at, summed_token_loss
from .pairs import RenderedPair


def reply_logps(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """log pi(reply | prompt) of each row: the summed log-probabilities of its loss-carrying tokens, fp32."""
    targets = batch["labels"][:, 1:]
    scored = targets != IGNORE_INDEX
    (logits,) = logits_at(model, batch["input_ids"], batch["attention_mask"], [scored])
    token_logps = -F.cross_entropy(logits.float(), targets[scored], reduction="none")
    rows = scored.nonzero()[:, 0]  # the positions come row by row, so each token's row is its index's first part
    return torch.zeros(len(targets), device=token_logps.device).index_add(0, rows, token_logps)


def dpo_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, reward margin) per pair, from the policy's and the reference's reply log-probabilities."""
    margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    return -F.logsigmoid(margin), margin


@dataclass
class PairCollator:
    """A micro-batch of pairs as one padded batch of 2 x pairs rows: every chosen side, then every rejected side (so
    both go through one forward), with the reference log-probabilities (``ref_chosen``, ``ref_rejected``) once known.
    """

    pad_token_id: int

    def __call__(self, pairs: Sequence[RenderedPair]) -> dict[str, torch.Tensor]:
        batch = Collator(self.pad_token_id)([p.chosen for p in pairs] + [p.rejected for p in pairs])
        if all(p.reference is not None for p in pairs):
            batch["ref_chosen"] = torch.tensor([p.reference[0] for p in pairs])  # type: ignore[index]
            batch["ref_rejected"] = torch.tensor([p.reference[1] for p in pairs])  # type: ignore[index]
        return batch


def policy_margins(model: Any, batch: dict[str, torch.Tensor], beta: float) -> tuple[torch.Tensor, ...]:
    """(loss, margin, chosen log-prob, rejected log-prob) per pair of one collated batch."""
    logps = reply_logps(model, batch)
    chosen, rejected = logps.chunk(2)
    loss, margin = dpo_loss(chosen, rejected, batch["ref_chosen"], batch["ref_rejected"], beta)
    return loss, margin, chosen, rejected


def one_batch(batch: dict[str, torch.Tensor]) -> int:
    """The loop's ``units`` for ``PreferenceLossModel``: each micro-batch's loss is already its own mean."""
    return 1


class PreferenceLossModel(torch.nn.Module):
    """The model and the preference run's loss as one module (``accelerator.prepare`` wraps the whole forward, as
    loss.py's TokenLossModel does for SFT). ``forward`` returns the batch's mean loss: DPO's per pair for a batch of
    pairs, SFT's cross-entropy per assistant token for a batch of conversations (the combined objective, see
    mixed_batches.py). Each micro-batch weighs the same in a step (the two losses have no common unit to sum over),
    but a replay micro-batch weighs ``--replay-weight``."""

    def __init__(self, model: Any, beta: float) -> None:
        super().__init__()
        self.model = model
        self.beta = beta

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        if "ref_chosen" in batch:
            return policy_margins(self.model, batch, self.beta)[0].mean()
        weight = batch.pop("loss_weight", None)  # a replay micro-batch's (mixed_batches.MixedCollator)
        summed, tokens = summed_token_loss(self.model, batch)
        return summed / max(tokens, 1) * (1.0 if weight is None else weight)


def pair_batches(
    pairs: Sequence[RenderedPair], micro_batch: int, collate: PairCollator
) -> Callable[[], Iterable[dict[str, torch.Tensor]]]:
    """A function giving ``pairs`` as collated micro-batches in a fixed, length-grouped order (evaluation)."""
    sampler = LengthGroupedBatches([len(p) for p in pairs], micro_batch, seed=0)
    return lambda: (collate([pairs[i] for i in indices]) for indices in sampler)


@torch.no_grad()
def reference_logps(
    model: Any, pairs: Sequence[RenderedPair], collate: PairCollator, micro_batch: int,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> list[RenderedPair]:
    """``pairs`` with their ``reference``: the base model's (chosen, rejected) reply log-probabilities. A PEFT
    ``model`` answers with its adapter off; a plain one must not have trained yet."""
    device = next(model.parameters()).device
    adapter_off = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    sampler = LengthGroupedBatches([len(p) for p in pairs], micro_batch, seed=0)
    found: dict[int, tuple[float, float]] = {}
    try:
        with adapter_off:
            for indices in sampler:
                batch = collate([pairs[i] for i in indices])
                with autocast():
                    chosen, rejected = reply_logps(model, {k: v.to(device) for k, v in batch.items()}).chunk(2)
                found.update(zip(indices, zip(chosen.tolist(), rejected.tolist())))
    finally:
        model.train(was_training)
    return [dataclasses.replace(p, reference=found[i]) for i, p in enumerate(pairs)]


@dataclass
class PreferenceMetrics:
    """How a model ranks held-out pairs against the reference."""

    pairs: int
    dpo_loss: float  # mean; log 2 = 0.693 where the model is the reference
    reward_accuracy: float  # share of pairs whose implicit reward margin is > 0 (0 before training: margins are 0)
    reward_margin: float  # mean implicit reward margin (beta-scaled nats)
    logp_accuracy: float  # share of pairs where the model itself gives the chosen reply the higher log-probability

    def metrics(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@torch.no_grad()
def evaluate_pairs(
    model: Any, batches: Iterable[dict[str, torch.Tensor]], beta: float,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> PreferenceMetrics:
    """Preference metrics of ``model`` over ``batches`` (collated pairs with their reference log-probabilities)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    losses, margins, wins = [], [], []
    try:
        for batch in batches:
            with autocast():
                loss, margin, chosen, rejected = policy_margins(model, {k: v.to(device) for k, v in batch.items()},
                                                                beta)
            losses.append(loss)
            margins.append(margin)
            wins.append(chosen > rejected)
    finally:
        model.train(was_training)
    if not losses:
        return PreferenceMetrics(0, 0.0, 0.0, 0.0, 0.0)
    margin = torch.cat(margins)
    return PreferenceMetrics(
        pairs=len(margin), dpo_loss=float(torch.cat(losses).mean()), reward_accuracy=float((margin > 0).float().mean()),
        reward_margin=float(margin.mean()), logp_accuracy=float(torch.cat(wins).float().mean()),
    )
