"""Weight-space interpolation between the base model and the tuned one (WiSE-FT, Wortsman et al. 2022), chosen
after training: with LoRA the tuned model is the base plus the adapter's update, so the models in between are the
base plus ``alpha`` times that update, alpha in [0, 1] (0: the base model, 1: the tuned one). Scaling the adapter's
B matrices scales the update exactly; merging and saving then keep the chosen model.

Why: fine-tuning moves the weights along a path where most of what the user's data teaches comes early and most of
the forgetting late; part of the way back costs little of the first and gives back much of the second (WiSE-FT).
But how much to take back differs from run to run: on 60 real conversations one seed lost 3 of 26 general facts at
the whole update and another learned too little at any less (issue 17). So the run looks for forgetting and scales
back only when it sees some.

How alpha is chosen: by the knowledge check (``knowledge_check.py``), general questions the base model answered
right, disjoint from replay and from the retention check (which must stay an honest after-the-fact measure and is
never used to choose). At each candidate, from the whole update down, one forward pass counts the answers the model
still gives token for token; the rule keeps the largest alpha that loses at most ``LOSS_ALLOWED`` of the answers the
base model (alpha 0) gives, and when none does, the one that keeps the most. So a run that forgot nothing the check
sees keeps its whole update and one that did is scaled back as far as needed. An option (``--choose-adapter-scale``),
not the default: the check's losses and retention's disagreed on real dialogue (README "Replay and retention").
The validation loss at each candidate is measured too, for the report: what the scale-back cost.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

# Candidates, tried from the whole update down. Each costs one forward pass over the knowledge check's ~50 short
# items and one over the validation split: seconds on a quiet CPU.
ALPHAS = (1.0, 0.85, 0.7, 0.55, 0.4)
# Check answers the chosen alpha may lose against the base model (see the module docstring): one, for a near-tie
# in the base model's own reply. 0 would have chosen the same on every run measured (README "Replay and retention":
# 60 real conversations, seeds 0-2, and teach-a-fact), from the counts each run recorded.
LOSS_ALLOWED = 1


@dataclass(frozen=True)
class ScalePoint:
    alpha: float
    val_loss: float  # mean loss per assistant token on the user's validation conversations (0 without them)
    kept: int  # knowledge-check answers still given token for token


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
    scale: AdapterScale, alphas: Sequence[float], val_loss: Callable[[], float], kept: Callable[[], int]
) -> tuple[ScalePoint, list[ScalePoint]]:
    """The base model's point (alpha 0), and each of ``alphas``' (the model is left at the last one)."""
    points = []
    for alpha in (0.0, *alphas):
        scale.set(alpha)
        points.append(ScalePoint(alpha, val_loss(), kept()))
    return points[0], points[1:]


def choose(points: Sequence[ScalePoint], base_kept: int, allowed: int = LOSS_ALLOWED) -> ScalePoint:
    """The point the module docstring's rule picks: the largest alpha keeping ``base_kept - allowed`` check answers,
    else the one keeping the most (the larger alpha of equals)."""
    if not points:
        raise ValueError("interpolation needs at least one candidate scale")
    enough = [p for p in points if p.kept >= base_kept - allowed]
    if enough:
        return max(enough, key=lambda p: p.alpha)
    return max(points, key=lambda p: (p.kept, p.alpha))


@dataclass
class Interpolation:
    """What a run kept of its update and, when it chose, what it measured to choose."""

    alpha: float
    base: ScalePoint | None = None  # alpha 0: the base model's validation loss and check answers
    points: list[ScalePoint] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "allowed_loss": LOSS_ALLOWED,
                "base": dataclasses.asdict(self.base) if self.base else None,
                "points": [dataclasses.asdict(p) for p in self.points]}

    def describe(self) -> str:
        if self.base is None:
            return f"adapter scale: {self.alpha:g} (fixed)"
        measured = ", ".join(f"{p.alpha:g}: {p.kept} (val loss {p.val_loss:.3f})" for p in self.points)
        chosen = next(p for p in self.points if p.alpha == self.alpha)
        why = ("the largest share losing at most" if chosen.kept >= self.base.kept - LOSS_ALLOWED
               else "the most kept: every share lost more than")
        return (f"adapter scale: general answers the base model gives: {self.base.kept} (val loss "
                f"{self.base.val_loss:.3f}); still given at {measured}; kept {self.alpha:g} ({why} {LOSS_ALLOWED})")


def interpolate(
    model: Any, fixed: float | None, val_loss: Callable[[], float], kept: Callable[[], int] | None
) -> Interpolation:
    """Scale ``model``'s (a PEFT model's) update in place: to ``fixed``, else as the knowledge check ``kept``
    chooses (the rule above), or kept whole when there is no check."""
    scale = AdapterScale(model)
    if fixed is not None or kept is None:
        scale.set(1.0 if fixed is None else fixed)
        return Interpolation(scale.alpha)
    base, points = measure(scale, ALPHAS, val_loss, kept)
    scale.set(choose(points, base.kept).alpha)
    return Interpolation(scale.alpha, base, points)
