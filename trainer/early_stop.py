"""Early stopping on validation loss, keeping the best epoch's weights.

Why: how many passes a dataset needs is a guess made before training (schedule.py); past the right number the model
only memorises its training replies, which does nothing for the user's other conversations and pulls general
answers away (measured in schedule.py). The validation split says when that starts: after each epoch its loss is
measured (a forward pass over a few conversations, seconds), the trainable weights of the best epoch so far are kept
in memory (a LoRA adapter is a few MB), training stops after ``PATIENCE`` epochs without a new best, and the best
weights are put back at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

# Epochs without a new best validation loss before training stops. 1: the validation split of a small dataset is a
# handful of conversations, but its loss rarely turns back down once it has risen (see README: Replay and retention).
PATIENCE = 1


@dataclass
class BestEpoch:
    """Tracks the validation loss after each epoch and keeps a copy of the best epoch's trainable weights."""

    parameters: list[torch.nn.Parameter]
    validation_loss: Callable[[], float]
    patience: int | None = PATIENCE  # None: never stop (the losses are still recorded)
    losses: list[float] = field(default_factory=list)  # after each epoch, in order
    best_epoch: int = 0  # 1-based; 0 until an epoch ended
    _best: list[torch.Tensor] | None = None

    @property
    def best_loss(self) -> float:
        return self.losses[self.best_epoch - 1] if self.best_epoch else float("inf")

    def epoch_end(self) -> bool:
        """Measure the epoch just finished; True when training should stop (no new best for ``patience`` epochs)."""
        loss = self.validation_loss()
        self.losses.append(loss)
        if loss < self.best_loss:
            self.best_epoch = len(self.losses)
            self._best = [p.detach().clone() for p in self.parameters]
        return self.patience is not None and len(self.losses) - self.best_epoch >= self.patience

    @torch.no_grad()
    def restore(self) -> bool:
        """Put the best epoch's weights back; True if they differ from the current ones (a later epoch was worse)."""
        if self._best is None or self.best_epoch == len(self.losses):
            return False
        for parameter, best in zip(self.parameters, self._best):
            parameter.copy_(best)
        return True
