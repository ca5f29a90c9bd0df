"""Weight-space interpolation between the base model and the tuned one (WiSE-FT, Wortsman et al. 2022), chosen
after training: with LoRA the tuned model is the base plus the adapter's update, so the models in between are the
base plus ``alpha`` times that update, alpha in [0, 1] (0: the base model, 1: the tuned one). Scaling the adapter's
B matrices scales the update exactly; merging and saving then keep the chosen model.

Why: fine-tuning moves the weights along a path where most of what the user's data teaches comes early and most of
the forgetting late; part of the way back costs little of the first and gives back much of the second (WiSE-FT).

How alpha is chosen: on two measures taken on data the run already has, never on the held-out retention check
(which must stay an honest after-the-fact measure):

- ``val_loss``: the loss on the user's validation conversations (what was gained);
- ``drift``: the KL from the base model to the scaled model, per token, on the base model's own answers to general
  prompts that neither training nor retention uses (``replay.drift_prompts``): how far its general answers moved.
  It is zero at alpha = 0 and grows about as alpha squared, while the validation gain grows about linearly, which
  is why stepping back a little keeps most of the gain for a fraction of the drift.

The rule: among the candidate alphas whose drift is at most ``DRIFT_LIMIT``, the one with the lowest validation
loss (the larger alpha on a tie); when none is within the limit, the smallest candidate.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .batching import Collator
from .data import Conversation
from .distill import teacher_targets
from .render import RenderedSet, render_conversations

# Candidates, tried from the whole update down. Each costs a forward pass over the validation split and the drift
# set (a few seconds on a CPU).
ALPHAS = (1.0, 0.85, 0.7, 0.55, 0.4)
# Nats per token of KL(base || model) on the drift set. Measured on the bundled model: see README, Replay and
# retention.
DRIFT_LIMIT = 0.05


@dataclass(frozen=True)
class ScalePoint:
    alpha: float
    val_loss: float  # mean loss per assistant token on the user's validation conversations
    drift: float  # mean KL(base || model) per token on the base model's answers to the drift prompts


class AdapterScale:
    """The LoRA update of ``model`` (a PEFT model), scalable in place. Keeps a copy of the trained B matrices."""

    def __init__(self, model: Any) -> None:
        self.parameters = [p for name, p in model.named_parameters() if "lora_B" in name]
        if not self.parameters:
            raise ValueError("interpolation needs a LoRA model: no adapter weights (lora_B) found")
        self.trained = [p.detach().clone() for p in self.parameters]
        self.alpha = 1.0

    @torch.no_grad()
    def set(self, alpha: float) -> None:
        """Make the model the base plus ``alpha`` times the trained update."""
        for parameter, trained in zip(self.parameters, self.trained):
            parameter.copy_(trained * alpha)
        self.alpha = alpha


def measure(
    scale: AdapterScale,
    alphas: Sequence[float],
    val_loss: Callable[[], float],
    drift: Callable[[], float],
) -> list[ScalePoint]:
    """Validation loss and drift at each alpha (the model is left at the last one)."""
    points = []
    for alpha in alphas:
        scale.set(alpha)
        points.append(ScalePoint(alpha, val_loss(), drift()))
    return points


def choose(points: Sequence[ScalePoint], limit: float = DRIFT_LIMIT) -> ScalePoint:
    """The point the module docstring's rule picks."""
    if not points:
        raise ValueError("no interpolation points to choose from")
    within = [p for p in points if p.drift <= limit]
    if not within:
        return min(points, key=lambda p: p.alpha)
    return min(within, key=lambda p: (p.val_loss, -p.alpha))


def distilled_set(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Conversation],
    collate: Collator,
    micro_batch: int,
    autocast: Callable[[], contextlib.AbstractContextManager],
    max_length: int,
) -> RenderedSet:
    """``conversations`` rendered with the base model's distribution on their answers (``model``, a LoRA model, with
    its adapter off), so that their loss is the KL from the base model: the drift."""
    rendered = render_conversations(tokenizer, conversations, max_length)
    targets = teacher_targets(model, rendered.examples, collate, micro_batch, autocast)
    rendered.examples = [dataclasses.replace(e, teacher=t) for e, t in zip(rendered.examples, targets)]
    return rendered
