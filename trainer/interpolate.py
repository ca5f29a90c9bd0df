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
  prompts that neither training nor retention uses (``replay.drift_conversations``): how far its general answers moved.

The rule: the candidate with the least drift that still keeps ``GAIN_KEPT`` of the validation gain the whole update
has over the base model (alpha 0); the whole update when it gained nothing on validation (or there is none). Why
not a fixed bound on the drift: on real chit-chat (chatterbot-corpus, 60 conversations) the tuned model learned to
answer briefly, which the drift counts on every long general answer it would now end sooner: drift 0.29 nats per
token at alpha 1, still 0.10 at 0.4 (about linear, not the quadratic of a small move), while the general facts
kept at 0.4 were 24 of 26. A fixed bound of 0.05 would choose the smallest candidate on any such data, whatever
it gained. A share of the gain is a bound the user's own data sets, whatever the style of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .batching import Collator
from .data import Conversation
from .distill import teacher_targets
from .render import RenderedSet, render_conversations

# Candidates, tried from the whole update down. Each costs a forward pass over the validation split and the drift
# set (a few seconds on a quiet CPU).
ALPHAS = (1.0, 0.85, 0.7, 0.55, 0.4)
# Share of the whole update's validation gain (in log-perplexity) the chosen alpha keeps at least: issue 17's bar
# for the trade-off. On 60 real conversations (seed 0) 0.9 chose alpha 0.55 and kept 22 of 26 general facts; 0.8
# chose 0.4 and kept 24, with validation perplexity 15.0 instead of 13.2 (38.2 before).
GAIN_KEPT = 0.8


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
) -> tuple[float, list[ScalePoint]]:
    """The base model's validation loss (alpha 0), and validation loss and drift at each of ``alphas`` (the model is
    left at the last one)."""
    scale.set(0.0)
    base = val_loss()
    points = []
    for alpha in alphas:
        scale.set(alpha)
        points.append(ScalePoint(alpha, val_loss(), drift()))
    return base, points


def choose(points: Sequence[ScalePoint], base_val_loss: float, keep: float = GAIN_KEPT) -> ScalePoint:
    """The point the module docstring's rule picks; ``points`` must include alpha 1 (the whole update)."""
    whole = next((p for p in points if p.alpha == 1.0), None)
    if whole is None:
        raise ValueError("interpolation needs the whole update (alpha 1) among its points")
    gain = base_val_loss - whole.val_loss
    if gain <= 0:
        return whole
    kept = [p for p in points if base_val_loss - p.val_loss >= keep * gain]
    return min(kept, key=lambda p: (p.drift, -p.alpha))


@dataclass
class Interpolation:
    """What a run kept of its update and, when it chose, what it measured to choose."""

    alpha: float
    base_val_loss: float | None = None  # the validation loss at alpha 0
    points: list[ScalePoint] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "base_val_loss": self.base_val_loss,
                "points": [dataclasses.asdict(p) for p in self.points]}

    def describe(self) -> str:
        measured = ", ".join(f"{p.alpha:g}: val loss {p.val_loss:.3f} drift {p.drift:.3f}" for p in self.points)
        return (f"adapter scale: 0: val loss {self.base_val_loss:.3f}, {measured}; kept {self.alpha:g} (the least "
                f"drift on general answers that keeps {GAIN_KEPT:.0%} of the validation gain)")


def interpolate(
    model: Any, fixed: float | None, val_loss: Callable[[], float], drift: Callable[[], float] | None
) -> Interpolation:
    """Scale ``model``'s (a PEFT model's) update in place: to ``fixed``, else as chosen on ``val_loss`` and ``drift``
    (the rule above), or kept whole when there is nothing to measure the drift on."""
    scale = AdapterScale(model)
    if fixed is not None or drift is None:
        scale.set(1.0 if fixed is None else fixed)
        return Interpolation(scale.alpha)
    base, points = measure(scale, ALPHAS, val_loss, drift)
    scale.set(choose(points, base).alpha)
    return Interpolation(scale.alpha, base, points)


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
